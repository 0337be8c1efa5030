// keydb_bulk: Writer::insertNewTokens, the key database's bulk-loading path (tokenctl import).
//
// Why a path of its own: putToken() reads the user, the name index and the old record and writes
// three entries from the root of each B-tree, one token at a time. For millions of tokens with
// random ids that dirties about one page per token per database, and each dirtied page is copied
// and written at commit. Here a batch comes sorted: each database is written through one cursor
// in its own key order, so a page is dirtied once per batch however many of its keys change, and
// ids past the last one in the database go in with MDB_APPEND, which fills pages whole instead of
// splitting them in half.
#include <algorithm>
#include <cstring>
#include <tuple>

#include "verifier/keydb.h"
#include "verifier/keydb_internal.h"

namespace tokend::verifier {
using namespace keydb_internal;
namespace {

constexpr size_t kUuidSize = 16;
constexpr size_t kPrefetch = 8;  // records fetched ahead of the one being written

// Puts key -> value through `c`: with MDB_APPEND when the key sorts after `last` (the database's
// last key when the cursor was opened; keys come in increasing order), else `flags`.
int putSorted(Cursor& c, const std::string& last, std::string_view key, std::string_view value,
              unsigned flags) {
  MDB_val k = val(key), v = val(value);
  if (last.empty() || key > std::string_view(last)) flags = MDB_APPEND;
  return mdb_cursor_put(c.raw(), &k, &v, flags);
}

}  // namespace

Result<void> Writer::insertNewTokens(std::span<const NewTokenRef> tokens, size_t& failedAt) {
  failedAt = tokens.size();
  if (auto r = usable("write tokens"); !r) return r;
  if (tokens.empty()) return {};
  for (size_t i = 0; i < tokens.size(); ++i) {
    const NewTokenRef& t = tokens[i];
    if (!validTokenId(t.id)) {
      failedAt = i;
      return makeError("Failed to write token: id " + quoted(t.id) + " is not " +
                       std::to_string(kTokenIdLength) + " characters of [0-9A-Za-z]");
    }
    if (i > 0 && !(tokens[i - 1].id < t.id)) {
      failedAt = i;
      return makeError("Failed to write tokens: id " + quoted(t.id) +
                           " is not after the one before it (want strictly increasing ids)",
                       tokens[i - 1].id == t.id ? -EEXIST : -EINVAL);
    }
    if (kUuidSize + std::max<size_t>(t.name.size(), kTokenIdLength) > db_.maxKeySize_) {
      failedAt = i;
      return makeError("Failed to write token " + quoted(t.id) + ": the name is longer than " +
                       std::to_string(db_.maxKeySize_ - kUuidSize) + " bytes");
    }
  }

  // Index orders: user then id (user_tokens), user then name (token_names). The input is in id
  // order, so sorting by (user, position) gives the first. The user is loaded once per token as
  // two big-endian words: comparing through the pointers missed the cache on every comparison.
  struct UserKey {
    uint64_t hi, lo;
    uint32_t index;
  };
  std::vector<UserKey> keys(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    uint64_t hi, lo;
    std::memcpy(&hi, tokens[i].user->bytes.data(), 8);
    std::memcpy(&lo, tokens[i].user->bytes.data() + 8, 8);
    keys[i] = {__builtin_bswap64(hi), __builtin_bswap64(lo), static_cast<uint32_t>(i)};
  }
  std::sort(keys.begin(), keys.end(), [](const UserKey& a, const UserKey& b) {
    return std::tie(a.hi, a.lo, a.index) < std::tie(b.hi, b.lo, b.index);
  });
  std::vector<uint32_t> byUser(tokens.size());
  for (size_t i = 0; i < keys.size(); ++i) byUser[i] = keys[i].index;

  // Every user once.
  for (size_t j = 0; j < byUser.size(); ++j) {
    const Uuid& u = *tokens[byUser[j]].user;
    if (j > 0 && *tokens[byUser[j - 1]].user == u) continue;
    MDB_val v;
    int rc = get(db_.users_, uuidKey(u), v);
    if (rc == MDB_NOTFOUND) {
      failedAt = byUser[j];
      return makeError(
          "Failed to write token " + quoted(tokens[byUser[j]].id) + ": no user " + u.toString(),
          -ENOENT);
    }
    if (rc) return failed(rc, "read user " + u.toString());
  }

  std::string last, key;
  {
    Cursor c;
    if (int rc = c.open(txn_, db_.tokens_)) return failed(rc, "write tokens");
    if (int rc = c.lastKey(last)) return failed(rc, "write tokens");
    for (size_t i = 0; i < tokens.size(); ++i) {
      // The records lie where they were parsed, not in id order: fetch ahead of the copy.
      if (i + kPrefetch < tokens.size()) {
        const std::string_view ahead = tokens[i + kPrefetch].encoded;
        for (size_t at = 0; at < ahead.size(); at += 64) __builtin_prefetch(ahead.data() + at);
      }
      int rc = putSorted(c, last, tokens[i].id, tokens[i].encoded, MDB_NOOVERWRITE);
      if (rc == MDB_KEYEXIST) {
        failedAt = i;
        return makeError("token id " + quoted(tokens[i].id) + " already exists", -EEXIST);
      }
      if (rc) return failed(rc, "write token " + quoted(tokens[i].id));
    }
  }
  {
    Cursor c;
    if (int rc = c.open(txn_, db_.userTokens_)) return failed(rc, "write token index");
    if (int rc = c.lastKey(last)) return failed(rc, "write token index");
    for (uint32_t i : byUser) {
      key.assign(uuidKey(*tokens[i].user)).append(tokens[i].id);
      if (int rc = putSorted(c, last, key, {}, 0)) {
        return failed(rc, "write token index for " + quoted(tokens[i].id));
      }
    }
  }
  std::vector<uint32_t> named;
  named.reserve(byUser.size());
  for (uint32_t i : byUser)
    if (!tokens[i].name.empty()) named.push_back(i);
  // Stable on top of user order: names sort within each user.
  std::stable_sort(named.begin(), named.end(), [&](uint32_t a, uint32_t b) {
    int c = std::memcmp(tokens[a].user->bytes.data(), tokens[b].user->bytes.data(), kUuidSize);
    return c < 0 || (c == 0 && tokens[a].name < tokens[b].name);
  });
  {
    Cursor c;
    if (int rc = c.open(txn_, db_.tokenNames_)) return failed(rc, "write token names");
    if (int rc = c.lastKey(last)) return failed(rc, "write token names");
    for (uint32_t i : named) {
      key.assign(uuidKey(*tokens[i].user)).append(tokens[i].name);
      int rc = putSorted(c, last, key, tokens[i].id, MDB_NOOVERWRITE);
      if (rc == MDB_KEYEXIST) {
        failedAt = i;
        return makeError("A token with name " + quoted(tokens[i].name) + " already exists.",
                         -EEXIST);
      }
      if (rc) return failed(rc, "write token name " + quoted(tokens[i].name));
    }
  }
  return {};
}

}  // namespace tokend::verifier
