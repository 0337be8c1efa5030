// keydb: the LMDB key database: environment setup, indexes, map growth and the changelog.
#include "verifier/keydb.h"

#include <sched.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/scope_exit.h"
#include "verifier/keydb_internal.h"

namespace tokend::verifier {
using namespace keydb_internal;
namespace {

constexpr const char* kMetaSchema = "schema";
constexpr const char* kMetaTrimmedThrough = "trimmed_through";
constexpr const char* kMetaMaxMapSize = "max_map_size";
// Seven named databases; LMDB sizes its handle table by this, so leave a little room.
constexpr MDB_dbi kMaxDbs = 10;
// MDB_MAP_RESIZED again right after adopting the new size means another process keeps growing
// the map; give up after this many rounds rather than spin.
constexpr int kMaxResizeRounds = 16;
constexpr size_t kUuidSize = 16;
constexpr size_t kTxnKeySize = 8;

// Names the calling thread for MapUse::owner: the address of a thread_local is unique among
// live threads and costs no system call.
uintptr_t selfTag() {
  static thread_local char tag;
  return reinterpret_cast<uintptr_t>(&tag);
}

int errnoOf(int rc) {
  if (rc > 0) return rc;  // LMDB passes system errors through as positive errno values
  switch (rc) {
    case MDB_NOTFOUND:
      return ENOENT;
    case MDB_MAP_FULL:
    case MDB_PAGE_FULL:
    case MDB_TXN_FULL:
    case MDB_CURSOR_FULL:
    case MDB_DBS_FULL:
      return ENOSPC;
    case MDB_READERS_FULL:
      return EUSERS;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
      return EBADMSG;
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
      return EPROTO;
    case MDB_BAD_VALSIZE:
      return EINVAL;
    default:
      return EIO;
  }
}

Error mdbError(const std::string& what, int rc) {
  return Error{-errnoOf(rc), "Failed to " + what + ": " + mdb_strerror(rc)};
}

std::string pairKey(const Uuid& u, std::string_view tail) {
  std::string k(uuidKey(u));
  k.append(tail);
  return k;
}
Uuid uuidFrom(std::string_view bytes) {
  Uuid u;
  std::memcpy(u.bytes.data(), bytes.data(), u.bytes.size());
  return u;
}

// Changelog keys are big-endian so that LMDB's byte order is txn order.
std::string txnKey(uint64_t id) {
  std::string k(kTxnKeySize, '\0');
  for (size_t i = 0; i < kTxnKeySize; ++i) k[i] = static_cast<char>(id >> (8 * (7 - i)));
  return k;
}
uint64_t txnFromKey(std::string_view k) {
  uint64_t id = 0;
  for (unsigned char c : k) id = id << 8 | c;
  return id;
}
std::string leBytes(uint64_t v, size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}
uint64_t fromLe(std::string_view s) {
  uint64_t v = 0;
  for (size_t i = s.size(); i-- > 0;) v = v << 8 | static_cast<unsigned char>(s[i]);
  return v;
}

size_t pageRound(size_t n) {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

// Waits out a short condition (a remap, a transaction ending): spin briefly, then sleep, since
// the other side may be a thread that was descheduled mid-transaction.
void backoff(int& round) {
  if (++round < 64) {
    sched_yield();
  } else {
    timespec ts{0, 50'000};
    nanosleep(&ts, nullptr);
  }
}

Result<void> makeDirs(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) == 0) continue;
    int err = errno;
    struct stat st;
    if (err == EEXIST && ::stat(part.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
    if (err == EEXIST) err = ENOTDIR;
    return Error::fromErrno(err, "Failed to create directory " + quoted(part));
  }
  return {};
}

Result<void> notLive(const char* what) {
  return makeError(std::string("Failed to ") + what + ": no transaction is active");
}

}  // namespace

// ---- Txn: reads ---------------------------------------------------------------------------

int Txn::get(MDB_dbi dbi, std::string_view key, MDB_val& value) {
  // LMDB refuses such keys with MDB_BAD_VALSIZE; none of them can have been stored.
  if (key.empty() || key.size() > db_.maxKeySize_) return MDB_NOTFOUND;
  MDB_val k = val(key);
  return mdb_get(txn_, dbi, &k, &value);
}

Result<std::optional<std::string_view>> Txn::extMeta(std::string_view key) {
  if (key.substr(0, 4) != "ext.") return makeError("meta key " + quoted(key) + " is not ext.*");
  MDB_val v;
  int rc = get(db_.meta_, key, v);
  if (rc == MDB_NOTFOUND) return std::optional<std::string_view>();
  if (rc != 0) return mdbError("read meta " + quoted(key), rc);
  return std::optional<std::string_view>(view(v));
}

uint64_t Txn::snapshotId() {
  // A write transaction's id is the one it will commit as; it sees the one before.
  uint64_t id = mdb_txn_id(txn_);
  return write_ ? id - 1 : id;
}

Result<std::optional<std::string_view>> Txn::tokenBytes(std::string_view id) {
  using R = std::optional<std::string_view>;
  if (!live_) return notLive("read token").error();
  MDB_val v;
  int rc = get(db_.tokens_, id, v);
  if (rc == MDB_NOTFOUND) return R{};
  if (rc) return mdbError("read token " + quoted(id), rc);
  return R{view(v)};
}

Result<std::optional<TokenRecord>> Txn::token(std::string_view id) {
  using R = std::optional<TokenRecord>;
  auto bytes = tokenBytes(id);
  if (!bytes) return bytes.error();
  if (!*bytes) return R{};
  auto t = decodeToken(**bytes);
  if (!t) {
    return Error{t.error().code, "Failed to decode token " + quoted(id) + ": " + t.error().message};
  }
  return R{std::move(*t)};
}

Result<std::optional<UserRecord>> Txn::user(const Uuid& id) {
  using R = std::optional<UserRecord>;
  if (!live_) return notLive("read user").error();
  MDB_val v;
  int rc = get(db_.users_, uuidKey(id), v);
  if (rc == MDB_NOTFOUND) return R{};
  if (rc) return mdbError("read user " + id.toString(), rc);
  auto u = decodeUser(view(v));
  if (!u) {
    return Error{u.error().code,
                 "Failed to decode user " + id.toString() + ": " + u.error().message};
  }
  return R{std::move(*u)};
}

Result<std::optional<UserRecord>> Txn::userByName(std::string_view username) {
  using R = std::optional<UserRecord>;
  if (!live_) return notLive("read user").error();
  MDB_val v;
  int rc = get(db_.usernames_, username, v);
  if (rc == MDB_NOTFOUND) return R{};
  if (rc) return mdbError("read username " + quoted(username), rc);
  if (v.mv_size != kUuidSize) {
    return makeError("Failed to read username " + quoted(username) + ": index entry is " +
                         std::to_string(v.mv_size) + " bytes, not a user id",
                     -EBADMSG);
  }
  Uuid id = uuidFrom(view(v));
  auto u = user(id);
  if (!u) return u.error();
  if (!*u) {
    return makeError("Failed to read username " + quoted(username) + ": it names user " +
                         id.toString() + ", which does not exist",
                     -EBADMSG);
  }
  return u;
}

Result<std::optional<TokenRecord>> Txn::tokenByName(const Uuid& user, std::string_view name) {
  using R = std::optional<TokenRecord>;
  if (!live_) return notLive("read token").error();
  MDB_val v;
  int rc = get(db_.tokenNames_, pairKey(user, name), v);
  if (rc == MDB_NOTFOUND) return R{};
  if (rc) return mdbError("read token name " + quoted(name), rc);
  std::string id(view(v));
  auto t = token(id);
  if (!t) return t.error();
  if (!*t) {
    return makeError("Failed to read token name " + quoted(name) + ": it names token " +
                         quoted(id) + ", which does not exist",
                     -EBADMSG);
  }
  return t;
}

Result<std::vector<UserRecord>> Txn::users() {
  if (!live_) return notLive("list users").error();
  Cursor c;
  if (int rc = c.open(txn_, db_.users_)) return mdbError("list users", rc);
  std::vector<UserRecord> out;
  MDB_val k, v;
  for (int rc = c.get(k, v, MDB_FIRST); rc != MDB_NOTFOUND; rc = c.get(k, v, MDB_NEXT)) {
    if (rc) return mdbError("list users", rc);
    auto u = decodeUser(view(v));
    if (!u) return Error{u.error().code, "Failed to decode a user: " + u.error().message};
    out.push_back(std::move(*u));
  }
  return out;
}

Result<std::vector<TokenRecord>> Txn::tokens(std::optional<Uuid> user) {
  if (!live_) return notLive("list tokens").error();
  Cursor c;
  if (int rc = c.open(txn_, db_.userTokens_)) return mdbError("list tokens", rc);
  std::string prefix = user ? std::string(uuidKey(*user)) : std::string();
  std::vector<TokenRecord> out;
  MDB_val k = val(prefix), v;
  // user_tokens is ordered by user then id, which is the order promised.
  int rc = user ? c.get(k, v, MDB_SET_RANGE) : c.get(k, v, MDB_FIRST);
  for (; rc != MDB_NOTFOUND; rc = c.get(k, v, MDB_NEXT)) {
    if (rc) return mdbError("list tokens", rc);
    std::string_view key = view(k);
    if (!key.starts_with(prefix)) break;
    if (key.size() != kUuidSize + kTokenIdLength) {
      return makeError(
          "Failed to list tokens: user_tokens key of " + std::to_string(key.size()) + " bytes",
          -EBADMSG);
    }
    auto t = token(key.substr(kUuidSize));
    if (!t) return t.error();
    if (!*t) {
      return makeError("Failed to list tokens: user_tokens names token " +
                           quoted(key.substr(kUuidSize)) + ", which does not exist",
                       -EBADMSG);
    }
    out.push_back(std::move(**t));
  }
  return out;
}

namespace {

// Keys of `dbi` in (after, through]; `after` empty: from the first.
Result<std::vector<std::string>> keysAfter(MDB_txn* txn, MDB_dbi dbi, std::string_view after,
                                           std::optional<std::string_view> through,
                                           const char* what) {
  Cursor c;
  if (int rc = c.open(txn, dbi)) return mdbError(what, rc);
  std::vector<std::string> out;
  MDB_val k = val(after), v;
  int rc = after.empty() ? c.get(k, v, MDB_FIRST) : c.get(k, v, MDB_SET_RANGE);
  for (; rc != MDB_NOTFOUND; rc = c.get(k, v, MDB_NEXT)) {
    if (rc) return mdbError(what, rc);
    const std::string_view key = view(k);
    if (key == after) continue;
    if (through && key > *through) break;
    out.emplace_back(key);
  }
  return out;
}

}  // namespace

Result<std::vector<std::string>> Txn::tokenIdsAfter(std::string_view after,
                                                    std::optional<std::string_view> through) {
  if (!live_) return notLive("list token ids").error();
  return keysAfter(txn_, db_.tokens_, after, through, "list token ids");
}

Result<std::vector<Uuid>> Txn::userIdsAfter(std::optional<Uuid> after,
                                            std::optional<Uuid> through) {
  if (!live_) return notLive("list user ids").error();
  const std::string from = after ? std::string(uuidKey(*after)) : std::string();
  std::optional<std::string> to;
  if (through) to = std::string(uuidKey(*through));
  auto keys = keysAfter(txn_, db_.users_, from, to, "list user ids");
  if (!keys) return keys.error();
  std::vector<Uuid> out;
  for (const std::string& k : *keys) {
    Uuid u;
    if (k.size() != u.bytes.size()) {
      return makeError("Failed to list user ids: a key of " + std::to_string(k.size()) + " bytes",
                       -EBADMSG);
    }
    std::memcpy(u.bytes.data(), k.data(), k.size());
    out.push_back(u);
  }
  return out;
}

Result<Changes> Txn::changesSince(uint64_t since) {
  if (!live_) return notLive("read changelog").error();
  Changes out;
  out.upTo = snapshotId();

  uint64_t trimmedThrough = 0;
  MDB_val v;
  int rc = get(db_.meta_, kMetaTrimmedThrough, v);
  if (rc == 0) {
    trimmedThrough = fromLe(view(v));
  } else if (rc != MDB_NOTFOUND) {
    return mdbError("read changelog trim point", rc);
  }
  // Entries after `since` may be gone; a follower newer than the database was following another.
  if (since < trimmedThrough || since > out.upTo) {
    out.gap = true;
    return out;
  }
  if (since == UINT64_MAX) return out;

  Cursor c;
  if (int r = c.open(txn_, db_.changelog_)) return mdbError("read changelog", r);
  std::string start = txnKey(since + 1);
  MDB_val k = val(start);
  for (rc = c.get(k, v, MDB_SET_RANGE); rc != MDB_NOTFOUND; rc = c.get(k, v, MDB_NEXT)) {
    if (rc) return mdbError("read changelog", rc);
    if (k.mv_size != kTxnKeySize) {
      return makeError("Failed to read changelog: key of " + std::to_string(k.mv_size) + " bytes",
                       -EBADMSG);
    }
    uint64_t txn = txnFromKey(view(k));
    out.upTo = std::max(out.upTo, txn);
    std::string_view entry = view(v);
    while (!entry.empty()) {
      char kind = entry[0];
      size_t n = kind == 'T' ? kTokenIdLength : kind == 'U' ? kUuidSize : 0;
      if (n == 0 || entry.size() < 1 + n) {
        return makeError("Failed to read changelog entry of txn " + std::to_string(txn) +
                             ": corrupt at byte " + std::to_string(view(v).size() - entry.size()),
                         -EBADMSG);
      }
      if (kind == 'T') {
        out.tokenIds.emplace_back(entry.substr(1, n));
      } else {
        out.userIds.push_back(uuidFrom(entry.substr(1, n)));
      }
      entry.remove_prefix(1 + n);
    }
  }
  std::sort(out.tokenIds.begin(), out.tokenIds.end());
  out.tokenIds.erase(std::unique(out.tokenIds.begin(), out.tokenIds.end()), out.tokenIds.end());
  std::sort(out.userIds.begin(), out.userIds.end());
  out.userIds.erase(std::unique(out.userIds.begin(), out.userIds.end()), out.userIds.end());
  return out;
}

// ---- Reader -------------------------------------------------------------------------------

Reader::~Reader() {
  end();
  if (txn_) mdb_txn_abort(txn_);
  std::lock_guard lock(db_.mapMu_);
  std::erase(db_.mapUsers_, &use_);
}

Result<void> Reader::begin() {
  if (live_) return makeError("Failed to begin read transaction: this Reader is already active");
  for (int round = 0;; ++round) {
    db_.enterMap(use_);
    // Begun once, then renewed: a renew reuses the reader slot and allocates nothing.
    int rc = txn_ ? mdb_txn_renew(txn_) : mdb_txn_begin(db_.env_, nullptr, MDB_RDONLY, &txn_);
    if (rc == 0) {
      live_ = true;
      return {};
    }
    db_.leaveMap(use_);
    // Another process grew the map past ours; adopt its size. A failed renew leaves the txn
    // reset, so it can be renewed again.
    if (rc == MDB_MAP_RESIZED && round < kMaxResizeRounds) {
      if (auto r = db_.resizeMap(false); !r) return r;
      continue;
    }
    return mdbError("begin read transaction", rc);
  }
}

void Reader::end() {
  if (!live_) return;
  mdb_txn_reset(txn_);
  live_ = false;
  db_.leaveMap(use_);
}

uint64_t Reader::txnId() const {
  return live_ ? mdb_txn_id(txn_) : 0;
}

// ---- Writer -------------------------------------------------------------------------------

Writer::~Writer() {
  abort();
}

void Writer::abort() {
  if (txn_) mdb_txn_abort(txn_);
  txn_ = nullptr;
  live_ = false;
  done_ = true;
}

Result<void> Writer::putExtMeta(std::string_view key, std::optional<std::string_view> value) {
  if (auto r = usable("write meta"); !r) return r;
  if (key.substr(0, 4) != "ext.") return makeError("meta key " + quoted(key) + " is not ext.*");
  int rc = value ? put(db_.meta_, key, *value) : del(db_.meta_, key);
  if (rc != 0) return failed(rc, "write meta " + quoted(key));
  return {};
}

int Writer::put(MDB_dbi dbi, std::string_view key, std::string_view value) {
  MDB_val k = val(key), v = val(value);
  return mdb_put(txn_, dbi, &k, &v, 0);
}

int Writer::del(MDB_dbi dbi, std::string_view key) {
  MDB_val k = val(key);
  int rc = mdb_del(txn_, dbi, &k, nullptr);
  return rc == MDB_NOTFOUND ? 0 : rc;
}

int Writer::delIndex(MDB_dbi dbi, std::string_view key, std::string_view id) {
  MDB_val v;
  int rc = get(dbi, key, v);
  if (rc == MDB_NOTFOUND) return 0;
  if (rc) return rc;
  return view(v) == id ? del(dbi, key) : 0;
}

Error Writer::failed(int rc, const std::string& what) {
  if (rc == MDB_MAP_FULL) mapFull_ = true;
  failed_ = true;
  return mdbError(what, rc);
}

Result<void> Writer::usable(const char* what) const {
  if (!live_ || done_) {
    return makeError(std::string("Failed to ") + what + ": the write transaction has ended");
  }
  return {};
}

Result<void> Writer::putUser(const UserRecord& u) {
  if (auto r = usable("write user"); !r) return r;
  const std::string what = "write user " + u.id.toString();
  if (u.username.empty() || u.username.size() > db_.maxKeySize_) {
    return makeError("Failed to " + what + ": a username must be 1 to " +
                     std::to_string(db_.maxKeySize_) + " bytes");
  }
  if (auto r = checkEncodable(u); !r)
    return makeError("Failed to " + what + ": " + r.error().message);

  MDB_val v;
  int rc = get(db_.usernames_, u.username, v);
  if (rc == 0 && view(v) != uuidKey(u.id)) {
    return makeError("user " + quoted(u.username) + " already exists", -EEXIST);
  }
  if (rc != 0 && rc != MDB_NOTFOUND) return mdbError("read username " + quoted(u.username), rc);
  auto old = user(u.id);
  if (!old) return old.error();

  if (*old && (*old)->username != u.username) {
    if (int r = delIndex(db_.usernames_, (*old)->username, uuidKey(u.id))) {
      return failed(r, "delete username " + quoted((*old)->username));
    }
  }
  if (int r = put(db_.usernames_, u.username, uuidKey(u.id))) {
    return failed(r, "write username " + quoted(u.username));
  }
  if (int r = put(db_.users_, uuidKey(u.id), encodeUser(u))) return failed(r, what);
  touchedUsers_.push_back(u.id);
  return {};
}

Result<void> Writer::removeToken(const TokenRecord& t) {
  const std::string what = "delete token " + quoted(t.id);
  if (t.loginType == LoginType::Token) {
    if (int r = delIndex(db_.tokenNames_, pairKey(t.userId, t.name), t.id)) return failed(r, what);
  }
  if (int r = del(db_.userTokens_, pairKey(t.userId, t.id))) return failed(r, what);
  if (int r = del(db_.tokens_, t.id)) return failed(r, what);
  touchedTokens_.push_back(t.id);
  return {};
}

Result<void> Writer::deleteUser(const Uuid& id) {
  if (auto r = usable("delete user"); !r) return r;
  auto old = user(id);
  if (!old) return old.error();
  if (!*old) return makeError("Failed to delete user " + id.toString() + ": no such user", -ENOENT);
  auto owned = tokens(id);
  if (!owned) return owned.error();
  for (const TokenRecord& t : *owned) {
    if (auto r = removeToken(t); !r) return r;
  }
  const std::string what = "delete user " + id.toString();
  if (int r = delIndex(db_.usernames_, (*old)->username, uuidKey(id))) return failed(r, what);
  if (int r = del(db_.users_, uuidKey(id))) return failed(r, what);
  touchedUsers_.push_back(id);
  return {};
}

Result<void> Writer::putToken(const TokenRecord& t) {
  if (auto r = usable("write token"); !r) return r;
  if (!validTokenId(t.id)) {
    return makeError("Failed to write token: id " + quoted(t.id) + " is not " +
                     std::to_string(kTokenIdLength) + " characters of [0-9A-Za-z]");
  }
  const std::string what = "write token " + quoted(t.id);
  if (auto r = checkEncodable(t); !r)
    return makeError("Failed to " + what + ": " + r.error().message);
  const bool named = t.loginType == LoginType::Token;
  const std::string nameKey = named ? pairKey(t.userId, t.name) : std::string();
  if (named && nameKey.size() > db_.maxKeySize_) {
    return makeError("Failed to " + what + ": the name is longer than " +
                     std::to_string(db_.maxKeySize_ - kUuidSize) + " bytes");
  }

  auto owner = user(t.userId);
  if (!owner) return owner.error();
  if (!*owner) {
    return makeError("Failed to " + what + ": no user " + t.userId.toString(), -ENOENT);
  }
  if (named) {
    MDB_val v;
    int rc = get(db_.tokenNames_, nameKey, v);
    if (rc == 0 && view(v) != t.id) {
      return makeError("A token with name " + quoted(t.name) + " already exists.", -EEXIST);
    }
    if (rc != 0 && rc != MDB_NOTFOUND) return mdbError("read token name " + quoted(t.name), rc);
  }
  auto old = token(t.id);
  if (!old) return old.error();

  if (*old) {
    const TokenRecord& o = **old;
    if (o.loginType == LoginType::Token && (!named || o.userId != t.userId || o.name != t.name)) {
      if (int r = delIndex(db_.tokenNames_, pairKey(o.userId, o.name), t.id))
        return failed(r, what);
    }
    if (o.userId != t.userId) {
      if (int r = del(db_.userTokens_, pairKey(o.userId, t.id))) return failed(r, what);
    }
  }
  if (int r = put(db_.tokens_, t.id, encodeToken(t))) return failed(r, what);
  if (named) {
    if (int r = put(db_.tokenNames_, nameKey, t.id)) return failed(r, what);
  }
  if (int r = put(db_.userTokens_, pairKey(t.userId, t.id), {})) return failed(r, what);
  touchedTokens_.push_back(t.id);
  return {};
}

Result<void> Writer::deleteToken(std::string_view id) {
  if (auto r = usable("delete token"); !r) return r;
  auto old = token(id);
  if (!old) return old.error();
  if (!*old) return makeError("Failed to delete token " + quoted(id) + ": no such token", -ENOENT);
  return removeToken(**old);
}

Result<void> Writer::writeChangelog() {
  std::sort(touchedTokens_.begin(), touchedTokens_.end());
  touchedTokens_.erase(std::unique(touchedTokens_.begin(), touchedTokens_.end()),
                       touchedTokens_.end());
  std::sort(touchedUsers_.begin(), touchedUsers_.end());
  touchedUsers_.erase(std::unique(touchedUsers_.begin(), touchedUsers_.end()), touchedUsers_.end());

  std::string entry;
  entry.reserve(touchedTokens_.size() * (1 + kTokenIdLength) +
                touchedUsers_.size() * (1 + kUuidSize));
  for (const auto& id : touchedTokens_) entry.append("T").append(id);
  for (const auto& id : touchedUsers_) entry.append("U").append(uuidKey(id));
  uint64_t txn = mdb_txn_id(txn_);
  if (int r = put(db_.changelog_, txnKey(txn), entry)) return failed(r, "write changelog");

  MDB_stat st;
  if (int r = mdb_stat(txn_, db_.changelog_, &st)) return failed(r, "read changelog size");
  if (st.ms_entries <= db_.options_.changelogKeep) return {};

  // Trim the oldest entries, and remember how far, so changesSince() can tell a follower that
  // asks for older changes that it missed some.
  size_t excess = st.ms_entries - db_.options_.changelogKeep;
  uint64_t trimmed = 0;
  {
    Cursor c;
    if (int r = c.open(txn_, db_.changelog_)) return failed(r, "trim changelog");
    for (size_t i = 0; i < excess; ++i) {
      MDB_val k, v;
      if (int r = c.get(k, v, MDB_FIRST)) return failed(r, "trim changelog");
      trimmed = std::max(trimmed, txnFromKey(view(k)));
      if (int r = mdb_cursor_del(c.raw(), 0)) return failed(r, "trim changelog");
    }
  }
  MDB_val v;
  int rc = get(db_.meta_, kMetaTrimmedThrough, v);
  if (rc == 0) trimmed = std::max(trimmed, fromLe(view(v)));
  if (rc != 0 && rc != MDB_NOTFOUND) return failed(rc, "read changelog trim point");
  if (int r = put(db_.meta_, kMetaTrimmedThrough, leBytes(trimmed, 8))) {
    return failed(r, "write changelog trim point");
  }
  return {};
}

Result<void> Writer::commit() {
  if (auto r = usable("commit transaction"); !r) return r;
  if (failed_) {
    return makeError("Failed to commit transaction: a write in it failed, so it may be partial",
                     -EIO);
  }
  if (!touchedTokens_.empty() || !touchedUsers_.empty()) {
    if (auto r = writeChangelog(); !r) return r;
  }
  int rc = mdb_txn_commit(txn_);
  txn_ = nullptr;  // freed by LMDB whether or not the commit succeeded
  live_ = false;
  done_ = true;
  if (rc) return failed(rc, "commit transaction");
  return {};
}

Result<void> Writer::requireRoom(size_t bytes) {
  if (auto u = usable("check the room left"); !u) return u;
  MDB_envinfo info;
  MDB_stat st;
  mdb_env_info(db_.env_, &info);
  mdb_env_stat(db_.env_, &st);
  const size_t page = st.ms_psize;
  const size_t cap = db_.maxMapSize();
  const size_t capPages = cap / page;
  const size_t usedPages = info.me_last_pgno + 1;
  size_t freePages = capPages > usedPages ? capPages - usedPages : 0;
  // Pages on LMDB's free list (FREE_DBI, handle 0): each value is an ID list whose first word is
  // its length. Walked only when the never-used pages alone fall short.
  size_t reserve = db_.options_.reserveBytes;
  if (reserve == 0) reserve = std::min<size_t>(cap / 8, size_t{4} << 20);
  if (freePages * page < reserve + bytes) {
    // LMDB lets only read-only transactions open a cursor on the free list. A short one beside
    // this write (MDB_NOTLS) sees the same last commit; no remap can start while we write.
    MDB_txn* rtxn = nullptr;
    if (int r = mdb_txn_begin(db_.env_, nullptr, MDB_RDONLY, &rtxn))
      return mdbError("read the free list", r);
    ScopeExit end([&] { mdb_txn_abort(rtxn); });
    Cursor c;
    if (int r = c.open(rtxn, 0)) return mdbError("read the free list", r);
    MDB_val k, v;
    for (int r = c.get(k, v, MDB_FIRST); r == 0; r = c.get(k, v, MDB_NEXT)) {
      if (v.mv_size >= sizeof(size_t)) {
        size_t n = 0;
        std::memcpy(&n, v.mv_data, sizeof n);
        freePages += n;
      }
    }
  }
  if (freePages * page >= reserve + bytes) return {};
  return makeError("the key database is full: " + std::to_string(freePages * page / 1024) +
                       " KiB left of its " + std::to_string(cap >> 10) + " KiB cap" +
                       (bytes ? ", this write needs about " + std::to_string(bytes >> 10) + " KiB"
                              : std::string()) +
                       ", and the last " + std::to_string(reserve / 1024) +
                       " KiB are kept for deletes and updates (delete tokens, or raise "
                       "--max-db-size)",
                   -ENOSPC);
}

// ---- KeyDb --------------------------------------------------------------------------------

Result<std::unique_ptr<KeyDb>> KeyDb::open(const std::string& dir, const KeyDbOptions& options) {
  const std::string what = "open key database " + quoted(dir);
  if (!options.readOnly) {
    if (auto r = makeDirs(dir); !r) return r.error();
  }
  std::unique_ptr<KeyDb> db(new KeyDb());
  db->options_ = options;
  db->dir_ = dir;
  db->mapUsers_.push_back(&db->writerUse_);
  if (int rc = mdb_env_create(&db->env_)) {
    db->env_ = nullptr;
    return mdbError("create LMDB environment", rc);
  }
  MDB_env* env = db->env_;
  size_t initial = options.initialMapSize;
  if (options.maxMapSize != 0) initial = std::min(initial, options.maxMapSize);
  initial = pageRound(std::max<size_t>(initial, 1));
  if (int rc = mdb_env_set_maxdbs(env, kMaxDbs)) return mdbError(what, rc);
  if (int rc = mdb_env_set_maxreaders(env, options.maxReaders)) return mdbError(what, rc);
  if (int rc = mdb_env_set_mapsize(env, initial)) return mdbError(what, rc);
  // MDB_NOTLS: a Reader's transaction is tied to the Reader, not to the thread that began it.
  unsigned flags = MDB_NOTLS | (options.readOnly ? MDB_RDONLY : 0);
  if (int rc = mdb_env_open(env, dir.c_str(), flags, 0600)) return mdbError(what, rc);

  // Reader slots of processes that died would pin old pages and make the file grow.
  int dead = 0;
  mdb_reader_check(env, &dead);

  // LMDB takes our mapsize as given (at least the used pages); a database another process grew
  // keeps its size, so the map does not start below the file.
  MDB_envinfo info;
  mdb_env_info(env, &info);
  struct stat st;
  if (::stat((dir + "/data.mdb").c_str(), &st) == 0 &&
      static_cast<size_t>(st.st_size) > info.me_mapsize) {
    if (int rc = mdb_env_set_mapsize(env, pageRound(static_cast<size_t>(st.st_size)))) {
      return mdbError(what, rc);
    }
  }
  db->maxKeySize_ = static_cast<size_t>(mdb_env_get_maxkeysize(env));
  if (auto r = db->openDatabases(what); !r) return r.error();
  // A map above the cap (the default initial size, or a size another process grew to) shrinks to
  // it when the data fits, so that MDB_MAP_FULL, not only requireRoom(), stops at the cap.
  mdb_env_info(env, &info);
  const size_t used = (info.me_last_pgno + 1) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t cap = pageRound(db->maxMapSize());
  if (info.me_mapsize > cap && used <= cap) {
    if (int rc = mdb_env_set_mapsize(env, cap)) return mdbError(what, rc);
  }
  return db;
}

Result<void> KeyDb::openDatabases(const std::string& what) {
  struct Named {
    const char* name;
    MDB_dbi* dbi;
  };
  const Named named[] = {{"meta", &meta_},
                         {"users", &users_},
                         {"usernames", &usernames_},
                         {"tokens", &tokens_},
                         {"token_names", &tokenNames_},
                         {"user_tokens", &userTokens_},
                         {"changelog", &changelog_}};

  // Opens the databases in `txn`, then writes or checks the schema version; rc for LMDB errors.
  auto setup = [&](MDB_txn* txn, bool create, int& rc, std::string& failedWhat) -> Result<void> {
    for (const Named& n : named) {
      if ((rc = mdb_dbi_open(txn, n.name, create ? MDB_CREATE : 0, n.dbi))) {
        failedWhat = what + ": database " + quoted(n.name);
        return {};
      }
    }
    MDB_val k = val(kMetaSchema), v;
    rc = mdb_get(txn, meta_, &k, &v);
    if (rc == MDB_NOTFOUND && create) {
      std::string version = leBytes(kSchemaVersion, 4);
      MDB_val nv = val(version);
      if ((rc = mdb_put(txn, meta_, &k, &nv, 0))) failedWhat = what + ": schema version";
      return {};
    }
    if (rc) {
      failedWhat = what + ": schema version";
      return {};
    }
    if (v.mv_size != 4) {
      return makeError(
          "Failed to " + what + ": schema version entry is " + std::to_string(v.mv_size) + " bytes",
          -EBADMSG);
    }
    uint64_t schema = fromLe(view(v));
    if (schema > kSchemaVersion) {
      return makeError("Failed to " + what + ": database schema " + std::to_string(schema) +
                           " is newer than this build's " + std::to_string(kSchemaVersion),
                       -EPROTO);
    }
    if (schema == 0) return makeError("Failed to " + what + ": database schema 0", -EBADMSG);
    return {};
  };

  if (options_.readOnly) {
    MDB_txn* txn = nullptr;
    if (int rc = mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn)) return mdbError(what, rc);
    int rc = 0;
    std::string failedWhat;
    auto r = setup(txn, false, rc, failedWhat);
    if (r && !rc) {
      failedWhat = what + ": the stored cap";
      rc = options_.maxMapSize ? 0 : readCap(txn);
      if (options_.maxMapSize) maxMapSize_.store(options_.maxMapSize, std::memory_order_relaxed);
    }
    if (!r || rc) {
      mdb_txn_abort(txn);
      return r ? Result<void>(mdbError(failedWhat, rc)) : r;
    }
    // Handles opened in a read-only transaction survive only if it commits.
    if ((rc = mdb_txn_commit(txn))) return mdbError(what, rc);
    return {};
  }
  // In a write transaction, so that a tiny initial map grows like any other write.
  return update([&](Writer& w) -> Result<void> {
    int rc = 0;
    std::string failedWhat;
    if (auto r = setup(w.txn_, true, rc, failedWhat); !r) return r;
    if (rc) return w.failed(rc, failedWhat);
    // An explicit cap replaces the stored one for every process; else the stored one holds.
    if (options_.maxMapSize != 0) {
      if ((rc = readCap(w.txn_))) return w.failed(rc, what + ": the stored cap");
      if (maxMapSize() != options_.maxMapSize || !capStored_) {
        std::string cap = leBytes(options_.maxMapSize, 8);
        if ((rc = w.put(meta_, kMetaMaxMapSize, cap))) return w.failed(rc, what + ": the cap");
        maxMapSize_.store(options_.maxMapSize, std::memory_order_relaxed);
      }
    } else if ((rc = readCap(w.txn_))) {
      return w.failed(rc, what + ": the stored cap");
    }
    capReady_ = true;
    return {};
  });
}

int KeyDb::readCap(MDB_txn* txn) {
  MDB_val k = val(kMetaMaxMapSize), v;
  int rc = mdb_get(txn, meta_, &k, &v);
  capStored_ = rc == 0;
  if (rc == MDB_NOTFOUND) return 0;
  if (rc) return rc;
  if (v.mv_size != 8) return MDB_CORRUPTED;
  uint64_t cap = fromLe(view(v));
  if (cap == 0) return MDB_CORRUPTED;
  maxMapSize_.store(static_cast<size_t>(cap), std::memory_order_relaxed);
  return 0;
}

KeyDb::~KeyDb() {
  if (env_) mdb_env_close(env_);
}

Result<std::unique_ptr<Reader>> KeyDb::reader() {
  std::unique_ptr<Reader> r(new Reader(*this));
  {
    std::lock_guard lock(mapMu_);
    mapUsers_.push_back(&r->use_);
  }
  // Take the LMDB reader slot now, so a full reader table shows here and not on a request.
  if (auto b = r->begin(); !b) return b.error();
  r->end();
  return r;
}

void KeyDb::enterMap(detail::MapUse& use) {
  // relaxed: published by the seq_cst store of `active` below, which resizeMap() loads first.
  use.owner.store(selfTag(), std::memory_order_relaxed);
  // With resizeMap(): each side stores its own flag, then loads the other's (both seq_cst), so
  // at least one sees the other; a transaction never starts on a map being swapped.
  for (int round = 0;;) {
    use.active.store(true, std::memory_order_seq_cst);
    if (!remapping_.load(std::memory_order_seq_cst)) break;
    use.active.store(false, std::memory_order_release);
    while (remapping_.load(std::memory_order_acquire)) backoff(round);
  }
}

void KeyDb::leaveMap(detail::MapUse& use) {
  // release: the transaction's reads of the map happen before a remap that sees false.
  use.active.store(false, std::memory_order_release);
}

Result<void> KeyDb::resizeMap(bool grow) {
  std::lock_guard lock(mapMu_);
  remapping_.store(true, std::memory_order_seq_cst);
  ScopeExit done([&] { remapping_.store(false, std::memory_order_release); });
  const uintptr_t self = selfTag();
  for (detail::MapUse* use : mapUsers_) {
    for (int round = 0; use->active.load(std::memory_order_seq_cst);) {
      // Waiting for a transaction of this very thread would never end.
      if (use->owner.load(std::memory_order_relaxed) == self) {
        return makeError(
            "Failed to resize the map: this thread holds a live transaction (end its Readers "
            "first)",
            -EDEADLK);
      }
      backoff(round);
    }
  }
  size_t size = 0;  // 0: adopt the size in the newest meta page, which another process wrote
  if (grow) {
    MDB_envinfo info;
    mdb_env_info(env_, &info);
    size_t current = info.me_mapsize;
    const size_t cap = maxMapSize();
    if (current >= cap) {
      return makeError(
          "the key database is full: the map reached its " + std::to_string(cap >> 10) +
              " KiB cap (delete tokens, or raise --max-db-size): " + mdb_strerror(MDB_MAP_FULL),
          -ENOSPC);
    }
    size = current > cap / 2 ? cap : current * 2;
    size = pageRound(size);
  }
  if (int rc = mdb_env_set_mapsize(env_, size)) {
    return mdbError("resize the map to " + std::to_string(size) + " bytes", rc);
  }
  return {};
}

Result<void> KeyDb::update(const std::function<Result<void>(Writer&)>& fn) {
  if (options_.readOnly) {
    return makeError("Failed to begin write transaction: the key database is open read-only",
                     -EROFS);
  }
  std::lock_guard lock(writeMu_);
  for (int resized = 0;;) {
    Writer w(*this);
    enterMap(writerUse_);
    int rc = mdb_txn_begin(env_, nullptr, 0, &w.txn_);
    if (rc) {
      leaveMap(writerUse_);
      if (rc == MDB_MAP_RESIZED && ++resized <= kMaxResizeRounds) {
        if (auto r = resizeMap(false); !r) return r;
        continue;
      }
      return mdbError("begin write transaction", rc);
    }
    w.live_ = true;
    Result<void> r = [&] {
      ScopeExit release([&] {
        w.abort();  // no-op once committed
        leaveMap(writerUse_);
      });
      // The cap another process may have set since: one cap for every process.
      if (capReady_) {
        if (int c = readCap(w.txn_)) return Result<void>(mdbError("read the stored cap", c));
      }
      Result<void> result = fn(w);
      if (result && !w.mapFull_ && !w.done_) result = w.commit();
      return result;
    }();
    // The map filled somewhere in `fn` or the commit (whatever `fn` made of that error): grow
    // and run `fn` again on a fresh transaction.
    if (w.mapFull_) {
      if (auto g = resizeMap(true); !g) return g;
      continue;
    }
    // LMDB reports a short write (a full file system) as EIO. Say what it was.
    if (!r && r.error().code == -EIO) {
      struct statvfs fs {};
      if (::statvfs(dir_.c_str(), &fs) == 0 && fs.f_bavail * fs.f_frsize < (size_t{1} << 20)) {
        return makeError(r.error().message + " (the file system holding the database has " +
                             std::to_string(fs.f_bavail * fs.f_frsize / 1024) +
                             " KiB free: " + std::strerror(ENOSPC) + ")",
                         -ENOSPC);
      }
    }
    return r;
  }
}

uint64_t KeyDb::lastTxnId() const {
  // mdb_env_info reads the meta pages through the map: keep it off a map being swapped.
  std::lock_guard lock(mapMu_);
  MDB_envinfo info;
  mdb_env_info(env_, &info);
  return info.me_last_txnid;
}

size_t KeyDb::mapSize() const {
  std::lock_guard lock(mapMu_);
  MDB_envinfo info;
  mdb_env_info(env_, &info);
  return info.me_mapsize;
}

}  // namespace tokend::verifier
