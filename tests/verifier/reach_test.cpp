// Tests for the reach rules: what a token may create, and who may change an owner (SPEC 8).
#include "verifier/reach.h"

#include <doctest/doctest.h>

#include <cerrno>
#include <string>
#include <vector>

#include "verifier/api_json.h"
#include "verifier/token.h"

using namespace tokend;
using namespace tokend::verifier;

namespace {

constexpr int64_t kNow = 1'800'000'000;
const std::string kWs = "workspace:11111111-1111-4111-8111-111111111111";
const std::string kOtherWs = "workspace:22222222-2222-4222-8222-222222222222";

TokenRecord token(std::vector<std::string> scopes, std::vector<std::string> allow,
                  int64_t expiresAt = kNow + 3600, LoginType kind = LoginType::Token) {
  TokenRecord t;
  t.loginType = kind;
  t.scopes = std::move(scopes);
  t.allowList = std::move(allow);
  t.expiresAt = expiresAt;
  return t;
}

TokenRecord session(int64_t expiresAt = kNow + 3600) {
  return token({"coder:all"}, {"*:*"}, expiresAt, LoginType::Password);
}

// The refusal's message, or "" when allowed.
std::string refusal(const TokenRecord& creator, const TokenRecord& created) {
  auto r = checkCreation(creator, created);
  if (r) return {};
  CHECK(r.error().code == -EPERM);
  return r.error().message;
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

UserRecord user(const char* name, std::vector<std::string> roles,
                UserStatus status = UserStatus::Active) {
  UserRecord u;
  u.id = Uuid::random();
  u.username = name;
  u.roles = std::move(roles);
  u.status = status;
  return u;
}

}  // namespace

TEST_SUITE("Reach") {
  TEST_CASE("a narrow token cannot create a wider scope, and the refusal names it") {
    const TokenRecord narrow = token({"coder:apikeys.manage_self"}, {"api_key:*"});
    std::string m = refusal(narrow, token({"coder:all"}, {"api_key:*"}, kNow + 60));
    CHECK(has(m, "scope \"coder:all\""));
    CHECK(has(m, "coder:apikeys.manage_self"));
    m = refusal(narrow, token({"api_key:read", "workspace:delete"}, {"api_key:*"}, kNow + 60));
    CHECK(has(m, "scope \"workspace:delete\""));
    CHECK(has(m, "grants workspace:delete"));
    // A composite reaching one permission further is refused too, naming that permission.
    const TokenRecord ws = token({"workspace:*", "template:*"}, {"*:*"});
    m = refusal(ws, token({"coder:workspaces.create"}, {"*:*"}, kNow + 60));
    CHECK(has(m, "coder:workspaces.create"));
    CHECK(has(m, "organization_member:read"));
    // No scopes at all means coder:all.
    CHECK(has(refusal(narrow, token({}, {"api_key:*"}, kNow + 60)), "\"coder:all\""));
  }

  TEST_CASE("scopes within the creator's, by permission, are allowed") {
    const TokenRecord narrow = token({"coder:apikeys.manage_self"}, {"api_key:*"});
    CHECK(refusal(narrow, token({"api_key:read"}, {"api_key:*"}, kNow + 60)).empty());
    CHECK(refusal(narrow, token({"coder:apikeys.manage_self"}, {"api_key:*"}, kNow + 60)).empty());
    CHECK(refusal(narrow, token({"api_key:*"}, {"api_key:*"}, kNow + 60)).empty());
    const TokenRecord ws = token({"workspace:*"}, {"*:*"});
    CHECK(refusal(ws, token({"workspace:read", "workspace:ssh"}, {kWs}, kNow + 60)).empty());
  }

  TEST_CASE("allow-list entries must be admitted by the creator's list") {
    const TokenRecord any = token({"workspace:*"}, {"workspace:*"});
    // *:* only from *:*, and an absent list means *:*.
    CHECK(has(refusal(any, token({"workspace:read"}, {"*:*"}, kNow + 60)),
              "allow-list entry \"*:*\""));
    CHECK(has(refusal(any, token({"workspace:read"}, {}, kNow + 60)), "\"*:*\""));
    CHECK(
        has(refusal(any, token({"workspace:read"}, {"template:*"}, kNow + 60)), "\"template:*\""));
    CHECK(refusal(any, token({"workspace:read"}, {"workspace:*"}, kNow + 60)).empty());
    CHECK(refusal(any, token({"workspace:read"}, {kWs}, kNow + 60)).empty());

    const TokenRecord one = token({"workspace:*"}, {kWs});
    CHECK(refusal(one, token({"workspace:read"}, {kWs}, kNow + 60)).empty());
    std::string m = refusal(one, token({"workspace:read"}, {kOtherWs}, kNow + 60));
    CHECK(has(m, kOtherWs));
    CHECK(has(m, "(" + kWs + ")"));
    CHECK(has(refusal(one, token({"workspace:read"}, {"workspace:*"}, kNow + 60)),
              "\"workspace:*\""));
    // A list of several: every entry must be admitted.
    CHECK(has(refusal(one, token({"workspace:read"}, {kWs, kOtherWs}, kNow + 60)), kOtherWs));

    const TokenRecord everything = token({"workspace:*"}, {"*:*"});
    CHECK(refusal(everything, token({"workspace:read"}, {"*:*"}, kNow + 60)).empty());
    CHECK(refusal(everything, token({"workspace:read"}, {"template:*", kWs}, kNow + 60)).empty());
  }

  TEST_CASE("a narrow token cannot create one that outlives it; sessions and full tokens can") {
    const TokenRecord narrow = token({"coder:apikeys.manage_self"}, {"api_key:*"}, kNow + 3600);
    CHECK(refusal(narrow, token({"api_key:read"}, {"api_key:*"}, kNow + 3600)).empty());
    std::string m = refusal(narrow, token({"api_key:read"}, {"api_key:*"}, kNow + 3601));
    CHECK(has(m, "after the creating token"));
    CHECK(has(m, formatTime(kNow + 3600)));
    // coder:all alone is not enough: its allow list narrows it too.
    const TokenRecord allOneWs = token({"coder:all"}, {kWs}, kNow + 3600);
    CHECK(has(refusal(allOneWs, token({"coder:all"}, {kWs}, kNow + 7200)), "after"));
    // A session still creates a 30-day token, and so does a full token.
    CHECK(refusal(session(kNow + 3600), token({"coder:all"}, {"*:*"}, kNow + 30 * 86400)).empty());
    CHECK(refusal(token({"coder:all"}, {"*:*"}, kNow + 3600),
                  token({"coder:all"}, {"*:*"}, kNow + 30 * 86400))
              .empty());
    // Every permission named one resource at a time is as full as coder:all.
    CHECK(isFullToken(token({"coder:all"}, {})));
    CHECK_FALSE(isFullToken(token({"coder:all"}, {"workspace:*"})));
    CHECK_FALSE(isFullToken(token({"coder:apikeys.manage_self"}, {"*:*"})));
  }

  TEST_CASE("only a session or a full token creates a session") {
    const TokenRecord newSession = session(kNow + 86400);
    std::string m = refusal(token({"coder:apikeys.manage_self"}, {"api_key:*"}), newSession);
    CHECK(has(m, "only a session or a coder:all token"));
    CHECK(has(m, "coder:apikeys.manage_self"));
    CHECK(has(m, "api_key:*"));
    CHECK_FALSE(refusal(token({"coder:all"}, {kWs}), newSession).empty());
    CHECK(refusal(session(), newSession).empty());
    CHECK(refusal(token({"coder:all"}, {"*:*"}), newSession).empty());
    CHECK(refusal(token({"coder:all"}, {"*:*"}, kNow + 60), newSession).empty());
  }

  TEST_CASE("only an owner suspends, activates, deletes or re-roles an owner") {
    const UserRecord owner = user("boss", {"owner"});
    const UserRecord owner2 = user("boss2", {"owner"});
    const UserRecord admin = user("ua", {"user-admin"});
    const UserRecord mia = user("mia", {});
    struct Case {
      UserChange change;
      const char* message;
    };
    for (Case c : {Case{UserChange::Suspend, "Only owners may suspend an owner."},
                   Case{UserChange::Activate, "Only owners may activate an owner."},
                   Case{UserChange::Delete, "Only owners may delete an owner."},
                   Case{UserChange::SetRoles, "Only owners may grant or take the owner role."}}) {
      CAPTURE(static_cast<int>(c.change));
      auto r = checkUserChange(admin, owner, c.change);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == -EPERM);
      CHECK(r.error().message == c.message);
      CHECK(checkUserChange(owner2, owner, c.change));
      CHECK(checkUserChange(admin, mia, c.change));
    }
    // Granting owner is an owner's too.
    const std::vector<std::string> toOwner = {"template-admin,owner"};
    CHECK_FALSE(checkUserChange(admin, mia, UserChange::SetRoles, toOwner));
    CHECK(checkUserChange(owner, mia, UserChange::SetRoles, toOwner));
  }

  TEST_CASE("nobody suspends themselves, owners included") {
    const UserRecord owner = user("boss", {"owner"});
    const UserRecord admin = user("ua", {"user-admin"});
    for (const UserRecord* u : {&owner, &admin}) {
      auto r = checkUserChange(*u, *u, UserChange::Suspend);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == -EINVAL);
      CHECK(r.error().message == "You cannot suspend yourself.");
      CHECK(checkUserChange(*u, *u, UserChange::Activate));
    }
    CHECK(isActiveOwner(owner));
    CHECK_FALSE(isActiveOwner(user("x", {"owner"}, UserStatus::Suspended)));
    CHECK_FALSE(isActiveOwner(admin));
  }

  TEST_CASE("a token ref in a message keeps only its id") {
    const std::string whole = "AAAAAAAAAA-SecretSecretSecretSecre1";
    CHECK(redactTokenRef(whole) == "AAAAAAAAAA-\u2026");
    // Mistyped or cut short: still a secret's worth of characters.
    CHECK(redactTokenRef("AAAAAAAAAA-SecretSecretSecretSec") == "AAAAAAAAAA-\u2026");
    CHECK(redactTokenRef("AAAAAAAAAA-SecretSecretSecretSecre1\n") == "AAAAAAAAAA-\u2026");
    // Names and ids are shown as given.
    CHECK(redactTokenRef("AAAAAAAAAA") == "AAAAAAAAAA");
    CHECK(redactTokenRef("brisk-otter-4821") == "brisk-otter-4821");
    CHECK(redactTokenRef("my token") == "my token");
  }
}
