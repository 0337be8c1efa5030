// Tests for Writer::insertNewTokens, the key database's bulk-loading path (tokenctl import).
#include <doctest/doctest.h>

#include "tests/support/process.h"
#include "verifier/keydb.h"

using namespace tokend;
using namespace tokend::verifier;
using tokend::test::TempDir;

namespace {

UserRecord makeUser(const std::string& name) {
  UserRecord u;
  u.id = Uuid::random();
  u.username = name;
  u.createdAt = u.updatedAt = 1700000000;
  return u;
}

// Records and the refs pointing into them; the refs stay valid while the Batch lives.
struct Batch {
  std::vector<TokenRecord> records;
  std::vector<std::string> encoded;
  std::vector<NewTokenRef> refs;

  void add(const std::string& id, const UserRecord& user, const std::string& name,
           LoginType kind = LoginType::Token) {
    TokenRecord t;
    t.id = id;
    t.secretHash.fill(static_cast<uint8_t>(id.back()));
    t.userId = user.id;
    t.loginType = kind;
    t.name = name;
    t.scopes = {"workspace:read"};
    t.allowList = {"*:*"};
    t.createdAt = t.updatedAt = 1700000000;
    t.expiresAt = 1800000000;
    t.lifetimeSeconds = 100000000;
    records.push_back(t);
  }
  std::span<const NewTokenRef> sorted(const std::vector<UserRecord>& users) {
    std::sort(records.begin(), records.end(),
              [](const TokenRecord& a, const TokenRecord& b) { return a.id < b.id; });
    encoded.clear();
    refs.clear();
    for (const TokenRecord& t : records) encoded.push_back(encodeToken(t));
    for (size_t i = 0; i < records.size(); ++i) {
      const Uuid* user = nullptr;
      for (const UserRecord& u : users)
        if (u.id == records[i].userId) user = &u.id;
      refs.push_back({records[i].id, encoded[i], user,
                      records[i].loginType == LoginType::Token ? std::string_view(records[i].name)
                                                               : std::string_view()});
    }
    return refs;
  }
};

std::unique_ptr<KeyDb> openDb(const std::string& dir) {
  auto db = KeyDb::open(dir);
  if (!db) FAIL("open: " << db.error().message);
  return std::move(*db);
}

std::unique_ptr<Reader> readerOf(KeyDb& db) {
  auto r = db.reader();
  if (!r) FAIL("reader: " << r.error().message);
  return std::move(*r);
}

Result<void> insert(KeyDb& db, std::span<const NewTokenRef> refs, size_t& failedAt) {
  return db.update([&](Writer& w) { return w.insertNewTokens(refs, failedAt); });
}

}  // namespace

TEST_SUITE("KeyDbBulk") {
  TEST_CASE("tokens inserted in bulk read back with their indexes, before and after existing ids") {
    TempDir dir;
    auto db = openDb(dir.path());
    std::vector<UserRecord> users = {makeUser("ann"), makeUser("ben")};
    REQUIRE(db->update([&](Writer& w) -> Result<void> {
      for (const auto& u : users)
        if (auto r = w.putUser(u); !r) return r;
      return {};
    }));
    size_t failedAt = 0;
    Batch first;
    first.add("bbbbbbbbb2", users[0], "two");
    first.add("ddddddddd4", users[1], "four");
    REQUIRE(insert(*db, first.sorted(users), failedAt));
    // Ids before, between and after the stored ones: the cursor writes and the appends mix.
    Batch second;
    second.add("aaaaaaaaa1", users[1], "one");
    second.add("ccccccccc3", users[0], "three");
    second.add("eeeeeeeee5", users[0], "", LoginType::Password);
    second.add("fffffffff6", users[1], "six");
    REQUIRE(insert(*db, second.sorted(users), failedAt));

    auto reader = readerOf(*db);
    REQUIRE(reader->begin());
    for (const char* id :
         {"aaaaaaaaa1", "bbbbbbbbb2", "ccccccccc3", "ddddddddd4", "eeeeeeeee5", "fffffffff6"}) {
      auto t = reader->token(id);
      REQUIRE(t);
      REQUIRE(t->has_value());
      CHECK((*t)->id == id);
    }
    auto annTokens = reader->tokens(users[0].id);
    REQUIRE(annTokens);
    CHECK(annTokens->size() == 3);
    auto byName = reader->tokenByName(users[1].id, "six");
    REQUIRE(byName);
    REQUIRE(byName->has_value());
    CHECK((*byName)->id == "fffffffff6");
    auto session = reader->tokenByName(users[0].id, "");
    REQUIRE(session);
    CHECK(!session->has_value());
    reader->end();
  }

  TEST_CASE("a taken id, a taken name or a missing user refuses the call and names the token") {
    TempDir dir;
    auto db = openDb(dir.path());
    std::vector<UserRecord> users = {makeUser("cat")};
    REQUIRE(db->update([&](Writer& w) { return w.putUser(users[0]); }));
    size_t failedAt = 0;
    Batch first;
    first.add("mmmmmmmmm1", users[0], "taken");
    REQUIRE(insert(*db, first.sorted(users), failedAt));

    Batch sameId;
    sameId.add("aaaaaaaaa0", users[0], "fresh");
    sameId.add("mmmmmmmmm1", users[0], "other");
    auto r = insert(*db, sameId.sorted(users), failedAt);
    REQUIRE(!r);
    CHECK(r.error().code == -EEXIST);
    CHECK(failedAt == 1);
    CHECK(r.error().message == "token id \"mmmmmmmmm1\" already exists");

    Batch sameName;
    sameName.add("zzzzzzzzz9", users[0], "taken");
    r = insert(*db, sameName.sorted(users), failedAt);
    REQUIRE(!r);
    CHECK(r.error().message == "A token with name \"taken\" already exists.");

    std::vector<UserRecord> ghost = {makeUser("ghost")};
    Batch noUser;
    noUser.add("ggggggggg1", ghost[0], "x");
    r = insert(*db, noUser.sorted(ghost), failedAt);
    REQUIRE(!r);
    CHECK(r.error().code == -ENOENT);

    // Nothing of the refused calls was written.
    auto reader = readerOf(*db);
    REQUIRE(reader->begin());
    for (const char* id : {"aaaaaaaaa0", "zzzzzzzzz9", "ggggggggg1"}) {
      auto t = reader->token(id);
      REQUIRE(t);
      CHECK(!t->has_value());
    }
    reader->end();
  }

  TEST_CASE("ids out of order are refused") {
    TempDir dir;
    auto db = openDb(dir.path());
    UserRecord u = makeUser("dan");
    REQUIRE(db->update([&](Writer& w) { return w.putUser(u); }));
    std::string a = encodeToken(TokenRecord{});
    std::vector<NewTokenRef> refs = {{"bbbbbbbbbb", a, &u.id, "b"}, {"aaaaaaaaaa", a, &u.id, "a"}};
    size_t failedAt = 0;
    auto r = insert(*db, refs, failedAt);
    REQUIRE(!r);
    CHECK(failedAt == 1);
  }
}
