// Torn reads: the cache's writer rewrites slots (whole-entry inserts, in-place updates,
// invalidations) while libtokend readers verify through the segment; no answer ever mixes two
// entries. In-process (the writer is shm::Cache, the daemon's own writer, behind a minimal
// binary-protocol server), so ThreadSanitizer sees both sides: see tests/client/meson.build.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <tokend/client.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "daemon/binary_protocol.h"
#include "shm/cache.h"
#include "shm/codec.h"
#include "tests/support/process.h"
#include "verifier/catalog.h"
#include "verifier/token.h"
#include "verifier/verify.h"

using namespace tokend;

namespace {

constexpr unsigned kTokens = 24;  // in 64 slots: windows overlap, inserts evict
constexpr uint64_t kSlots = 64;
constexpr int kReaders = 4;
constexpr auto kRunFor = std::chrono::milliseconds(1500);

std::string tokenId(unsigned k) {
  std::string id = "T000000000";
  id[8] = static_cast<char>('A' + k / 26);
  id[9] = static_cast<char>('a' + k % 26);
  return id;
}

// Variant (u, s) of token k: u picks the user (changed only by a whole insert), s everything
// update() may change in place. Every field differs between variants, and the secret tells which
// variant the reader asked for, so a result mixing two entries cannot go unnoticed.
struct Variant {
  unsigned k, u, s;
  std::string secret() const {
    std::string x(verifier::kSecretLength, 'a');
    x[0] = static_cast<char>('A' + k % 26);
    x[1] = static_cast<char>('A' + u);
    x[2] = static_cast<char>('A' + s);
    return x;
  }
  std::string token() const { return tokenId(k) + "-" + secret(); }
  std::string username() const {
    return "user" + std::to_string(k) + "-" + std::to_string(u) + "-" + std::to_string(s) +
           std::string(s * 7, 'x');
  }
  Uuid userId() const {
    Uuid id;
    id.bytes.fill(static_cast<uint8_t>(k * 2 + u + 1));
    return id;
  }
  int64_t expiresAt() const { return 4000000000 + k * 4 + u * 2 + s; }
  verifier::LoginType loginType() const {
    return s ? verifier::LoginType::Oidc : verifier::LoginType::Token;
  }
};

void applySub(const Variant& v, shm::CacheEntry& e) {
  verifier::Sha256 sha;
  const verifier::Digest h = sha.digest(v.secret());
  std::memcpy(e.secretHash, h.data(), h.size());
  e.loginType = static_cast<uint8_t>(v.loginType());
  e.expiresAt = v.expiresAt();
  const std::string name = v.username();
  std::memset(e.username, 0, sizeof e.username);
  e.usernameLen = static_cast<uint8_t>(name.size());
  std::memcpy(e.username, name.data(), name.size());
  // Sub-variant 0 lacks workspace:read in its scopes: the verdict depends on the bitsets too.
  static const int bit = *verifier::catalog::findPermission("workspace:read");
  for (auto& w : e.scopes) w = ~uint64_t{0};
  if (v.s == 0) e.scopes[bit / 64] &= ~(uint64_t{1} << (bit % 64));
}

shm::CacheEntry entryOf(const Variant& v) {
  shm::CacheEntry e{};
  std::memcpy(e.tokenId, tokenId(v.k).data(), shm::kTokenIdLength);
  e.flags = shm::kFlagUserActive;
  std::memcpy(e.userId, v.userId().bytes.data(), shm::kUuidLength);
  e.lifetimeSeconds = 3600;
  e.lastUsed = 4000000000;  // "recently used": no usage reports needed
  for (auto& w : e.site) w = ~uint64_t{0};
  e.allowCount = 1;
  e.allow[0].type = shm::kAllowAnyType;
  applySub(v, e);
  return e;
}

// A minimal tokend: HELLO, SHM_ATTACH (the cache's descriptor), VERIFY (decided from the cache,
// as the daemon does; a miss is `unknown`), USAGE_REPORT, PING. One thread per connection.
class FakeDaemon {
 public:
  FakeDaemon(shm::Cache& cache, const std::string& path) : cache_(cache) {
    listen_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(listen_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listen_, 64) == 0);
    acceptor_ = std::thread([this] { acceptLoop(); });
  }
  ~FakeDaemon() {
    stop_.store(true);
    ::shutdown(listen_, SHUT_RDWR);
    acceptor_.join();
    {
      std::lock_guard lock(mu_);
      for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
    }
    for (auto& t : workers_) t.join();
    for (int fd : fds_) ::close(fd);
    ::close(listen_);
  }

 private:
  void acceptLoop() {
    while (!stop_.load()) {
      int fd = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      std::lock_guard lock(mu_);
      fds_.push_back(fd);
      workers_.emplace_back([this, fd] { serve(fd); });
    }
  }

  static bool sendAll(int fd, const std::string& out, int passFd) {
    size_t off = 0;
    while (off < out.size()) {
      iovec iov{const_cast<char*>(out.data() + off), out.size() - off};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
      if (passFd >= 0 && off == 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &passFd, sizeof(int));
      }
      ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  void serve(int fd) {
    using namespace tokend::daemon;
    verifier::Sha256 sha;
    shm::CacheEntry e;
    std::string in, out;
    char buf[65536];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return;
      in.append(buf, static_cast<size_t>(n));
      size_t used = 0;
      for (;;) {
        FrameParse p = parseFrame(std::string_view(in).substr(used));
        if (p.status != ParseStatus::Complete) break;
        used += p.consumed;
        out.clear();
        int passFd = -1;
        UniqueFd segment;
        const uint64_t id = p.frame.header.requestId;
        switch (p.frame.header.opcode) {
          case Opcode::Hello: {
            Hello h;
            h.features = kFeatureShm | kFeatureUsageReport;
            h.software = "fake/1";
            encodeHello(out, id, h);
            break;
          }
          case Opcode::ShmAttach: {
            auto fdr = cache_.openReadOnly();
            if (!fdr) return;
            segment = std::move(*fdr);
            passFd = segment.get();
            encodeShmGranted(out, id, ShmGrant{shm::kLayoutVersion, cache_.segment().size()});
            break;
          }
          case Opcode::Verify: {
            auto q = decodeVerify(p.frame.payload);
            if (!q) return;
            VerifyAnswer a;
            a.reason = verifier::Reason::Unknown;
            auto t = verifier::parseToken(q->token);
            if (!t) {
              a.reason = verifier::Reason::Malformed;
            } else if (cache_.lookup(t->id, e) == shm::LookupResult::Hit) {
              auto r =
                  shm::decideFromEntry(e, sha.digest(t->secret),
                                       verifier::parseQuery(q->permission, q->object, q->owner), 0);
              if (r) {
                a.reason = *r;
                std::memcpy(a.userId.bytes.data(), e.userId, shm::kUuidLength);
                a.username = e.name();
                a.tokenId = e.id();
                a.loginType = static_cast<verifier::LoginType>(e.loginType);
                a.expiresAt = e.expiresAt;
              }
            }
            if (!encodeVerifyResult(out, id, a)) return;
            break;
          }
          case Opcode::UsageReport:
            encodeUsageAck(out, id, 0);
            break;
          case Opcode::Ping:
            encodePong(out, id);
            break;
          default:
            encodeError(out, id, ErrorCode::UnknownOpcode, "no");
            break;
        }
        if (!sendAll(fd, out, passFd)) return;
      }
      in.erase(0, used);
    }
  }

  shm::Cache& cache_;
  int listen_ = -1;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> workers_;
};

struct Tally {
  long long total = 0, viaShm = 0, ok = 0, badSecret = 0, unknown = 0, wrong = 0;
  std::string firstWrong;
};

}  // namespace

TEST_SUITE("TornReads") {
  TEST_CASE("readers never return a result mixing two entries while the writer rewrites slots") {
    auto cache = shm::Cache::create({kSlots, verifier::catalog::version()});
    REQUIRE(cache);
    test::TempDir dir;
    const std::string path = dir / "fake.sock";
    FakeDaemon daemon(*cache, path);
    for (unsigned k = 0; k < kTokens; ++k) {
      REQUIRE(cache->insert(entryOf({k, 0, 0}), cache->epoch()) == shm::InsertResult::Inserted);
    }

    std::atomic<bool> done{false};
    // The writers: whole-entry inserts that switch the user, in-place updates that switch
    // everything else, and now and then an invalidation.
    auto writer = [&](unsigned seed) {
      std::mt19937 rng(seed);
      while (!done.load(std::memory_order_relaxed)) {
        const unsigned k = rng() % kTokens;
        const unsigned op = rng() % 16;
        const Variant v{k, static_cast<unsigned>(rng() % 2), static_cast<unsigned>(rng() % 2)};
        if (op == 0) {
          cache->invalidateToken(tokenId(k));
        } else if (op < 8) {
          (void)cache->insert(entryOf(v), cache->epoch());
        } else {
          cache->update(tokenId(k), [&](shm::CacheEntry& e) {
            Variant cur = v;
            cur.u = e.userId[0] == Variant{k, 1, 0}.userId().bytes[0] ? 1 : 0;
            applySub(cur, e);
          });
        }
      }
    };
    auto reader = [&](unsigned seed, Tally& t) {
      tokend_client* c = nullptr;
      if (tokend_open(path.c_str(), &c) != 0 || tokend_shm_state(c) != TOKEND_SHM_MAPPED) {
        t.wrong = 1;
        t.firstWrong = "could not open with the fast path";
        return;
      }
      std::mt19937 rng(seed);
      while (!done.load(std::memory_order_relaxed)) {
        const Variant v{static_cast<unsigned>(rng() % kTokens), static_cast<unsigned>(rng() % 2),
                        static_cast<unsigned>(rng() % 2)};
        const std::string tok = v.token();
        const char* perm = rng() % 2 ? "workspace:read" : nullptr;
        tokend_result r;
        if (tokend_verify(c, tok.c_str(), perm, nullptr, nullptr, &r) != 0) {
          ++t.wrong;
          t.firstWrong = std::string("error: ") + tokend_last_error(c);
          continue;
        }
        ++t.total;
        t.viaShm += r.via_shm;
        char uid[37];
        v.userId().format(uid);
        uid[36] = 0;
        const std::string reason = r.reason;
        bool good;
        if (reason == "ok") {
          // The secret matched, so every field must be this variant's, scopes included.
          good = (perm == nullptr || v.s == 1) && r.username == v.username() &&
                 uid == std::string(r.user_id) && r.expires_at == v.expiresAt() &&
                 std::string(r.login_type) == (v.s ? "oidc" : "token") &&
                 r.token_id == tokenId(v.k);
          ++t.ok;
        } else if (reason == "scope") {
          good = perm != nullptr && v.s == 0;
        } else {
          good = reason == "bad_secret" || reason == "unknown";
          if (reason == "bad_secret") ++t.badSecret;
          if (reason == "unknown") ++t.unknown;
        }
        if (!good) {
          ++t.wrong;
          if (t.firstWrong.empty()) {
            t.firstWrong = reason + " " + r.username + " " + r.user_id + " " +
                           std::to_string(r.expires_at) + " " + r.login_type + " for " +
                           v.username();
          }
        }
      }
      tokend_close(c);
    };

    std::vector<Tally> tallies(kReaders);
    std::vector<std::thread> threads;
    for (int i = 0; i < kReaders; ++i) threads.emplace_back(reader, 100 + i, std::ref(tallies[i]));
    for (unsigned i = 0; i < 2; ++i) threads.emplace_back(writer, 7 + i);
    std::this_thread::sleep_for(kRunFor);
    done.store(true);
    for (auto& t : threads) t.join();

    Tally sum;
    for (const Tally& t : tallies) {
      CHECK_MESSAGE(t.wrong == 0, t.firstWrong);
      sum.total += t.total;
      sum.viaShm += t.viaShm;
      sum.ok += t.ok;
      sum.badSecret += t.badSecret;
      sum.unknown += t.unknown;
    }
    MESSAGE(sum.total, " verifications, ", sum.viaShm, " via shm, ", sum.ok, " ok, ", sum.badSecret,
            " bad_secret, ", sum.unknown, " unknown");
    CHECK(sum.viaShm > sum.total / 2);
    CHECK(sum.ok > 0);
    CHECK(sum.badSecret > 0);
  }
}
