// Tests for the Manager's rules that hold in its write transactions: the creating token's reach,
// the last active owner, the promotion clamp and not-found messages without secrets.
#include "verifier/manage.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "verifier/token.h"

using namespace tokend;
using namespace tokend::verifier;

namespace {

constexpr int64_t kNow = 1'800'000'000;

struct Fixture {
  Fixture() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/manage_test.XXXXXX";
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    dir = tmpl;
    auto opened = KeyDb::open(dir + "/data");
    REQUIRE(opened);
    db = std::move(*opened);
    m = std::make_unique<Manager>(*db, LifetimeConfig{});
  }
  ~Fixture() {
    m.reset();
    db.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  UserRecord user(const char* name, std::vector<std::string> roles = {}) {
    auto u = m->createUser(name, roles, kNow);
    REQUIRE(u);
    return *u;
  }
  CreatedToken token(const UserRecord& u, std::vector<std::string> scopes,
                     std::vector<std::string> allow, std::optional<int64_t> lifetime = {},
                     std::optional<std::string> creator = {}) {
    CreateTokenRequest r;
    r.user = u.id;
    r.scopes = std::move(scopes);
    r.allowList = std::move(allow);
    r.lifetime = lifetime;
    r.creator = std::move(creator);
    auto t = m->createToken(r, kNow);
    REQUIRE(t);
    return *t;
  }
  size_t tokenCount() {
    auto all = m->tokens(std::nullopt, true, kNow);
    REQUIRE(all);
    return all->size();
  }
  std::string dir;
  std::unique_ptr<KeyDb> db;
  std::unique_ptr<Manager> m;
};

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_SUITE("Manage") {
  TEST_CASE("a token creates only within its reach, read in the creating transaction") {
    Fixture f;
    UserRecord mia = f.user("mia");
    CreatedToken narrow = f.token(mia, {"coder:apikeys.manage_self"}, {"api_key:*"}, 3600);
    const size_t before = f.tokenCount();

    CreateTokenRequest wide;
    wide.user = mia.id;
    wide.publicOnly = true;
    wide.lifetime = 60;
    wide.creator = narrow.record.id;
    auto refused = f.m->createToken(wide, kNow);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == -EPERM);
    CHECK(has(refused.error().message, "scope \"coder:all\""));

    wide.scopes = {"api_key:read"};
    refused = f.m->createToken(wide, kNow);
    REQUIRE_FALSE(refused);
    CHECK(has(refused.error().message, "allow-list entry \"*:*\""));

    wide.allowList = {"api_key:*"};
    wide.lifetime = 3601;
    refused = f.m->createToken(wide, kNow);
    REQUIRE_FALSE(refused);
    CHECK(has(refused.error().message, "after the creating token"));
    // The default lifetime (7 days) outlives it too: a narrow creator names a shorter one.
    wide.lifetime.reset();
    CHECK_FALSE(f.m->createToken(wide, kNow));

    auto s = f.m->createSession(mia.id, LoginType::Password, kNow, narrow.record.id);
    REQUIRE_FALSE(s);
    CHECK(s.error().code == -EPERM);
    CHECK(has(s.error().message, "only a session or a coder:all token"));
    CHECK(f.tokenCount() == before);  // nothing written by any refusal

    // Within reach: allowed, and the new one may create within its own reach in turn.
    wide.lifetime = 1800;
    auto ok = f.m->createToken(wide, kNow);
    REQUIRE(ok);
    CHECK(ok->record.expiresAt == kNow + 1800);
    CHECK(f.token(mia, {"api_key:read"}, {"api_key:*"}, 600, ok->record.id).record.scopes ==
          std::vector<std::string>{"api_key:read"});

    // A session makes sessions and 30-day tokens; a creator that is gone makes nothing.
    auto session = f.m->createSession(mia.id, LoginType::Github, kNow);
    REQUIRE(session);
    CHECK(f.m->createSession(mia.id, LoginType::Oidc, kNow, session->record.id));
    CHECK(f.token(mia, {}, {}, 30 * 86400, session->record.id).record.expiresAt ==
          kNow + 30 * 86400);
    REQUIRE(f.m->deleteToken(narrow.record.id, mia.id));
    wide.creator = narrow.record.id;
    refused = f.m->createToken(wide, kNow);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == -EPERM);
    // Operator mode has no creator: anything the catalog holds.
    CHECK(f.token(mia, {}, {}).record.scopes == std::vector<std::string>{"coder:all"});
  }

  TEST_CASE("the last active owner is neither suspended, deleted nor demoted") {
    Fixture f;
    UserRecord boss = f.user("boss", {"owner"});
    UserRecord mia = f.user("mia");
    for (int i = 0; i < 2; ++i) {
      auto s = f.m->setStatus("boss", UserStatus::Suspended, kNow);
      REQUIRE_FALSE(s);
      CHECK(s.error().code == -EPERM);
      CHECK(s.error().message ==
            "cannot suspend \"boss\": they are the last active owner; make another user an owner "
            "first");
      auto d = f.m->deleteUser("boss");
      REQUIRE_FALSE(d);
      CHECK(has(d.error().message, "cannot delete \"boss\": they are the last active owner"));
      auto r = f.m->setRoles("boss", {"user-admin"}, kNow);
      REQUIRE_FALSE(r);
      CHECK(has(r.error().message, "cannot take the owner role from \"boss\""));
      CHECK(f.m->user("boss")->status == UserStatus::Active);
      CHECK(f.m->user("boss")->roles == std::vector<std::string>{"owner"});
      // A suspended owner does not count as another one.
      if (i == 0) {
        REQUIRE(f.m->setRoles("mia", {"owner"}, kNow));
        REQUIRE(f.m->setStatus("mia", UserStatus::Suspended, kNow));
      }
    }
    // Others are free, and with a second active owner so is this one.
    CHECK(f.m->setStatus("boss", UserStatus::Active, kNow));
    REQUIRE(f.m->setStatus("mia", UserStatus::Active, kNow));
    CHECK(f.m->setStatus("boss", UserStatus::Suspended, kNow));
    auto last = f.m->deleteUser("mia");
    REQUIRE_FALSE(last);  // boss is suspended now: mia is the last active one
    CHECK(f.m->setStatus("boss", UserStatus::Active, kNow));
    CHECK(f.m->deleteUser("mia"));
    f.user("ned");
    CHECK(f.m->setStatus("ned", UserStatus::Suspended, kNow));
    CHECK(f.m->deleteUser("ned"));
  }

  TEST_CASE("promotion to owner clamps the user's tokens to the admin cap, in the changelog") {
    Fixture f;
    UserRecord carl = f.user("carl");
    const LifetimeConfig c;
    CreatedToken forever = f.token(carl, {}, {}, 876000 * kHour);
    CreatedToken shortLived = f.token(carl, {}, {}, 3600);
    auto session = f.m->createSession(carl.id, LoginType::Password, kNow);
    REQUIRE(session);
    const uint64_t since = f.db->lastTxnId();

    const int64_t later = kNow + 100;
    REQUIRE(f.m->setRoles("carl", {"owner"}, later));
    auto t = f.m->findToken(forever.record.id, carl.id);
    REQUIRE(t);
    CHECK(t->expiresAt == later + c.maxAdminTokenLifetime);
    CHECK(t->updatedAt == later);
    CHECK(f.m->findToken(shortLived.record.id, carl.id)->expiresAt == kNow + 3600);
    CHECK(f.m->findToken(session->record.id, carl.id)->expiresAt == kNow + c.sessionDuration);

    // A follower's cache learns of the token, not only of the user.
    auto reader = f.db->reader();
    REQUIRE(reader);
    REQUIRE((*reader)->begin());
    auto changes = (*reader)->changesSince(since);
    (*reader)->end();
    REQUIRE(changes);
    CHECK_FALSE(changes->gap);
    CHECK(std::find(changes->tokenIds.begin(), changes->tokenIds.end(), forever.record.id) !=
          changes->tokenIds.end());
    CHECK(std::find(changes->userIds.begin(), changes->userIds.end(), carl.id) !=
          changes->userIds.end());

    // Already an owner: a role change clamps nothing more.
    CreatedToken made = f.token(carl, {}, {}, c.maxAdminTokenLifetime);
    REQUIRE(f.m->setRoles("carl", {"owner", "auditor"}, kNow + 5000));
    CHECK(f.m->findToken(made.record.id, carl.id)->expiresAt == kNow + c.maxAdminTokenLifetime);
  }

  TEST_CASE("not-found messages name a token by its id, never its secret") {
    Fixture f;
    UserRecord mia = f.user("mia");
    const std::string unknown = "AAAAAAAAAA-SecretSecretSecretSecr";
    REQUIRE(parseToken(unknown));
    const std::string secret = unknown.substr(11);
    CreatedToken real = f.token(mia, {}, {});
    const std::string foreignSecret = real.record.id + "-SecretSecretSecretSecr";
    // Whole, cut short, and one too long (the review's example).
    for (const std::string& ref : {unknown, unknown.substr(0, 30), unknown + "e1"}) {
      CAPTURE(ref);
      for (std::optional<Uuid> who : {std::optional<Uuid>(), std::optional<Uuid>(mia.id)}) {
        auto found = f.m->findToken(ref, who);
        REQUIRE_FALSE(found);
        CHECK(found.error().code == -ENOENT);
        CHECK(found.error().message == "token \"AAAAAAAAAA-\u2026\" not found");
        CHECK_FALSE(has(found.error().message, secret.substr(0, 10)));
        CHECK_FALSE(has(f.m->expireToken(ref, who, kNow).error().message, secret.substr(0, 10)));
        CHECK_FALSE(has(f.m->deleteToken(ref, who).error().message, secret.substr(0, 10)));
      }
    }
    // A whole token names its record by id, whatever its secret (the lookup is by id).
    CHECK(f.m->findToken(foreignSecret, mia.id));
    UserRecord ned = f.user("ned");
    auto other = f.m->findToken(real.key, ned.id);
    REQUIRE_FALSE(other);
    CHECK_FALSE(has(other.error().message, real.key.substr(11)));
    CHECK(has(other.error().message, real.record.id));
    auto user = f.m->user(unknown);
    REQUIRE_FALSE(user);
    CHECK_FALSE(has(user.error().message, secret));
    // Names are shown as given.
    CHECK(f.m->findToken("no-such-name", mia.id).error().message ==
          "token \"no-such-name\" not found");
  }
}
