// Coder's rows to tokend's records: what maps, and what fails closed (grants nothing).
#include <doctest/doctest.h>

#include "replica/rows.h"

using namespace tokend::replica;

namespace {

PgTokenRow goodToken() {
  PgTokenRow t;
  t.id = "AbCdEfGh12";
  t.hashHex = std::string(64, 'a');
  t.userId = "11111111-1111-4111-8111-111111111111";
  t.loginType = "token";
  t.name = "cli";
  t.scopesJson = R"(["workspace:read","coder:all"])";
  t.allowJson = R"(["*:*"])";
  t.createdUs = 1'700'000'000'000'000;
  t.expiresUs = 1'800'000'000'000'000;
  t.lifetimeSeconds = 86400;
  return t;
}

PgUserRow goodUser() {
  PgUserRow u;
  u.id = "11111111-1111-4111-8111-111111111111";
  u.username = "alice";
  u.rolesJson = R"(["owner","member"])";
  u.status = "active";
  return u;
}

}  // namespace

TEST_SUITE("ReplicaRows") {
  TEST_CASE("a Coder token row maps to a token record") {
    auto m = mapToken(goodToken());
    REQUIRE(m.record);
    CHECK(m.refused.empty());
    CHECK(m.record->id == "AbCdEfGh12");
    CHECK(m.record->secretHash[0] == 0xaa);
    CHECK(m.record->expiresAt == 1'800'000'000);
    CHECK(m.record->scopes == std::vector<std::string>{"coder:all", "workspace:read"});
  }

  TEST_CASE("rows tokend cannot map exactly grant nothing and say why") {
    auto refused = [](PgTokenRow t) {
      auto m = mapToken(t);
      CHECK_FALSE(m.record);
      return m.refused;
    };
    PgTokenRow t = goodToken();
    t.hashHex = std::string(40, 'a');  // a SHA-1 length
    CHECK(refused(t).find("20 bytes, not 32") != std::string::npos);
    t = goodToken();
    t.loginType = "oauth2_provider_app";
    CHECK(refused(t) == "unknown login type \"oauth2_provider_app\"");
    t = goodToken();
    t.scopesJson = R"(["workspace:read","chat:frobnicate"])";
    CHECK(refused(t).find("chat:frobnicate") != std::string::npos);
    t = goodToken();
    t.scopesJson = "[]";
    CHECK(refused(t).find("scopes is empty") != std::string::npos);
    t = goodToken();
    t.allowJson = R"(["spaceship:*"])";
    CHECK(refused(t).find("spaceship:*") != std::string::npos);
    t = goodToken();
    // One stored entry with a comma is one unknown entry, not two known ones.
    t.allowJson = R"(["workspace:*,template:*"])";
    CHECK(refused(t).find("unknown allow-list entry") != std::string::npos);
    t = goodToken();
    t.id = "short";
    CHECK(!refused(t).empty());
  }

  TEST_CASE("dormant counts as active, suspended as suspended, unknown roles grant nothing") {
    PgUserRow u = goodUser();
    u.status = "dormant";
    auto m = mapUser(u);
    REQUIRE(m.record);
    CHECK(m.record->status == tokend::verifier::UserStatus::Active);
    CHECK(m.record->roles == std::vector<std::string>{"owner"});
    u.status = "suspended";
    CHECK(mapUser(u).record->status == tokend::verifier::UserStatus::Suspended);
    u.status = "frozen";
    CHECK_FALSE(mapUser(u).record);
    CHECK(mapUser(u).refused == "unknown user status \"frozen\"");
    u = goodUser();
    u.rolesJson = R"(["owner","site-wizard"])";
    m = mapUser(u);
    REQUIRE(m.record);
    CHECK(m.record->roles == std::vector<std::string>{"owner"});
    CHECK(m.dropped == "site-wizard");
  }

  TEST_CASE("a deleted user is held as absent") {
    PgUserRow u = goodUser();
    u.deleted = true;
    auto m = mapUser(u);
    CHECK_FALSE(m.record);
    CHECK(m.refused.empty());
  }

  TEST_CASE("an expiry with a fraction of a second refuses at once, never late") {
    // UPDATE api_keys SET expires_at = now(): 12:00:00.700 must be refused during 12:00:00.
    CHECK(expirySeconds(1'000'000'700'000) == 999'999);
    CHECK(expirySeconds(1'000'000'000'000) == 1'000'000);
    CHECK(secondsFloor(-1) == -1);
    CHECK(expirySeconds(-1) == -2);
  }
}
