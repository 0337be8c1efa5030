// Unit tests: RFC 7662 introspection's parse and encode (daemon/introspect.h) and the TCP
// listeners' address parsing and loopback check (daemon/tcp_listen.h).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "daemon/introspect.h"
#include "daemon/tcp_listen.h"

using namespace tokend::daemon;
using Json = nlohmann::json;

namespace {

HttpRequest formRequest(std::string_view wire) {
  static std::string storage;
  storage = std::string(wire);
  HttpRequest r;
  HttpParse p = parseHttpRequest(storage, r);
  REQUIRE(p.status == ParseStatus::Complete);
  return r;
}

std::string post(std::string_view type, std::string_view body) {
  std::string s = "POST /v1/introspect HTTP/1.1\r\n";
  if (!type.empty()) s += "Content-Type: " + std::string(type) + "\r\n";
  s += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
  return s;
}

}  // namespace

TEST_SUITE("introspection parse and encode") {
  TEST_CASE("Bearer and Basic credentials; Basic values are form-urlencoded (RFC 6749 2.3.1)") {
    DecodeBuffer scratch;
    auto none = parseClientCredentials("", scratch);
    REQUIRE(none);
    CHECK(none->scheme == ClientCredentials::Scheme::None);
    auto bearer = parseClientCredentials("bearer  abcdefghij-0123456789012345678901 ", scratch);
    REQUIRE(bearer);
    CHECK(bearer->scheme == ClientCredentials::Scheme::Bearer);
    CHECK(bearer->token == "abcdefghij-0123456789012345678901");
    // base64("abcdefghij:0123456789012345678901")
    auto basic =
        parseClientCredentials("Basic YWJjZGVmZ2hpajowMTIzNDU2Nzg5MDEyMzQ1Njc4OTAx", scratch);
    REQUIRE(basic);
    CHECK(basic->scheme == ClientCredentials::Scheme::Basic);
    CHECK(basic->token == "abcdefghij-0123456789012345678901");
    // base64("a%62c:x%2By") decodes each part: "abc" and "x+y".
    auto escaped = parseClientCredentials("BASIC YSU2MmM6eCUyQnk=", scratch);
    REQUIRE(escaped);
    CHECK(escaped->token == "abc-x+y");
    // Unpadded base64 is taken too.
    auto unpadded = parseClientCredentials("Basic YTpi", scratch);
    REQUIRE(unpadded);
    CHECK(unpadded->token == "a-b");
    CHECK(parseClientCredentials("Digest abc", scratch)->scheme ==
          ClientCredentials::Scheme::Other);
    CHECK(parseClientCredentials("Bearer", scratch)->scheme == ClientCredentials::Scheme::Other);
    CHECK_FALSE(parseClientCredentials("Basic !!!!", scratch));
    CHECK_FALSE(parseClientCredentials("Basic YWJj", scratch));      // "abc": no ':'
    CHECK_FALSE(parseClientCredentials("Basic YSUzOmI=", scratch));  // "a%3:b": bad escape
  }

  TEST_CASE("the form: token decoded, token_type_hint read, anything else refused") {
    DecodeBuffer scratch;
    auto f =
        parseIntrospectForm(formRequest(post("application/x-www-form-urlencoded; charset=UTF-8",
                                             "token_type_hint=access_token&token=abc%2Ddef+g")),
                            scratch);
    REQUIRE(f);
    CHECK(f->token == "abc-def g");
    CHECK(f->tokenTypeHint == "access_token");
    auto upper = parseIntrospectForm(
        formRequest(post("Application/X-WWW-Form-Urlencoded", "token=t")), scratch);
    REQUIRE(upper);
    CHECK(upper->token == "t");
    CHECK_FALSE(parseIntrospectForm(formRequest(post("application/json", "token=t")), scratch));
    CHECK_FALSE(parseIntrospectForm(formRequest(post("", "token=t")), scratch));
    CHECK_FALSE(parseIntrospectForm(
        formRequest(post("application/x-www-form-urlencoded", "tokens=t")), scratch));
    CHECK_FALSE(parseIntrospectForm(
        formRequest(post("application/x-www-form-urlencoded", "token=")), scratch));
    CHECK_FALSE(parseIntrospectForm(
        formRequest(post("application/x-www-form-urlencoded", "token=%4")), scratch));
  }

  TEST_CASE("an active answer has SPEC 7's fields, JSON-escaped; the inactive one has one") {
    Introspection i;
    i.scopes = {"workspace:read", "template:read"};
    i.username = "m\"ia";
    i.sub = "aaaaaaaa-0000-4000-8000-000000000001";
    i.exp = 1800000000;
    i.iat = 1700000000;
    i.jti = "abcdefghij";
    i.clientId = "cli\nent";
    i.loginType = "token";
    i.allowList = {"workspace:aaaaaaaa-0000-4000-8000-000000000001", "*:*"};
    Json j = Json::parse(encodeIntrospection(i));
    CHECK(j == Json{{"active", true},
                    {"scope", "workspace:read template:read"},
                    {"username", "m\"ia"},
                    {"sub", "aaaaaaaa-0000-4000-8000-000000000001"},
                    {"token_type", "Bearer"},
                    {"exp", 1800000000},
                    {"iat", 1700000000},
                    {"jti", "abcdefghij"},
                    {"client_id", "cli\nent"},
                    {"login_type", "token"},
                    {"allow_list", {"workspace:aaaaaaaa-0000-4000-8000-000000000001", "*:*"}}});
    CHECK(Json::parse(kInactive) == Json{{"active", false}});
    Introspection empty;
    CHECK(Json::parse(encodeIntrospection(empty))["allow_list"] == Json::array());
  }
}

TEST_SUITE("TCP listen addresses") {
  TEST_CASE("ADDR:PORT parses; loopback is 127/8, ::1 and v4-mapped 127/8") {
    auto v4 = parseTcpAddress("127.0.0.1:8081");
    REQUIRE(v4);
    CHECK(isLoopback(*v4));
    CHECK(formatTcpAddress(*v4) == "127.0.0.1:8081");
    auto other127 = parseTcpAddress("127.1.2.3:1");
    REQUIRE(other127);
    CHECK(isLoopback(*other127));
    auto v6 = parseTcpAddress("[::1]:8081");
    REQUIRE(v6);
    CHECK(isLoopback(*v6));
    CHECK(formatTcpAddress(*v6) == "[::1]:8081");
    auto mapped = parseTcpAddress("[::ffff:127.0.0.1]:80");
    REQUIRE(mapped);
    CHECK(isLoopback(*mapped));
    auto mappedOther = parseTcpAddress("[::ffff:10.0.0.1]:80");
    REQUIRE(mappedOther);
    CHECK_FALSE(isLoopback(*mappedOther));
    for (const char* open : {"0.0.0.0:80", ":80", "[::]:80", "10.1.2.3:80", "128.0.0.1:80"}) {
      CAPTURE(open);
      auto a = parseTcpAddress(open);
      REQUIRE(a);
      CHECK_FALSE(isLoopback(*a));
    }
    for (const char* bad : {"8080", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:x",
                            "::1:80", "127.0.0.1:-1", "no.such.host.invalid:80"}) {
      CAPTURE(bad);
      CHECK_FALSE(parseTcpAddress(bad));
    }
  }

  TEST_CASE("listenTcp refuses an address that is not loopback unless allowed") {
    TcpAddress bound;
    auto refused = listenTcp("0.0.0.0:0", false, bound);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message ==
          "0.0.0.0:0 is not a loopback address; --http-listen-any allows it");
    auto any = listenTcp("0.0.0.0:0", true, bound);
    REQUIRE(any);
    auto lo = listenTcp("127.0.0.1:0", false, bound);
    REQUIRE(lo);
    CHECK(isLoopback(bound));
    CHECK(formatTcpAddress(bound) != "127.0.0.1:0");  // the kernel's port
  }
}
