// Tests for the verification decision over compiled token facts (no database).
#include <doctest/doctest.h>

#include "verifier/verify.h"

using namespace tokend::verifier;
using tokend::Uuid;
using V = std::vector<std::string>;

namespace {

const char* kA = "aaaaaaaa-0000-4000-8000-000000000001";
const char* kB = "bbbbbbbb-0000-4000-8000-000000000002";
const int64_t kNow = 1'800'000'000;

// A token as tokenctl would create it, for a user with `roles`.
struct Fixture {
  Sha256 sha;
  Digest stored = sha.digest("0123456789012345678901");
  Uuid user = *Uuid::parse("11111111-2222-4333-8444-555555555555");
  Grant grant;
  std::vector<AllowEntry> allow;
  int64_t expiresAt = kNow + 3600;
  bool active = true;

  Fixture(V scopes, V allowList, V roles = {}) {
    grant = compileGrant(*compileScopes(*normalizeScopes(scopes, false)), roles);
    allow = *normalizeAllowList(allowList);
  }
  TokenFacts facts() const {
    return TokenFacts{stored.data(), user, expiresAt, active, &grant, allow};
  }
  Reason ask(const char* perm, std::string object = "", std::string owner = "") {
    return decide(facts(), stored, parseQuery(perm, object, owner), kNow);
  }
};

std::string ws(const char* id) {
  return std::string("workspace:") + id;
}

}  // namespace

TEST_SUITE("Decide") {
  TEST_CASE("seed: workspace:read on workspace A reads A only") {
    Fixture f({"workspace:read"}, {ws(kA)}, {"owner"});
    CHECK(f.ask("workspace:read", ws(kA)) == Reason::Ok);
    CHECK(f.ask("workspace:read", ws(kB)) == Reason::AllowList);
    CHECK(f.ask("template:read", std::string("template:") + kA) == Reason::Scope);
    CHECK(f.ask("workspace:update", ws(kA)) == Reason::Scope);
  }

  TEST_CASE("seed: adding template:* with template:* admits templates") {
    Fixture f({"workspace:read", "template:*"}, {ws(kA), "template:*"}, {"owner"});
    CHECK(f.ask("template:read", std::string("template:") + kB) == Reason::Ok);
    CHECK(f.ask("template:update", std::string("template:") + kA) == Reason::Ok);
    CHECK(f.ask("workspace:read", ws(kB)) == Reason::AllowList);
  }

  TEST_CASE("seed: coder:all grants only what the user's roles grant") {
    Fixture member({"coder:all"}, {});
    std::string self = "11111111-2222-4333-8444-555555555555";
    CHECK(member.ask("template:read", std::string("template:") + kA) == Reason::Ok);
    CHECK(member.ask("system:read") == Reason::Role);
    // Owned permissions need the request to name the token's user as owner.
    CHECK(member.ask("workspace:read", ws(kA)) == Reason::Role);
    CHECK(member.ask("workspace:read", ws(kA), self) == Reason::Ok);
    CHECK(member.ask("workspace:read", ws(kA), "99999999-2222-4333-8444-555555555555") ==
          Reason::Role);

    Fixture owner({"coder:all"}, {}, {"owner"});
    CHECK(owner.ask("system:read") == Reason::Ok);
    CHECK(owner.ask("workspace:read", ws(kA)) == Reason::Ok);

    Fixture auditor({"coder:all"}, {}, {"auditor"});
    CHECK(auditor.ask("audit_log:read") == Reason::Ok);
    CHECK(auditor.ask("audit_log:create") == Reason::Role);
  }

  TEST_CASE("no permission checks authentication only") {
    Fixture f({"workspace:read"}, {ws(kA)});
    CHECK(f.ask("") == Reason::Ok);
  }

  TEST_CASE("a request naming no object needs *:* or <resource>:*") {
    Fixture one({"workspace:create"}, {ws(kA)}, {"owner"});
    CHECK(one.ask("workspace:create") == Reason::AllowList);
    Fixture typeWide({"workspace:create"}, {"workspace:*"}, {"owner"});
    CHECK(typeWide.ask("workspace:create") == Reason::Ok);
  }

  TEST_CASE("bad requests: unknown permission, object or owner") {
    Fixture f({"coder:all"}, {}, {"owner"});
    CHECK(f.ask("workspace:fly") == Reason::BadRequest);
    CHECK(f.ask("workspace") == Reason::BadRequest);
    CHECK(f.ask("workspace:read", "workspace:not-a-uuid") == Reason::BadRequest);
    CHECK(f.ask("workspace:read", std::string("widget:") + kA) == Reason::BadRequest);
    CHECK(f.ask("workspace:read", ws(kA), "nobody") == Reason::BadRequest);
    CHECK(f.ask("workspace:read", "-") == Reason::Ok);
  }

  TEST_CASE(
      "the order of checks: bad_secret, expired, user_inactive, bad_request, scope, allow_list, "
      "role") {
    Fixture f({"workspace:read"}, {ws(kA)});
    Digest wrong = f.sha.digest("not the secret");
    f.expiresAt = kNow - 1;
    f.active = false;
    Query bad = parseQuery("workspace:fly", "", "");
    CHECK(decide(f.facts(), wrong, bad, kNow) == Reason::BadSecret);
    CHECK(decide(f.facts(), f.stored, bad, kNow) == Reason::Expired);
    f.expiresAt = kNow;  // equal to now: still valid
    CHECK(decide(f.facts(), f.stored, bad, kNow) == Reason::UserInactive);
    f.active = true;
    CHECK(decide(f.facts(), f.stored, bad, kNow) == Reason::BadRequest);
    CHECK(f.ask("template:read", ws(kB)) == Reason::Scope);
    CHECK(f.ask("workspace:read", ws(kB)) == Reason::AllowList);
    CHECK(f.ask("workspace:read", ws(kA)) == Reason::Role);
  }

  TEST_CASE("reason names and statuses are those of the SPEC") {
    CHECK(reasonName(Reason::BadSecret) == "bad_secret");
    CHECK(httpStatus(Reason::Ok) == 200);
    CHECK(httpStatus(Reason::Expired) == 401);
    CHECK(httpStatus(Reason::AllowList) == 403);
    CHECK(httpStatus(Reason::BadRequest) == 400);
    CHECK(parseReason("user_inactive") == Reason::UserInactive);
  }
}
