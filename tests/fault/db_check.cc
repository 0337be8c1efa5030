// Fault-test support: the key-database consistency check.
#include "tests/fault/db_check.h"

#include <lmdb.h>

#include <cstring>
#include <set>

#include "verifier/keydb.h"

namespace tokend::test {
namespace {

std::string_view view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

std::string uuidKey(const Uuid& id) {
  return std::string(reinterpret_cast<const char*>(id.bytes.data()), id.bytes.size());
}

// Calls fn(key, value) for every entry of the named database.
template <class Fn>
void forEach(MDB_txn* txn, const char* name, std::vector<std::string>& problems, Fn fn) {
  MDB_dbi dbi = 0;
  if (int rc = mdb_dbi_open(txn, name, 0, &dbi)) {
    problems.push_back(std::string("open database ") + name + ": " + mdb_strerror(rc));
    return;
  }
  MDB_cursor* c = nullptr;
  if (int rc = mdb_cursor_open(txn, dbi, &c)) {
    problems.push_back(std::string("cursor on ") + name + ": " + mdb_strerror(rc));
    return;
  }
  MDB_val k, v;
  int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
  for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) fn(view(k), view(v));
  if (rc != MDB_NOTFOUND) problems.push_back(std::string("walk ") + name + ": " + mdb_strerror(rc));
  mdb_cursor_close(c);
}

}  // namespace

DbCheck checkDatabase(const std::string& dataDir) {
  DbCheck out;
  auto& problems = out.problems;
  verifier::KeyDbOptions options;
  options.readOnly = true;
  auto db = verifier::KeyDb::open(dataDir, options);
  if (!db) {
    problems.push_back("open: " + db.error().message);
    return out;
  }
  auto reader = (*db)->reader();
  if (!reader || !(*reader)->begin()) {
    problems.push_back("begin a read transaction");
    return out;
  }
  MDB_txn* txn = (*reader)->raw();

  std::map<std::string, verifier::UserRecord> usersById;  // by raw uuid bytes
  forEach(txn, "users", problems, [&](std::string_view k, std::string_view v) {
    auto u = verifier::decodeUser(v);
    if (!u) return problems.push_back("user record: " + u.error().message);
    if (k != uuidKey(u->id))
      return problems.push_back("user " + u->username + " under another key");
    usersById[std::string(k)] = *u;
    out.users[u->username] = *u;
  });
  forEach(txn, "tokens", problems, [&](std::string_view k, std::string_view v) {
    auto t = verifier::decodeToken(v);
    if (!t) return problems.push_back("token record: " + t.error().message);
    if (k != t->id) return problems.push_back("token " + t->id + " under key " + std::string(k));
    if (!usersById.count(uuidKey(t->userId)))
      problems.push_back("token " + t->id + " of a user that does not exist");
    out.tokens[t->id] = *t;
  });

  // usernames: name -> uuid, both ways.
  std::set<std::string> seen;
  forEach(txn, "usernames", problems, [&](std::string_view k, std::string_view v) {
    auto it = usersById.find(std::string(v));
    if (it == usersById.end() || it->second.username != k)
      return problems.push_back("username index entry " + std::string(k) + " points nowhere");
    seen.insert(std::string(k));
  });
  for (const auto& [name, u] : out.users)
    if (!seen.count(name)) problems.push_back("user " + name + " missing from the username index");

  // token_names: uuid + name -> id, for API tokens, both ways.
  seen.clear();
  forEach(txn, "token_names", problems, [&](std::string_view k, std::string_view v) {
    auto it = out.tokens.find(std::string(v));
    if (k.size() < 16 || it == out.tokens.end() || uuidKey(it->second.userId) != k.substr(0, 16) ||
        it->second.name != k.substr(16) || it->second.loginType != verifier::LoginType::Token) {
      return problems.push_back("token name index entry for " + std::string(v) + " points wrong");
    }
    seen.insert(std::string(v));
  });
  // user_tokens: uuid + id -> "", both ways.
  std::set<std::string> listed;
  forEach(txn, "user_tokens", problems, [&](std::string_view k, std::string_view) {
    std::string id(k.size() == 26 ? k.substr(16) : std::string_view());
    auto it = out.tokens.find(id);
    if (it == out.tokens.end() || uuidKey(it->second.userId) != k.substr(0, 16))
      return problems.push_back("user-token index entry for " + id + " points wrong");
    listed.insert(id);
  });
  for (const auto& [id, t] : out.tokens) {
    if (t.loginType == verifier::LoginType::Token && !seen.count(id))
      problems.push_back("API token " + id + " missing from the name index");
    if (!listed.count(id)) problems.push_back("token " + id + " missing from the user-token index");
  }
  (*reader)->end();
  return out;
}

}  // namespace tokend::test
