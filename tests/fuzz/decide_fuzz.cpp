// libFuzzer target: the verification decision on both paths. Mode 0 feeds shm::decideFromEntry
// arbitrary CacheEntry bytes (what a client reads from a segment); mode 1 builds a compiled token
// and a query from the input, and checks that the cache path (encodeEntry + decideFromEntry)
// gives the database path's verdict (verifier::decide) whenever it decides at all (SPEC 9: "the
// answer is the same either way"). The query strings also go through parseQuery.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "shm/codec.h"
#include "tests/fuzz/fuzz_support.h"
#include "verifier/lifetime.h"

using namespace tokend;
using namespace tokend::verifier;
using tokend::fuzz::require;

namespace {

// Takes bytes from the front of the input; zeros once it runs out.
class Bytes {
 public:
  Bytes(const uint8_t* d, size_t n) : d_(d), n_(n) {}
  void take(void* out, size_t k) {
    auto* o = static_cast<uint8_t*>(out);
    for (size_t i = 0; i < k; ++i) o[i] = pos_ < n_ ? d_[pos_++] : 0;
  }
  template <class T>
  T get() {
    T v{};
    take(&v, sizeof v);
    return v;
  }
  // The rest of the input, split on '\n' into up to three strings.
  void strings(std::string_view out[3]) {
    std::string_view rest(reinterpret_cast<const char*>(d_ + pos_), n_ - pos_);
    for (int i = 0; i < 3; ++i) {
      size_t nl = rest.find('\n');
      out[i] = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    }
    pos_ = n_;
  }

 private:
  const uint8_t* d_;
  size_t n_;
  size_t pos_ = 0;
};

Query makeQuery(Bytes& in, const Uuid& user, const AllowEntry* allow, size_t allowCount) {
  const uint8_t how = in.get<uint8_t>();
  if (how & 0x80) {
    std::string_view s[3];
    in.strings(s);
    return parseQuery(s[0], s[1], s[2]);
  }
  // Structured, so that the interesting cases (a granted bit, an allow-listed object, the owner)
  // are reached often.
  Query q;
  q.hasPermission = how & 1;
  q.permission = in.get<uint16_t>() % catalog::permissionCount();
  q.hasObject = how & 2;
  if (allowCount > 0 && (how & 4)) {
    const AllowEntry& a = allow[in.get<uint8_t>() % allowCount];
    q.object.type = a.type == catalog::kAnyResource ? 0 : a.type;
    q.object.id = a.id;
  } else {
    q.object.type = static_cast<uint16_t>(in.get<uint8_t>() % catalog::resourceCount());
    in.take(q.object.id.bytes.data(), 16);
  }
  q.hasOwner = how & 8;
  q.owner = user;
  if (how & 16) q.owner.bytes[15] ^= 1;
  q.bad = (how & 0x60) == 0x60;
  return q;
}

void arbitraryEntry(Bytes& in) {
  shm::CacheEntry e;
  in.take(&e, sizeof e);
  Digest presented;
  if (in.get<uint8_t>() & 1) {
    std::memcpy(presented.data(), e.secretHash, presented.size());
  } else {
    in.take(presented.data(), presented.size());
  }
  const int64_t now = in.get<int64_t>();
  Uuid user;
  std::memcpy(user.bytes.data(), e.userId, 16);
  Query q = makeQuery(in, user, nullptr, 0);
  auto r = shm::decideFromEntry(e, presented, q, now);
  // It declines only what it must: a token that looks expired, or a permission check needing an
  // allow list it does not hold.
  if (!r) {
    require(isExpired(e.expiresAt, now) ||
            ((e.flags & shm::kFlagAllowOverflow) && q.hasPermission));
    return;
  }
  if (std::memcmp(presented.data(), e.secretHash, presented.size()) != 0)
    require(*r == Reason::BadSecret);
  if (*r == Reason::Ok && q.hasPermission && !q.bad) {
    PermSet scopes = PermSet::fromWords(e.scopes);
    require(scopes.test(q.permission));
    require(PermSet::fromWords(e.site).test(q.permission) ||
            (PermSet::fromWords(e.owned).test(q.permission) && q.hasOwner &&
             std::memcmp(q.owner.bytes.data(), e.userId, 16) == 0));
  }
}

void bothPaths(Bytes& in) {
  static CompiledToken t;
  in.take(t.id.data(), t.id.size());
  t.id[0] = t.id[0] ? t.id[0] : 'A';  // a NUL first byte is the cache's empty marker
  in.take(t.secretHash.data(), t.secretHash.size());
  in.take(t.userId.bytes.data(), 16);
  t.loginType = static_cast<LoginType>(in.get<uint8_t>() % 4);
  const uint8_t bits = in.get<uint8_t>();
  t.userActive = bits & 1;
  t.expiresAt = in.get<int64_t>();
  t.lifetimeSeconds = in.get<int64_t>();
  t.lastUsed = in.get<int64_t>();
  PermSet scopes, site, owned;
  in.take(scopes.w.data(), sizeof scopes.w);
  in.take(site.w.data(), sizeof site.w);
  in.take(owned.w.data(), sizeof owned.w);
  // Only bits the catalog has, and roles within scopes, as compileGrant makes them.
  scopes &= catalog::allPermissions();
  t.grant = Grant{scopes, scopes & site, scopes & owned};
  t.usernameLength = in.get<uint8_t>() % 33;
  in.take(t.username.data(), t.usernameLength);
  t.allowCount = static_cast<uint16_t>(1 + in.get<uint8_t>() % 10);  // > kInlineAllow overflows
  for (size_t i = 0; i < t.allowCount; ++i) {
    AllowEntry& a = t.allow[i];
    const uint8_t kind = in.get<uint8_t>();
    a.type = kind % 8 == 0 ? catalog::kAnyResource
                           : static_cast<uint16_t>(in.get<uint8_t>() % catalog::resourceCount());
    a.anyId = a.type == catalog::kAnyResource || (kind & 8);
    a.id = Uuid{};
    if (!a.anyId) in.take(a.id.bytes.data(), 16);
  }
  Digest presented = t.secretHash;
  if (bits & 2) presented[in.get<uint8_t>() % 32] ^= 0x40;
  // Around the expiry, where the boundary is (expires_at == now is still valid).
  int64_t now = in.get<int64_t>();
  if ((bits & 4) && __builtin_add_overflow(t.expiresAt, static_cast<int>(now & 3) - 2, &now))
    now = t.expiresAt;
  Query q = makeQuery(in, t.userId, t.allow.data(), t.allowCount);

  shm::CacheEntry e;
  shm::encodeEntry(t, e);
  require(e.wellFormed() && e.id() == t.idView());
  const Reason db = decide(t.facts(), presented, q, now);
  auto cached = shm::decideFromEntry(e, presented, q, now);
  if (cached) require(*cached == db);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Bytes in(data + 1, size - 1);
  if (data[0] & 1) {
    bothPaths(in);
  } else {
    arbitraryEntry(in);
  }
  return 0;
}
