// Tests for the LMDB key database: records and indexes, transactions, map growth, the changelog.
#include "verifier/keydb.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <thread>

using namespace tokend;
using namespace tokend::verifier;

namespace {

// A fresh directory per test, removed with everything in it afterwards.
struct TempDir {
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/keydb_test.XXXXXX";
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string sub(const std::string& name) const { return path + "/" + name; }
  std::string path;
};

std::unique_ptr<KeyDb> openDb(const std::string& dir, KeyDbOptions options = {}) {
  auto db = KeyDb::open(dir, options);
  if (!db) FAIL("open: " << db.error().message);
  return std::move(*db);
}

std::unique_ptr<Reader> readerOf(KeyDb& db) {
  auto r = db.reader();
  if (!r) FAIL("reader: " << r.error().message);
  return std::move(*r);
}

UserRecord makeUser(const std::string& name) {
  UserRecord u;
  u.id = Uuid::random();
  u.username = name;
  u.roles = {"member"};
  u.createdAt = u.updatedAt = 1700000000;
  return u;
}

// Ten alphanumerics, distinct per n.
std::string tokenId(int n) {
  std::string s = std::to_string(n);
  return "tok" + std::string(7 - s.size(), '0') + s;
}

TokenRecord makeToken(const std::string& id, const Uuid& user, const std::string& name,
                      LoginType kind = LoginType::Token) {
  TokenRecord t;
  t.id = id;
  t.secretHash.fill(0x5a);
  t.userId = user;
  t.loginType = kind;
  t.name = name;
  t.scopes = {"workspace:read", "template:read"};
  t.allowList = {"*:*"};
  t.createdAt = t.updatedAt = 1700000000;
  t.expiresAt = 1700604800;
  t.lifetimeSeconds = 604800;
  return t;
}

Result<void> put(KeyDb& db, const UserRecord& u) {
  return db.update([&](Writer& w) { return w.putUser(u); });
}
Result<void> put(KeyDb& db, const TokenRecord& t) {
  return db.update([&](Writer& w) { return w.putToken(t); });
}

void require(const Result<void>& r) {
  if (!r) FAIL(r.error().message);
}

// Everything a reader can see, for "nothing changed" comparisons.
std::string dump(KeyDb& db) {
  auto r = readerOf(db);
  REQUIRE(r->begin());
  std::string out;
  auto users = r->users();
  REQUIRE(users);
  for (const auto& u : *users) out += encodeUser(u) + "|";
  auto tokens = r->tokens(std::nullopt);
  REQUIRE(tokens);
  for (const auto& t : *tokens) {
    out += encodeToken(t) + "|";
    if (t.loginType == LoginType::Token) {
      auto byName = r->tokenByName(t.userId, t.name);
      REQUIRE(byName);
      REQUIRE(*byName);
      out += (*byName)->id + "|";
    }
  }
  auto changes = r->changesSince(0);
  REQUIRE(changes);
  out += std::to_string(changes->upTo) + "|" + std::to_string(changes->tokenIds.size());
  r->end();
  return out;
}

std::set<std::string> idsOf(const std::vector<TokenRecord>& ts) {
  std::set<std::string> s;
  for (const auto& t : ts) s.insert(t.id);
  return s;
}

}  // namespace

TEST_SUITE("KeyDb") {
  TEST_CASE("creates its directory 0700 and reads back users and tokens") {
    TempDir tmp;
    std::string dir = tmp.sub("a/b/data");
    auto db = openDb(dir);
    struct stat st;
    REQUIRE(::stat(dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    REQUIRE(::stat((dir + "/data.mdb").c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    UserRecord alice = makeUser("alice");
    TokenRecord t = makeToken(tokenId(1), alice.id, "ci");
    require(put(*db, alice));
    require(put(*db, t));

    auto r = readerOf(*db);
    REQUIRE(r->begin());
    auto u = r->user(alice.id);
    REQUIRE(u);
    REQUIRE(*u);
    CHECK((*u)->username == "alice");
    CHECK((*u)->roles == alice.roles);
    auto byName = r->userByName("alice");
    REQUIRE(byName);
    REQUIRE(*byName);
    CHECK((*byName)->id == alice.id);
    auto missing = r->userByName("bob");
    REQUIRE(missing);
    CHECK_FALSE(*missing);
    auto missingUser = r->user(Uuid::random());
    REQUIRE(missingUser);
    CHECK_FALSE(*missingUser);

    auto got = r->token(t.id);
    REQUIRE(got);
    REQUIRE(*got);
    CHECK(encodeToken(**got) == encodeToken(t));
    auto bytes = r->tokenBytes(t.id);
    REQUIRE(bytes);
    REQUIRE(*bytes);
    CHECK(**bytes == encodeToken(t));
    auto named = r->tokenByName(alice.id, "ci");
    REQUIRE(named);
    REQUIRE(*named);
    CHECK((*named)->id == t.id);
    for (std::string_view absent : {"tok9999999", "short", "", "far-too-long-for-an-id"}) {
      auto none = r->token(absent);
      REQUIRE(none);
      CHECK_FALSE(*none);
    }
    auto noName = r->tokenByName(alice.id, std::string(600, 'n'));
    REQUIRE(noName);
    CHECK_FALSE(*noName);
    r->end();
  }

  TEST_CASE("tokenBytes is a view into the map, not a copy") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    UserRecord u = makeUser("alice");
    require(put(*db, u));
    require(put(*db, makeToken(tokenId(1), u.id, "ci")));
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    auto bytes = r->tokenBytes(tokenId(1));
    REQUIRE(bytes);
    REQUIRE(*bytes);
    // The very pointer LMDB hands out, which points into the read-only map.
    MDB_dbi tokens;
    REQUIRE(mdb_dbi_open(r->raw(), "tokens", 0, &tokens) == 0);
    std::string id = tokenId(1);
    MDB_val k{id.size(), id.data()}, v;
    REQUIRE(mdb_get(r->raw(), tokens, &k, &v) == 0);
    CHECK(static_cast<const void*>((*bytes)->data()) == v.mv_data);
    CHECK((*bytes)->size() == v.mv_size);
    r->end();
  }

  TEST_CASE("usernames are unique, and a rename frees the old name") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    UserRecord alice = makeUser("alice");
    require(put(*db, alice));
    require(put(*db, alice));  // replacing a user with its own name is fine

    UserRecord other = makeUser("alice");
    auto dup = put(*db, other);
    REQUIRE_FALSE(dup);
    CHECK(dup.error().message == "user \"alice\" already exists");
    CHECK(dup.error().code == -EEXIST);

    alice.username = "alicia";
    require(put(*db, alice));
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    CHECK_FALSE(r->userByName("alice").value());
    CHECK(r->userByName("alicia").value()->id == alice.id);
    r->end();
    require(put(*db, other));  // the old name is free again
    REQUIRE(r->begin());
    CHECK(r->userByName("alice").value()->id == other.id);
    auto all = r->users();
    REQUIRE(all);
    CHECK(all->size() == 2);
    r->end();

    UserRecord empty = makeUser("");
    CHECK_FALSE(put(*db, empty));
  }

  TEST_CASE("token names are unique per user among API tokens only") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    UserRecord a = makeUser("a"), b = makeUser("b");
    require(put(*db, a));
    require(put(*db, b));
    TokenRecord t1 = makeToken(tokenId(1), a.id, "ci");
    require(put(*db, t1));
    require(put(*db, t1));  // re-putting the same token keeps its own name

    auto dup = put(*db, makeToken(tokenId(2), a.id, "ci"));
    REQUIRE_FALSE(dup);
    CHECK(dup.error().message == "A token with name \"ci\" already exists.");
    CHECK(dup.error().code == -EEXIST);

    require(put(*db, makeToken(tokenId(3), b.id, "ci")));  // another user may use the name
    // Sessions have no name rule.
    require(put(*db, makeToken(tokenId(4), a.id, "ci", LoginType::Password)));
    require(put(*db, makeToken(tokenId(5), a.id, "ci", LoginType::Password)));
    require(put(*db, makeToken(tokenId(6), a.id, "", LoginType::Github)));

    // Renaming t1 frees "ci" for another token of a.
    t1.name = "deploy";
    require(put(*db, t1));
    require(put(*db, makeToken(tokenId(2), a.id, "ci")));

    auto r = readerOf(*db);
    REQUIRE(r->begin());
    CHECK(r->tokenByName(a.id, "deploy").value()->id == tokenId(1));
    CHECK(r->tokenByName(a.id, "ci").value()->id == tokenId(2));
    CHECK(r->tokenByName(b.id, "ci").value()->id == tokenId(3));
    r->end();

    // Moving a token to another user moves its name and list entries too.
    t1.userId = b.id;
    require(put(*db, t1));
    REQUIRE(r->begin());
    CHECK_FALSE(r->tokenByName(a.id, "deploy").value());
    CHECK(r->tokenByName(b.id, "deploy").value()->id == tokenId(1));
    CHECK(idsOf(r->tokens(a.id).value()) ==
          std::set<std::string>{tokenId(2), tokenId(4), tokenId(5), tokenId(6)});
    CHECK(idsOf(r->tokens(b.id).value()) == std::set<std::string>{tokenId(1), tokenId(3)});
    r->end();

    // Turning an API token into a session drops its name from the index.
    TokenRecord t2 = makeToken(tokenId(2), a.id, "ci", LoginType::Oidc);
    require(put(*db, t2));
    require(put(*db, makeToken(tokenId(7), a.id, "ci")));
  }

  TEST_CASE("puts and deletes refuse what is not there or not well-formed") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    UserRecord a = makeUser("a");
    require(put(*db, a));

    auto noUser = put(*db, makeToken(tokenId(1), Uuid::random(), "x"));
    REQUIRE_FALSE(noUser);
    CHECK(noUser.error().code == -ENOENT);
    for (std::string badId : {"short", "tok000000!", "tok00000000", ""}) {
      CAPTURE(badId);
      auto bad = put(*db, makeToken(badId, a.id, "x"));
      REQUIRE_FALSE(bad);
      CHECK(bad.error().message.find("is not 10 characters of [0-9A-Za-z]") != std::string::npos);
    }
    auto noToken = db->update([](Writer& w) { return w.deleteToken("tok0000042"); });
    REQUIRE_FALSE(noToken);
    CHECK(noToken.error().message == "Failed to delete token \"tok0000042\": no such token");
    CHECK(noToken.error().code == -ENOENT);
    Uuid ghost = Uuid::random();
    auto noSuchUser = db->update([&](Writer& w) { return w.deleteUser(ghost); });
    REQUIRE_FALSE(noSuchUser);
    CHECK(noSuchUser.error().message ==
          "Failed to delete user " + ghost.toString() + ": no such user");
  }

  TEST_CASE("deleting a user deletes their tokens in the same transaction") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    UserRecord a = makeUser("a"), b = makeUser("b");
    require(put(*db, a));
    require(put(*db, b));
    require(put(*db, makeToken(tokenId(1), a.id, "one")));
    require(put(*db, makeToken(tokenId(2), a.id, "two")));
    require(put(*db, makeToken(tokenId(3), a.id, "", LoginType::Password)));
    require(put(*db, makeToken(tokenId(4), b.id, "one")));

    uint64_t before = db->lastTxnId();
    require(db->update([&](Writer& w) { return w.deleteUser(a.id); }));
    CHECK(db->lastTxnId() == before + 1);  // one transaction

    auto r = readerOf(*db);
    REQUIRE(r->begin());
    CHECK_FALSE(r->user(a.id).value());
    CHECK_FALSE(r->userByName("a").value());
    for (int i : {1, 2, 3}) CHECK_FALSE(r->token(tokenId(i)).value());
    CHECK_FALSE(r->tokenByName(a.id, "one").value());
    CHECK(r->tokens(a.id).value().empty());
    CHECK(r->tokenByName(b.id, "one").value()->id == tokenId(4));
    CHECK(idsOf(r->tokens(std::nullopt).value()) == std::set<std::string>{tokenId(4)});

    auto changes = r->changesSince(before);
    REQUIRE(changes);
    CHECK_FALSE(changes->gap);
    CHECK(changes->tokenIds == std::vector<std::string>{tokenId(1), tokenId(2), tokenId(3)});
    CHECK(changes->userIds == std::vector<Uuid>{a.id});
    r->end();

    // The name is free again, and a new user of that name starts with no tokens.
    UserRecord a2 = makeUser("a");
    require(put(*db, a2));
    REQUIRE(r->begin());
    CHECK(r->tokens(a2.id).value().empty());
    r->end();
  }

  TEST_CASE("tokens(user) and tokens(nullopt) list by user, then id") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    std::vector<UserRecord> users;
    for (int i = 0; i < 3; ++i) {
      users.push_back(makeUser("u" + std::to_string(i)));
      require(put(*db, users.back()));
    }
    // Ids written out of order, spread over the users.
    for (int n : {7, 3, 9, 1, 4, 8, 2, 6, 5}) {
      require(put(*db, makeToken(tokenId(n), users[n % 3].id, "t" + std::to_string(n))));
    }
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    for (int u = 0; u < 3; ++u) {
      auto ts = r->tokens(users[u].id);
      REQUIRE(ts);
      std::vector<std::string> ids;
      for (const auto& t : *ts) {
        CHECK(t.userId == users[u].id);
        ids.push_back(t.id);
      }
      CHECK(ids.size() == 3);
      CHECK(std::is_sorted(ids.begin(), ids.end()));
    }
    auto all = r->tokens(std::nullopt);
    REQUIRE(all);
    REQUIRE(all->size() == 9);
    for (size_t i = 1; i < all->size(); ++i) {
      const auto& p = (*all)[i - 1];
      const auto& q = (*all)[i];
      CHECK((p.userId < q.userId || (p.userId == q.userId && p.id < q.id)));
    }
    CHECK(r->tokens(Uuid::random()).value().empty());
    r->end();
  }

  TEST_CASE("a failing fn leaves the database exactly as before") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    UserRecord a = makeUser("a");
    require(put(*db, a));
    require(put(*db, makeToken(tokenId(1), a.id, "one")));
    require(put(*db, makeToken(tokenId(2), a.id, "two")));
    std::string before = dump(*db);
    uint64_t txn = db->lastTxnId();

    auto r = db->update([&](Writer& w) -> Result<void> {
      if (auto x = w.putUser(makeUser("b")); !x) return x;
      if (auto x = w.putToken(makeToken(tokenId(3), a.id, "three")); !x) return x;
      if (auto x = w.deleteToken(tokenId(1)); !x) return x;
      if (auto x = w.deleteUser(a.id); !x) return x;
      return makeError("changed my mind");
    });
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "changed my mind");
    CHECK(dump(*db) == before);
    CHECK(db->lastTxnId() == txn);

    // A refused put inside a transaction with other writes: the refusal propagates, nothing lands.
    auto dup = db->update([&](Writer& w) -> Result<void> {
      if (auto x = w.putToken(makeToken(tokenId(4), a.id, "four")); !x) return x;
      return w.putToken(makeToken(tokenId(5), a.id, "one"));
    });
    REQUIRE_FALSE(dup);
    CHECK(dup.error().message == "A token with name \"one\" already exists.");
    CHECK(dump(*db) == before);
    CHECK(db->lastTxnId() == txn);
  }

  TEST_CASE("the map grows on MDB_MAP_FULL and every write is kept") {
    TempDir tmp;
    KeyDbOptions opts;
    opts.initialMapSize = 64 << 10;
    size_t initial = 0;
    const int kTokens = 3000;
    UserRecord u = makeUser("grower");
    {
      auto db = openDb(tmp.path, opts);
      initial = db->mapSize();
      CHECK(initial <= size_t{64 << 10} + 4096);
      require(put(*db, u));
      // One transaction far larger than the initial map: it grows several times and reruns.
      int runs = 0;
      require(db->update([&](Writer& w) -> Result<void> {
        ++runs;
        for (int i = 0; i < 500; ++i) {
          if (auto r = w.putToken(makeToken(tokenId(i), u.id, "n" + std::to_string(i))); !r) {
            return r;
          }
        }
        return {};
      }));
      CHECK(runs > 1);
      // Then many small ones.
      for (int i = 500; i < kTokens; i += 100) {
        require(db->update([&](Writer& w) -> Result<void> {
          for (int j = i; j < i + 100; ++j) {
            if (auto r = w.putToken(makeToken(tokenId(j), u.id, "n" + std::to_string(j))); !r) {
              return r;
            }
          }
          return {};
        }));
      }
      CHECK(db->mapSize() >= 8 * initial);  // at least three doublings
    }
    // Reopened with the same tiny option: the map starts at least at the file's size.
    auto db = openDb(tmp.path, opts);
    struct stat st;
    REQUIRE(::stat((tmp.path + "/data.mdb").c_str(), &st) == 0);
    CHECK(db->mapSize() >= static_cast<size_t>(st.st_size));
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    auto all = r->tokens(u.id);
    REQUIRE(all);
    CHECK(all->size() == kTokens);
    for (int i = 0; i < kTokens; i += 97) {
      auto t = r->tokenByName(u.id, "n" + std::to_string(i));
      REQUIRE(t);
      REQUIRE(*t);
      CHECK((*t)->id == tokenId(i));
    }
    r->end();
  }

  TEST_CASE("growth stops at maxMapSize with an error and nothing written") {
    TempDir tmp;
    KeyDbOptions opts;
    opts.initialMapSize = 64 << 10;
    opts.maxMapSize = 128 << 10;
    auto db = openDb(tmp.path, opts);
    UserRecord u = makeUser("u");
    require(put(*db, u));
    uint64_t txn = db->lastTxnId();
    auto r = db->update([&](Writer& w) -> Result<void> {
      for (int i = 0; i < 2000; ++i) {
        if (auto x = w.putToken(makeToken(tokenId(i), u.id, "n" + std::to_string(i))); !x) return x;
      }
      return {};
    });
    REQUIRE_FALSE(r);
    CHECK(r.error().code == -ENOSPC);
    CHECK(r.error().message.find("the key database is full") != std::string::npos);
    CHECK(db->lastTxnId() == txn);
  }

  TEST_CASE("the cap is stored: an open without one adopts it, an explicit one replaces it") {
    TempDir tmp;
    {
      auto db = openDb(tmp.path);
      CHECK(db->maxMapSize() == kDefaultMaxMapSize);
    }
    KeyDbOptions capped;
    capped.maxMapSize = 512 << 10;
    {
      auto db = openDb(tmp.path, capped);
      CHECK(db->maxMapSize() == 512 << 10);
      CHECK(db->mapSize() <= 512 << 10);
    }
    {
      auto db = openDb(tmp.path);  // no cap given: the stored one, and the map within it
      CHECK(db->maxMapSize() == 512 << 10);
      CHECK(db->mapSize() <= 512 << 10);
    }
    KeyDbOptions ro;
    ro.readOnly = true;
    {
      auto db = openDb(tmp.path, ro);
      CHECK(db->maxMapSize() == 512 << 10);
    }
    KeyDbOptions raised;
    raised.maxMapSize = 2 << 20;
    { auto db = openDb(tmp.path, raised); }
    auto db = openDb(tmp.path);
    CHECK(db->maxMapSize() == 2 << 20);
  }

  TEST_CASE("a Reader sees another process's commit after renew, also when the map grew") {
    TempDir tmp;
    KeyDbOptions opts;
    opts.initialMapSize = 64 << 10;
    auto db = openDb(tmp.path, opts);
    UserRecord u = makeUser("parent");
    require(put(*db, u));
    size_t mapBefore = db->mapSize();
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    uint64_t seen = r->txnId();

    // LMDB forbids opening one environment twice in a process (closing one drops the other's
    // locks), so the second handle lives in a child process.
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int status = 0;
      {
        auto child = KeyDb::open(tmp.path, opts);
        if (!child) _exit(10);
        for (int i = 0; i < 2000 && status == 0; i += 200) {
          auto w = (*child)->update([&](Writer& w) -> Result<void> {
            for (int j = i; j < i + 200; ++j) {
              if (auto x = w.putToken(makeToken(tokenId(j), u.id, "c" + std::to_string(j))); !x) {
                return x;
              }
            }
            return {};
          });
          if (!w) status = 11;
        }
        if (status == 0 && (*child)->mapSize() <= mapBefore) status = 12;
      }
      _exit(status);  // no doctest teardown, no destructors of the parent's handles
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);

    // The open snapshot does not change under the reader.
    CHECK_FALSE(r->token(tokenId(0)).value());
    CHECK(r->txnId() == seen);
    r->end();
    CHECK(db->lastTxnId() > seen);

    // Renewed: the child's data lies beyond our map (MDB_MAP_RESIZED), which begin() adopts.
    REQUIRE(r->begin());
    CHECK(r->txnId() == db->lastTxnId());
    CHECK(r->tokens(u.id).value().size() == 2000);
    CHECK(r->tokenByName(u.id, "c1999").value()->id == tokenId(1999));
    auto changes = r->changesSince(seen);
    REQUIRE(changes);
    CHECK(changes->tokenIds.size() == 2000);
    r->end();
    CHECK(db->mapSize() > mapBefore);

    // And this process can write on top of the grown map.
    require(put(*db, makeToken(tokenId(5000), u.id, "parent")));
    REQUIRE(r->begin());
    CHECK(r->tokenByName(u.id, "parent").value()->id == tokenId(5000));
    r->end();
  }

  TEST_CASE("changesSince reports exactly the ids each transaction touched") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    uint64_t t0 = db->lastTxnId();
    UserRecord u = makeUser("u");
    require(put(*db, u));
    uint64_t t1 = db->lastTxnId();
    require(db->update([&](Writer& w) -> Result<void> {
      if (auto x = w.putToken(makeToken(tokenId(1), u.id, "a")); !x) return x;
      if (auto x = w.putToken(makeToken(tokenId(2), u.id, "b")); !x) return x;
      return w.putToken(makeToken(tokenId(1), u.id, "a2"));  // touched twice, listed once
    }));
    uint64_t t2 = db->lastTxnId();
    require(db->update([&](Writer& w) { return w.deleteToken(tokenId(2)); }));
    uint64_t t3 = db->lastTxnId();
    CHECK(t1 == t0 + 1);
    CHECK(t2 == t1 + 1);
    CHECK(t3 == t2 + 1);
    // A transaction that writes nothing commits no txn id and no entry.
    require(db->update([](Writer&) -> Result<void> { return {}; }));
    CHECK(db->lastTxnId() == t3);

    auto r = readerOf(*db);
    REQUIRE(r->begin());
    auto all = r->changesSince(t0);
    REQUIRE(all);
    CHECK_FALSE(all->gap);
    CHECK(all->upTo == t3);
    CHECK(all->tokenIds == std::vector<std::string>{tokenId(1), tokenId(2)});
    CHECK(all->userIds == std::vector<Uuid>{u.id});

    auto after1 = r->changesSince(t1);
    REQUIRE(after1);
    CHECK(after1->tokenIds == std::vector<std::string>{tokenId(1), tokenId(2)});
    CHECK(after1->userIds.empty());

    auto after2 = r->changesSince(t2);
    REQUIRE(after2);
    CHECK(after2->tokenIds == std::vector<std::string>{tokenId(2)});
    CHECK(after2->upTo == t3);

    auto none = r->changesSince(t3);
    REQUIRE(none);
    CHECK_FALSE(none->gap);
    CHECK(none->tokenIds.empty());
    CHECK(none->userIds.empty());
    CHECK(none->upTo == t3);

    // A follower ahead of the database was following another one.
    auto ahead = r->changesSince(t3 + 10);
    REQUIRE(ahead);
    CHECK(ahead->gap);
    r->end();

    // Inside a write transaction, changes are those committed before it.
    require(db->update([&](Writer& w) -> Result<void> {
      if (auto x = w.putToken(makeToken(tokenId(3), u.id, "c")); !x) return x;
      auto c = w.changesSince(t2);
      if (!c) return c.error();
      CHECK(c->upTo == t3);
      CHECK(c->tokenIds == std::vector<std::string>{tokenId(2)});
      return {};
    }));
  }

  TEST_CASE("a trimmed changelog reports a gap") {
    TempDir tmp;
    KeyDbOptions opts;
    opts.changelogKeep = 3;
    auto db = openDb(tmp.path, opts);
    UserRecord u = makeUser("u");
    require(put(*db, u));
    uint64_t t0 = db->lastTxnId();
    for (int i = 1; i <= 5; ++i) {
      require(put(*db, makeToken(tokenId(i), u.id, "n" + std::to_string(i))));
    }
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    // Kept: t0+3, t0+4, t0+5; trimmed through t0+2.
    for (uint64_t since : {uint64_t{0}, t0, t0 + 1}) {
      CAPTURE(since);
      auto c = r->changesSince(since);
      REQUIRE(c);
      CHECK(c->gap);
      CHECK(c->upTo == t0 + 5);
    }
    auto c = r->changesSince(t0 + 2);
    REQUIRE(c);
    CHECK_FALSE(c->gap);
    CHECK(c->tokenIds == std::vector<std::string>{tokenId(3), tokenId(4), tokenId(5)});
    r->end();

    MDB_stat st;
    MDB_dbi log;
    MDB_txn* txn = nullptr;
    REQUIRE(mdb_txn_begin(db->env(), nullptr, MDB_RDONLY, &txn) == 0);
    REQUIRE(mdb_dbi_open(txn, "changelog", 0, &log) == 0);
    REQUIRE(mdb_stat(txn, log, &st) == 0);
    CHECK(st.ms_entries == 3);
    mdb_txn_abort(txn);
  }

  TEST_CASE("a database of a newer schema is refused") {
    TempDir tmp;
    { openDb(tmp.path); }
    {
      // Write schema kSchemaVersion + 1 with raw LMDB calls, as a newer build would.
      MDB_env* env = nullptr;
      REQUIRE(mdb_env_create(&env) == 0);
      REQUIRE(mdb_env_set_maxdbs(env, 10) == 0);
      REQUIRE(mdb_env_open(env, tmp.path.c_str(), 0, 0600) == 0);
      MDB_txn* txn = nullptr;
      REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
      MDB_dbi meta;
      REQUIRE(mdb_dbi_open(txn, "meta", 0, &meta) == 0);
      uint32_t v = kSchemaVersion + 1;
      uint8_t le[4] = {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
      MDB_val k{6, const_cast<char*>("schema")}, d{4, le};
      REQUIRE(mdb_put(txn, meta, &k, &d, 0) == 0);
      REQUIRE(mdb_txn_commit(txn) == 0);
      mdb_env_close(env);
    }
    std::string want = "database schema " + std::to_string(kSchemaVersion + 1) +
                       " is newer than this build's " + std::to_string(kSchemaVersion);
    auto db = KeyDb::open(tmp.path);
    REQUIRE_FALSE(db);
    CHECK(db.error().message.find(want) != std::string::npos);
    CHECK(db.error().message.rfind("Failed to open key database", 0) == 0);
    KeyDbOptions ro;
    ro.readOnly = true;
    auto rdb = KeyDb::open(tmp.path, ro);
    REQUIRE_FALSE(rdb);
    CHECK(rdb.error().message.find(want) != std::string::npos);
  }

  TEST_CASE("readOnly opens without creating and refuses writes") {
    TempDir tmp;
    KeyDbOptions ro;
    ro.readOnly = true;
    auto missing = KeyDb::open(tmp.sub("none"), ro);
    REQUIRE_FALSE(missing);
    CHECK_FALSE(std::filesystem::exists(tmp.sub("none")));

    UserRecord u = makeUser("u");
    {
      auto db = openDb(tmp.path);
      require(put(*db, u));
    }
    auto db = openDb(tmp.path, ro);
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    CHECK(r->userByName("u").value()->id == u.id);
    r->end();
    auto w = put(*db, makeUser("v"));
    REQUIRE_FALSE(w);
    CHECK(w.error().code == -EROFS);
  }

  TEST_CASE("a Reader survives many reset and renew cycles and follows new commits") {
    TempDir tmp;
    KeyDbOptions opts;
    opts.maxReaders = 8;
    auto db = openDb(tmp.path, opts);
    UserRecord u = makeUser("u");
    require(put(*db, u));
    auto r = readerOf(*db);

    auto notBegun = r->token(tokenId(1));
    REQUIRE_FALSE(notBegun);
    CHECK(notBegun.error().message == "Failed to read token: no transaction is active");
    CHECK(r->txnId() == 0);

    uint64_t last = 0;
    TokenRecord t = makeToken(tokenId(1), u.id, "n");
    for (int i = 0; i < 2000; ++i) {
      if (i % 100 == 0) {
        t.lastUsed = i / 100;
        require(put(*db, t));
      }
      REQUIRE(r->begin());
      CHECK_FALSE(r->begin());  // already active
      CHECK(r->txnId() >= last);
      last = r->txnId();
      auto got = r->tokenByName(u.id, "n");
      REQUIRE(got);
      REQUIRE(*got);
      CHECK((*got)->lastUsed == i / 100);
      r->end();
      r->end();  // ending twice is harmless
    }
    // More Readers than maxReaders cycle fine as long as they do not all exist at once: a Reader
    // keeps one slot for its lifetime and reuses it.
    for (int i = 0; i < 50; ++i) {
      auto extra = readerOf(*db);
      REQUIRE(extra->begin());
      extra->end();
    }
    // A reset Reader may move to another thread.
    bool ok = false;
    std::thread([&] {
      if (!r->begin()) return;
      auto got = r->tokenByName(u.id, "n");
      ok = got && *got;
      r->end();
    }).join();
    CHECK(ok);
  }

  TEST_CASE("readers on other threads keep working while the map is grown under them") {
    TempDir tmp;
    KeyDbOptions opts;
    opts.initialMapSize = 64 << 10;
    auto db = openDb(tmp.path, opts);
    UserRecord u = makeUser("u");
    require(put(*db, u));
    size_t before = db->mapSize();

    std::atomic<bool> stop{false};
    std::atomic<int> failures{0}, reads{0};
    std::vector<std::thread> threads;
    for (int k = 0; k < 3; ++k) {
      threads.emplace_back([&] {
        auto r = db->reader();
        if (!r) {
          ++failures;
          return;
        }
        while (!stop.load()) {
          if (!(*r)->begin()) {
            ++failures;
            continue;
          }
          auto all = (*r)->tokens(u.id);
          // Within one snapshot the list and the name index agree.
          if (!all) ++failures;
          for (size_t i = 0; all && i < all->size(); i += 50) {
            auto t = (*r)->tokenByName(u.id, (*all)[i].name);
            if (!t || !*t || (*t)->id != (*all)[i].id) ++failures;
          }
          (*r)->end();
          ++reads;
        }
      });
    }
    for (int i = 0; i < 2000; i += 50) {
      require(db->update([&](Writer& w) -> Result<void> {
        for (int j = i; j < i + 50; ++j) {
          if (auto x = w.putToken(makeToken(tokenId(j), u.id, "n" + std::to_string(j))); !x)
            return x;
        }
        return {};
      }));
    }
    stop = true;
    for (auto& t : threads) t.join();
    CHECK(failures.load() == 0);
    CHECK(reads.load() > 0);
    CHECK(db->mapSize() > before);
  }

  TEST_CASE("growing the map while this thread holds a live Reader fails instead of hanging") {
    TempDir tmp;
    KeyDbOptions opts;
    opts.initialMapSize = 64 << 10;
    auto db = openDb(tmp.path, opts);
    UserRecord u = makeUser("u");
    require(put(*db, u));
    uint64_t txn = db->lastTxnId();
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    auto w = db->update([&](Writer& w) -> Result<void> {
      for (int i = 0; i < 1000; ++i) {
        if (auto x = w.putToken(makeToken(tokenId(i), u.id, "n" + std::to_string(i))); !x) return x;
      }
      return {};
    });
    REQUIRE_FALSE(w);
    CHECK(w.error().code == -EDEADLK);
    r->end();
    CHECK(db->lastTxnId() == txn);
  }

  TEST_CASE("ext meta values commit or abort with the records beside them, and only ext.* keys") {
    TempDir tmp;
    auto db = openDb(tmp.path);
    UserRecord u = makeUser("alice");
    require(db->update([&](Writer& w) -> Result<void> {
      if (auto p = w.putUser(u); !p) return p;
      return w.putExtMeta("ext.pg.snapshot", std::string_view("10:12:11"));
    }));
    // A failed transaction leaves neither its records nor its meta value.
    auto failed = db->update([&](Writer& w) -> Result<void> {
      if (auto p = w.putExtMeta("ext.pg.snapshot", std::string_view("20:20:")); !p) return p;
      if (auto p = w.putUser(makeUser("bob")); !p) return p;
      return makeError("refused");
    });
    CHECK_FALSE(failed);
    auto r = readerOf(*db);
    REQUIRE(r->begin());
    auto v = r->extMeta("ext.pg.snapshot");
    REQUIRE(v);
    REQUIRE(*v);
    CHECK(**v == "10:12:11");
    CHECK(r->userByName("bob")->has_value() == false);
    CHECK_FALSE(r->extMeta("schema"));  // the database's own keys are not reachable
    auto absent = r->extMeta("ext.none");
    REQUIRE(absent);
    CHECK_FALSE(*absent);
    r->end();
    auto refused = db->update([&](Writer& w) { return w.putExtMeta("schema", std::nullopt); });
    CHECK_FALSE(refused);
    require(db->update([&](Writer& w) { return w.putExtMeta("ext.pg.snapshot", std::nullopt); }));
    REQUIRE(r->begin());
    CHECK_FALSE(r->extMeta("ext.pg.snapshot")->has_value());
    r->end();
  }
}
