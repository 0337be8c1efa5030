// Tests for the record encoding: round trips, and a decoder that refuses every damaged record.
#include "verifier/records.h"

#include <doctest/doctest.h>

#include <climits>

using namespace tokend;
using namespace tokend::verifier;

namespace {

UserRecord sampleUser() {
  UserRecord u;
  u.id = *Uuid::parse("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
  u.username = "alice";
  u.roles = {"owner", "template-admin"};
  u.status = UserStatus::Suspended;
  u.createdAt = 1700000000;
  u.updatedAt = 1700000123;
  return u;
}

TokenRecord sampleToken() {
  TokenRecord t;
  t.id = "Ab3dE6gH9k";
  for (size_t i = 0; i < t.secretHash.size(); ++i)
    t.secretHash[i] = static_cast<uint8_t>(i * 7 + 1);
  t.userId = *Uuid::parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8");
  t.loginType = LoginType::Oidc;
  t.name = "ci-deploy";
  t.scopes = {"workspace:read", "template:*"};
  t.allowList = {"workspace:6ba7b811-9dad-11d1-80b4-00c04fd430c8", "template:*"};
  t.createdAt = 1700000000;
  t.expiresAt = 1700604800;
  t.lifetimeSeconds = 604800;
  t.lastUsed = 1700000500;
  t.updatedAt = 1700000600;
  return t;
}

void checkSame(const UserRecord& a, const UserRecord& b) {
  CHECK(a.id == b.id);
  CHECK(a.username == b.username);
  CHECK(a.roles == b.roles);
  CHECK(a.status == b.status);
  CHECK(a.createdAt == b.createdAt);
  CHECK(a.updatedAt == b.updatedAt);
}

void checkSame(const TokenRecord& a, const TokenRecord& b) {
  CHECK(a.id == b.id);
  CHECK(a.secretHash == b.secretHash);
  CHECK(a.userId == b.userId);
  CHECK(a.loginType == b.loginType);
  CHECK(a.name == b.name);
  CHECK(a.scopes == b.scopes);
  CHECK(a.allowList == b.allowList);
  CHECK(a.createdAt == b.createdAt);
  CHECK(a.expiresAt == b.expiresAt);
  CHECK(a.lifetimeSeconds == b.lifetimeSeconds);
  CHECK(a.lastUsed == b.lastUsed);
  CHECK(a.updatedAt == b.updatedAt);
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Where the token's login_type byte sits: type, version, id (u16 + 10), hash (32), user (16).
constexpr size_t kLoginTypeOffset = 2 + 2 + 10 + 32 + 16;

}  // namespace

TEST_SUITE("Records") {
  TEST_CASE("a user round-trips every field and every status") {
    for (UserStatus s : {UserStatus::Active, UserStatus::Suspended}) {
      UserRecord u = sampleUser();
      u.status = s;
      auto d = decodeUser(encodeUser(u));
      REQUIRE(d);
      checkSame(*d, u);
    }
  }

  TEST_CASE("a token round-trips every field and every login type") {
    for (LoginType k :
         {LoginType::Token, LoginType::Password, LoginType::Oidc, LoginType::Github}) {
      TokenRecord t = sampleToken();
      t.loginType = k;
      auto d = decodeToken(encodeToken(t));
      REQUIRE(d);
      checkSame(*d, t);
    }
  }

  TEST_CASE("empty, binary and extreme values round-trip") {
    UserRecord u;  // all defaults: nil id, empty name, no roles, zero times
    auto du = decodeUser(encodeUser(u));
    REQUIRE(du);
    checkSame(*du, u);

    TokenRecord t = sampleToken();
    t.name = std::string("a\0b\xff", 4);
    t.scopes.clear();
    t.allowList = {""};
    t.createdAt = INT64_MIN;
    t.expiresAt = INT64_MAX;
    t.lifetimeSeconds = -1;
    t.lastUsed = 0;
    auto dt = decodeToken(encodeToken(t));
    REQUIRE(dt);
    checkSame(*dt, t);
  }

  TEST_CASE("the encoding is little-endian, tagged and versioned") {
    TokenRecord t = sampleToken();
    t.createdAt = 0x0102030405060708;
    std::string b = encodeToken(t);
    CHECK(b[0] == 'T');
    CHECK(b[1] == 1);
    CHECK(b[2] == 10);  // id length, low byte first
    CHECK(b[3] == 0);
    CHECK(b.substr(4, 10) == t.id);
    std::string u = encodeUser(sampleUser());
    CHECK(u[0] == 'U');
    CHECK(u[1] == 1);
    // created_at is the first of the five trailing i64 fields
    size_t at = b.size() - 5 * 8;
    CHECK(static_cast<uint8_t>(b[at]) == 0x08);
    CHECK(static_cast<uint8_t>(b[at + 7]) == 0x01);
  }

  TEST_CASE("every truncation of a valid record is refused, naming the field") {
    std::string user = encodeUser(sampleUser());
    for (size_t n = 0; n < user.size(); ++n) {
      CAPTURE(n);
      auto d = decodeUser(std::string_view(user).substr(0, n));
      REQUIRE_FALSE(d);
      CHECK(d.error().code == -EBADMSG);
      CHECK(contains(d.error().message, "user record: field \""));
      CHECK(contains(d.error().message, "remain"));
    }
    std::string token = encodeToken(sampleToken());
    for (size_t n = 0; n < token.size(); ++n) {
      CAPTURE(n);
      auto d = decodeToken(std::string_view(token).substr(0, n));
      REQUIRE_FALSE(d);
      CHECK(d.error().code == -EBADMSG);
      CHECK(contains(d.error().message, "token record: field \""));
    }
    CHECK(decodeToken(std::string_view(token).substr(0, 1)).error().message ==
          "token record: field \"version\" needs 1 bytes at offset 1 but only 0 remain");
    CHECK(decodeToken("").error().message ==
          "token record: field \"type\" needs 1 bytes at offset 0 but only 0 remain");
  }

  TEST_CASE("an unknown format version is refused") {
    std::string b = encodeToken(sampleToken());
    b[1] = 2;
    auto d = decodeToken(b);
    REQUIRE_FALSE(d);
    CHECK(d.error().message ==
          "token record version 2 is not supported (this build reads version 1)");
    b[1] = 0;
    CHECK_FALSE(decodeToken(b));

    std::string u = encodeUser(sampleUser());
    u[1] ^= 0x80;
    auto du = decodeUser(u);
    REQUIRE_FALSE(du);
    CHECK(contains(du.error().message, "user record version 129 is not supported"));
  }

  TEST_CASE("a record of the wrong type is refused") {
    auto d = decodeUser(encodeToken(sampleToken()));
    REQUIRE_FALSE(d);
    CHECK(d.error().message == "not a user record: type byte 0x54 ('T'), expected 'U'");
    auto t = decodeToken(encodeUser(sampleUser()));
    REQUIRE_FALSE(t);
    CHECK(t.error().message == "not a token record: type byte 0x55 ('U'), expected 'T'");
    std::string b = encodeToken(sampleToken());
    b[0] = '\x01';
    CHECK(decodeToken(b).error().message == "not a token record: type byte 0x01, expected 'T'");
  }

  TEST_CASE("trailing bytes are refused") {
    auto d = decodeToken(encodeToken(sampleToken()) + "x");
    REQUIRE_FALSE(d);
    CHECK(d.error().message == "token record: 1 trailing byte after the last field");
    auto u = decodeUser(encodeUser(sampleUser()) + std::string(3, '\0'));
    REQUIRE_FALSE(u);
    CHECK(u.error().message == "user record: 3 trailing bytes after the last field");
  }

  TEST_CASE("out-of-range enum values are refused") {
    std::string b = encodeToken(sampleToken());
    REQUIRE(b[kLoginTypeOffset] == static_cast<char>(LoginType::Oidc));
    for (int v : {4, 5, 0x80, 0xff}) {
      CAPTURE(v);
      b[kLoginTypeOffset] = static_cast<char>(v);
      auto d = decodeToken(b);
      REQUIRE_FALSE(d);
      CHECK(d.error().message ==
            "token record: field \"login_type\" has out-of-range value " + std::to_string(v));
    }
    b[kLoginTypeOffset] = static_cast<char>(LoginType::Github);
    CHECK(decodeToken(b));

    std::string u = encodeUser(sampleUser());
    size_t statusAt = u.size() - 1 - 2 * 8;  // before created_at and updated_at
    REQUIRE(u[statusAt] == static_cast<char>(UserStatus::Suspended));
    u[statusAt] = 2;
    auto du = decodeUser(u);
    REQUIRE_FALSE(du);
    CHECK(du.error().message == "user record: field \"status\" has out-of-range value 2");
  }

  TEST_CASE("a string or list length running past the end is refused") {
    std::string b = encodeToken(sampleToken());
    size_t nameAt = kLoginTypeOffset + 1;  // u16 length of name
    b[nameAt] = '\xff';
    b[nameAt + 1] = '\xff';
    auto d = decodeToken(b);
    REQUIRE_FALSE(d);
    CHECK(contains(d.error().message, "token record: field \"name\" needs 65535 bytes at offset " +
                                          std::to_string(nameAt + 2)));

    b = encodeToken(sampleToken());
    size_t scopesAt = nameAt + 2 + sampleToken().name.size();  // u16 count of scopes
    b[scopesAt] = 100;
    d = decodeToken(b);
    REQUIRE_FALSE(d);
    CHECK(contains(d.error().message, "token record: field \"scopes["));

    b = encodeToken(sampleToken());
    b[scopesAt + 2] = '\xf0';  // length of scopes[0]
    d = decodeToken(b);
    REQUIRE_FALSE(d);
    CHECK(contains(d.error().message, "field \"scopes[0]\" needs 240 bytes"));

    std::string u = encodeUser(sampleUser());
    u[2 + 16] = 6;  // username length 6 instead of 5: shifts every later field
    CHECK_FALSE(decodeUser(u));
  }

  TEST_CASE("fields too long for the encoding are named before encoding") {
    TokenRecord t = sampleToken();
    CHECK(checkEncodable(t));
    t.name.assign(65536, 'x');
    auto r = checkEncodable(t);
    REQUIRE_FALSE(r);
    CHECK(contains(r.error().message, "token field \"name\" is 65536 bytes"));
    t = sampleToken();
    t.scopes.assign(65536, "workspace:read");
    CHECK(contains(checkEncodable(t).error().message, "token field \"scopes\" has 65536 entries"));
    UserRecord u = sampleUser();
    CHECK(checkEncodable(u));
    u.roles = {std::string(70000, 'r')};
    CHECK(contains(checkEncodable(u).error().message, "user field \"roles\" is 70000 bytes"));
  }

  TEST_CASE("login type and status names") {
    CHECK(loginTypeName(LoginType::Token) == "token");
    CHECK(loginTypeName(LoginType::Password) == "password");
    CHECK(loginTypeName(LoginType::Oidc) == "oidc");
    CHECK(loginTypeName(LoginType::Github) == "github");
    for (LoginType k :
         {LoginType::Token, LoginType::Password, LoginType::Oidc, LoginType::Github}) {
      CHECK(parseLoginType(loginTypeName(k)) == k);
    }
    CHECK_FALSE(parseLoginType("Token"));
    CHECK_FALSE(parseLoginType(""));
    CHECK_FALSE(parseLoginType("saml"));
    CHECK(userStatusName(UserStatus::Active) == "active");
    CHECK(userStatusName(UserStatus::Suspended) == "suspended");
  }
}
