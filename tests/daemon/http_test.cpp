// Tests for the HTTP/1.1 parser, the token and query lookups, and the response writer.
#include "daemon/http.h"

#include <doctest/doctest.h>

#include "tests/support/alloc_counter.h"

#include <cstdlib>
#include <new>

#include <deque>
#include <string>
#include <vector>

#include "base/uuid.h"

using namespace tokend::daemon;
using tokend::Uuid;
using tokend::verifier::LoginType;
using tokend::verifier::Reason;

namespace {

struct Parsed {
  HttpParse parse;
  HttpRequest request;
};

Parsed parse(std::string_view in) {
  Parsed p;
  p.parse = parseHttpRequest(in, p.request);
  return p;
}

// Parses a request that must be complete and take all of `in`.
HttpRequest parseWhole(std::string_view in) {
  HttpRequest r;
  HttpParse p = parseHttpRequest(in, r);
  REQUIRE(p.status == ParseStatus::Complete);
  CHECK(p.consumed == in.size());
  return r;
}

int errorOf(std::string_view in) {
  HttpRequest r;
  HttpParse p = parseHttpRequest(in, r);
  if (p.status != ParseStatus::Error) return 0;
  return p.errorStatus;
}

// Keeps a test's input alive for the whole run: parsed requests are views into it.
std::string_view keep(std::string s) {
  static std::deque<std::string> kept;
  return kept.emplace_back(std::move(s));
}

std::string_view get(std::string_view target, std::string_view headers = {}) {
  return keep("GET " + std::string(target) + " HTTP/1.1\r\nHost: tokend\r\n" +
              std::string(headers) + "\r\n");
}

}  // namespace

TEST_SUITE("HttpParser") {
  TEST_CASE("a GET with headers and no body") {
    HttpRequest r = parseWhole(
        "GET /v1/verify?perm=workspace:read HTTP/1.1\r\nHost: x\r\nX-A:  spaced value \t\r\n\r\n");
    CHECK(r.method == "GET");
    CHECK(r.target == "/v1/verify?perm=workspace:read");
    CHECK(r.path == "/v1/verify");
    CHECK(r.query == "perm=workspace:read");
    CHECK(r.minorVersion == 1);
    CHECK(r.keepAlive);
    REQUIRE(r.headerCount == 2);
    CHECK(r.header("x-a") == "spaced value");
    CHECK(r.header("HOST") == "x");
    CHECK(r.header("missing").empty());
    CHECK(r.body.empty());
  }

  TEST_CASE("a path without a query has an empty query") {
    HttpRequest r = parseWhole(get("/healthz"));
    CHECK(r.path == "/healthz");
    CHECK(r.query.empty());
    HttpRequest q = parseWhole(get("/a?"));
    CHECK(q.path == "/a");
    CHECK(q.query.empty());
  }

  TEST_CASE("a POST body is read by Content-Length") {
    std::string in =
        "POST /api/v2/users/me/keys/tokens HTTP/1.1\r\nContent-Length: 17\r\n\r\n"
        "{\"token_name\":\"\"}";
    HttpRequest r = parseWhole(in);
    CHECK(r.method == "POST");
    CHECK(r.body == "{\"token_name\":\"\"}");
  }

  TEST_CASE("Content-Length of zero and leading zeros") {
    CHECK(parseWhole("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body.empty());
    CHECK(parseWhole("POST / HTTP/1.1\r\nContent-Length: 003\r\n\r\nabc").body == "abc");
  }

  TEST_CASE("bare LF ends lines too") {
    HttpRequest r = parseWhole("GET /x HTTP/1.1\nHost: h\nContent-Length: 2\n\nab");
    CHECK(r.header("host") == "h");
    CHECK(r.body == "ab");
  }

  TEST_CASE("empty lines before the request line are skipped") {
    HttpRequest r = parseWhole("\r\n\n\r\nGET / HTTP/1.1\r\n\r\n");
    CHECK(r.path == "/");
  }

  TEST_CASE("keep-alive rules of HTTP/1.1 and 1.0") {
    CHECK(parseWhole("GET / HTTP/1.1\r\n\r\n").keepAlive);
    CHECK_FALSE(parseWhole("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keepAlive);
    CHECK_FALSE(parseWhole("GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").keepAlive);
    CHECK_FALSE(
        parseWhole("GET / HTTP/1.1\r\nConnection: x\r\nConnection: close\r\n\r\n").keepAlive);
    CHECK_FALSE(parseWhole("GET / HTTP/1.0\r\n\r\n").keepAlive);
    CHECK(parseWhole("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keepAlive);
    CHECK(parseWhole("GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n").minorVersion == 0);
    CHECK_FALSE(parseWhole("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keepAlive);
  }

  TEST_CASE("malformed request lines are 400") {
    for (const char* in :
         {"GET\r\n\r\n", "GET /\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1 \r\n\r\n",
          "GET /  HTTP/1.1\r\n\r\n", "GET x HTTP/1.1\r\n\r\n", "GET * HTTP/1.1\r\n\r\n",
          "GET http://h/ HTTP/1.1\r\n\r\n", "G(T / HTTP/1.1\r\n\r\n", " GET / HTTP/1.1\r\n\r\n",
          "GET / HTTP/1\r\n\r\n", "GET / http/1.1\r\n\r\n", "GET / HTTP/1.10\r\n\r\n",
          "GET / HTTP/a.1\r\n\r\n", "GET /\x01 HTTP/1.1\r\n\r\n", "GET /\x80 HTTP/1.1\r\n\r\n",
          "GET /a\tb HTTP/1.1\r\n\r\n"}) {
      CAPTURE(in);
      CHECK(errorOf(in) == 400);
    }
  }

  TEST_CASE("other HTTP versions are 505") {
    for (const char* in :
         {"GET / HTTP/2.0\r\n\r\n", "GET / HTTP/1.2\r\n\r\n", "GET / HTTP/0.9\r\n\r\n"}) {
      CAPTURE(in);
      CHECK(errorOf(in) == 505);
    }
  }

  TEST_CASE("malformed header fields are 400") {
    for (const char* h : {"NoColon\r\n", "Bad Name: x\r\n", "Name : x\r\n", ": x\r\n",
                          "X-A: a\x01"
                          "b\r\n",
                          "X-A: a\x7f\r\n", "X-(: y\r\n"}) {
      CAPTURE(h);
      CHECK(errorOf(get("/", h)) == 400);
    }
  }

  TEST_CASE("obs-fold is refused") {
    CHECK(errorOf("GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n") == 400);
    CHECK(errorOf("GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n") == 400);
  }

  TEST_CASE("a bare CR is refused, a CR waiting for its LF is not") {
    CHECK(errorOf("GET / HTTP/1.1\rX: y\r\n\r\n") == 400);
    CHECK(errorOf("GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n") == 400);
    CHECK(errorOf("GET / HTTP/1.1\r\nX-A: a\r\r\n\r\n") == 400);
    CHECK(errorOf("GET / HTTP/1.1\r\n\r\r\n") == 400);
    CHECK(parse("GET / HTTP/1.1\r").parse.status == ParseStatus::NeedMore);
    CHECK(parse("GET / HTTP/1.1\r\n\r").parse.status == ParseStatus::NeedMore);
  }

  TEST_CASE("obs-text in values is kept") {
    HttpRequest r = parseWhole(get("/", "X-A: caf\xc3\xa9\r\n"));
    CHECK(r.header("X-A") == "caf\xc3\xa9");
  }

  TEST_CASE("Content-Length must be digits, once") {
    for (const char* h :
         {"Content-Length: -1\r\n", "Content-Length: +1\r\n", "Content-Length: 1 2\r\n",
          "Content-Length: 0x10\r\n", "Content-Length:\r\n", "Content-Length: 5, 5\r\n",
          "Content-Length: 1\r\nContent-Length: 1\r\n",
          "Content-Length: 1\r\ncontent-length: 2\r\n"}) {
      CAPTURE(h);
      CHECK(errorOf(get("/", h)) == 400);
    }
  }

  TEST_CASE("a body over 64 KiB is 413 before it arrives") {
    CHECK(errorOf(get("/", "Content-Length: 65537\r\n")) == 413);
    CHECK(errorOf(get("/", "Content-Length: 99999999999999999999999999999\r\n")) == 413);
    CHECK(errorOf(get("/", "Content-Length: 18446744073709551616\r\n")) == 413);
  }

  TEST_CASE("a body of exactly 64 KiB is accepted") {
    std::string in = "POST / HTTP/1.1\r\nContent-Length: 65536\r\n\r\n" + std::string(65536, 'x');
    CHECK(parseWhole(in).body.size() == kMaxHttpBody);
    CHECK(parse(std::string_view(in).substr(0, in.size() - 1)).parse.status ==
          ParseStatus::NeedMore);
  }

  TEST_CASE("Transfer-Encoding is 501, or 400 together with Content-Length") {
    CHECK(errorOf(get("/", "Transfer-Encoding: chunked\r\n")) == 501);
    CHECK(errorOf(get("/", "transfer-encoding: gzip, chunked\r\n")) == 501);
    CHECK(errorOf(get("/", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n")) == 400);
  }

  TEST_CASE("64 header fields are accepted, 65 are 431") {
    std::string fields;
    for (int i = 0; i < 63; ++i) fields += "X-" + std::to_string(i) + ": v\r\n";
    HttpRequest r = parseWhole(get("/", fields));  // Host is the 64th
    CHECK(r.headerCount == kMaxHttpHeaders);
    CHECK(errorOf(get("/", fields + "X-Last: v\r\n")) == 431);
  }

  TEST_CASE("a head of exactly 8 KiB is accepted, one byte more is 431") {
    std::string start = "GET / HTTP/1.1\r\nX-Pad: ";
    std::string end = "\r\n\r\n";
    std::string in = start + std::string(kMaxHttpHead - start.size() - end.size(), 'a') + end;
    REQUIRE(in.size() == kMaxHttpHead);
    CHECK(parseWhole(in).header("x-pad").size() > 8000);
    std::string over = start + std::string(kMaxHttpHead - start.size() - end.size() + 1, 'a') + end;
    CHECK(errorOf(over) == 431);
    // Without its end in sight, 431 comes as soon as 8 KiB are in.
    CHECK(errorOf(std::string_view(over).substr(0, kMaxHttpHead)) == 431);
    CHECK(parse(std::string_view(over).substr(0, kMaxHttpHead - 1)).parse.status ==
          ParseStatus::NeedMore);
  }

  TEST_CASE("a request line over 8 KiB is 414") {
    std::string in = "GET /" + std::string(kMaxHttpHead, 'a');
    CHECK(errorOf(in) == 414);
    CHECK(errorOf(in + " HTTP/1.1\r\n\r\n") == 414);
  }

  TEST_CASE("errors in complete lines are reported without waiting for the head") {
    CHECK(errorOf("FOO BAR\r\n") == 400);
    CHECK(errorOf("GET / HTTP/1.1\r\nbroken\r\n") == 400);
  }

  TEST_CASE("every split point yields NeedMore and then the same request") {
    std::string in =
        "POST /api/v2/users/me/keys HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n"
        "Content-Length: 5\r\n\r\nhello";
    for (size_t cut = 0; cut < in.size(); ++cut) {
      CAPTURE(cut);
      CHECK(parse(std::string_view(in).substr(0, cut)).parse.status == ParseStatus::NeedMore);
    }
    HttpRequest r = parseWhole(in);
    CHECK(r.body == "hello");
    CHECK(r.header("cookie") == "a=b");
  }

  TEST_CASE("pipelined requests are parsed in order") {
    std::string in(get("/one"));
    in += "POST /two HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    in += get("/three", "Connection: close\r\n");
    in += "GET /fo";
    std::string_view rest = in;
    std::vector<std::string> paths;
    HttpRequest r;
    for (;;) {
      HttpParse p = parseHttpRequest(rest, r);
      if (p.status != ParseStatus::Complete) {
        CHECK(p.status == ParseStatus::NeedMore);
        break;
      }
      paths.push_back(std::string(r.path) + (r.keepAlive ? "" : " close") +
                      (r.body.empty() ? "" : " " + std::string(r.body)));
      rest.remove_prefix(p.consumed);
    }
    CHECK(paths == std::vector<std::string>{"/one", "/two abc", "/three close"});
    CHECK(rest == "GET /fo");
  }

  TEST_CASE("a parse error answer is JSON and closes") {
    HttpRequest r;
    HttpParse p = parseHttpRequest(get("/", "Content-Length: 70000\r\n"), r);
    REQUIRE(p.status == ParseStatus::Error);
    std::string out;
    appendParseErrorResponse(out, p);
    CHECK(out ==
          "HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
          "Content-Length: 65\r\nConnection: close\r\n\r\n"
          "{\"message\":\"Content Too Large\",\"detail\":\"request body too large\"}");
  }
}

TEST_SUITE("HttpLookups") {
  TEST_CASE("percent-decoding of escapes and plus") {
    DecodeBuffer buf;
    CHECK(*percentDecode("plain", buf) == "plain");
    CHECK(buf.used() == 0);
    CHECK(*percentDecode("a%20b+c%2Bd%3a%3A", buf) == "a b c+d::");
    CHECK(*percentDecode("%41%62%7e", buf) == "Ab~");
    CHECK(*percentDecode("%00", buf) == std::string_view("\0", 1));
    for (const char* bad : {"%", "%4", "%zz", "%4g", "a%", "%%41"}) {
      CAPTURE(bad);
      CHECK_FALSE(percentDecode(bad, buf));
    }
  }

  TEST_CASE("decoded values stay valid until reset and the buffer refuses to overflow") {
    DecodeBuffer buf;
    std::string big(kMaxHttpHead / 2, '+');
    auto a = percentDecode(big, buf);
    auto b = percentDecode(big, buf);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->data() != b->data());
    CHECK(*a == std::string(kMaxHttpHead / 2, ' '));
    CHECK_FALSE(percentDecode("%41", buf));
    buf.reset();
    CHECK(*percentDecode("%41", buf) == "A");
  }

  TEST_CASE("query parameters: first match, exact names, empty and bare values") {
    DecodeBuffer buf;
    std::string_view q = "a=1&perm=workspace%3Aread&perm=other&flag&empty=&x=%2F";
    CHECK(*queryParam(q, "perm", buf) == "workspace:read");
    CHECK(*queryParam(q, "a", buf) == "1");
    CHECK(queryParam(q, "flag", buf)->empty());
    CHECK(queryParam(q, "empty", buf)->empty());
    CHECK(queryParam(q, "missing", buf)->empty());
    CHECK(queryParam(q, "PERM", buf)->empty());
    CHECK(queryParam(q, "per", buf)->empty());
    CHECK(*queryParam(q, "x", buf) == "/");
    CHECK(queryParam("", "a", buf)->empty());
    CHECK(*queryParam("&&a=2&", "a", buf) == "2");
    CHECK_FALSE(queryParam("a=%zz", "a", buf));
  }

  TEST_CASE("cookies over several Cookie fields, quotes removed") {
    HttpRequest r =
        parseWhole(get("/", "Cookie: a=1; b=2\r\nCookie: coder_session_token=\"tok\" ; c=3\r\n"));
    CHECK(cookieValue(r, "a") == "1");
    CHECK(cookieValue(r, "b") == "2");
    CHECK(cookieValue(r, "coder_session_token") == "tok");
    CHECK(cookieValue(r, "c") == "3");
    CHECK(cookieValue(r, "d").empty());
    CHECK(cookieValue(r, "A").empty());
  }

  TEST_CASE("the token comes from each of the five places") {
    DecodeBuffer buf;
    CHECK(*extractToken(parseWhole(get("/", "Cookie: coder_session_token=c1\r\n")), buf) == "c1");
    CHECK(*extractToken(parseWhole(get("/?coder_session_token=q1")), buf) == "q1");
    CHECK(*extractToken(parseWhole(get("/", "Coder-Session-Token: h1\r\n")), buf) == "h1");
    CHECK(*extractToken(parseWhole(get("/", "Authorization: Bearer b1\r\n")), buf) == "b1");
    CHECK(*extractToken(parseWhole(get("/?access_token=a1")), buf) == "a1");
    CHECK(extractToken(parseWhole(get("/")), buf)->empty());
  }

  TEST_CASE("an earlier place wins over every later one") {
    DecodeBuffer buf;
    const std::string all =
        "Cookie: coder_session_token=c1\r\nCoder-Session-Token: h1\r\n"
        "Authorization: Bearer b1\r\n";
    const std::string query = "/?access_token=a1&coder_session_token=q1";
    CHECK(*extractToken(parseWhole(get(query, all)), buf) == "c1");
    CHECK(*extractToken(
              parseWhole(get(query, "Coder-Session-Token: h1\r\nAuthorization: Bearer b1\r\n")),
              buf) == "q1");
    CHECK(*extractToken(parseWhole(get("/?access_token=a1",
                                       "Authorization: Bearer b1\r\nCoder-Session-Token: h1\r\n")),
                        buf) == "h1");
    CHECK(*extractToken(parseWhole(get("/?access_token=a1", "Authorization: Bearer b1\r\n")),
                        buf) == "b1");
  }

  TEST_CASE("empty values fall through to the next place") {
    DecodeBuffer buf;
    HttpRequest r = parseWhole(get(
        "/?coder_session_token=&access_token=a1",
        "Cookie: coder_session_token=\r\nCoder-Session-Token:\r\nAuthorization: Bearer   \r\n"));
    CHECK(*extractToken(r, buf) == "a1");
    CHECK(*extractToken(parseWhole(get("/",
                                       "Cookie: coder_session_token=\"\"\r\n"
                                       "Coder-Session-Token: h1\r\n")),
                        buf) == "h1");
  }

  TEST_CASE("the Bearer scheme is case-insensitive and other schemes are ignored") {
    DecodeBuffer buf;
    CHECK(*extractToken(parseWhole(get("/", "Authorization: bearer t1\r\n")), buf) == "t1");
    CHECK(*extractToken(parseWhole(get("/", "Authorization: BEARER  t2\r\n")), buf) == "t2");
    CHECK(extractToken(parseWhole(get("/", "Authorization: Basic dTpw\r\n")), buf)->empty());
    CHECK(extractToken(parseWhole(get("/", "Authorization: Bearer\r\n")), buf)->empty());
    CHECK(extractToken(parseWhole(get("/", "Authorization: Bearertok\r\n")), buf)->empty());
    CHECK(*extractToken(parseWhole(get("/?access_token=a", "Authorization: Basic x\r\n")), buf) ==
          "a");
  }

  TEST_CASE("a query token is percent-decoded, and bad encoding is an error") {
    DecodeBuffer buf;
    CHECK(*extractToken(parseWhole(get("/?coder_session_token=ab%2Dcd")), buf) == "ab-cd");
    CHECK_FALSE(extractToken(parseWhole(get("/?coder_session_token=%G0")), buf));
    // A bad encoding in a place that is never reached does not matter.
    CHECK(*extractToken(
              parseWhole(get("/?coder_session_token=%G0", "Cookie: coder_session_token=c\r\n")),
              buf) == "c");
  }

  TEST_CASE("verify query from the gateway's headers, else query parameters; headers win") {
    DecodeBuffer buf;
    HttpRequest r = parseWhole(
        get("/v1/verify?perm=workspace%3Aread&object=workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301"
            "&owner=11111111-1111-4111-8111-111111111111",
            "Authorization: Bearer tok\r\nX-Tokend-Permission: template:read\r\n"
            "X-Tokend-Owner: 3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n"));
    auto q = extractVerifyQuery(r, buf);
    REQUIRE(q);
    CHECK(q->token == "tok");
    // A client that gets its query through (L7) cannot pick the permission or the owner.
    CHECK(q->permission == "template:read");
    CHECK(q->owner == "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    // No header for the object: the query's.
    CHECK(q->object == "workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301");

    HttpRequest h = parseWhole(get("/v1/verify?perm=",
                                   "X-Tokend-Permission: template:read\r\n"
                                   "X-Tokend-Object: template:*\r\n"));
    auto hq = extractVerifyQuery(h, buf);
    REQUIRE(hq);
    CHECK(hq->token.empty());
    CHECK(hq->permission == "template:read");
    CHECK(hq->object == "template:*");
    CHECK(hq->owner.empty());

    CHECK_FALSE(extractVerifyQuery(parseWhole(get("/v1/verify?owner=%")), buf));
  }

  TEST_CASE("below /v1/verify the query is the client's: a token, never a permission") {
    DecodeBuffer buf;
    // Envoy's ext_authz appends the client's path and query to path_prefix /v1/verify.
    HttpRequest r = parseWhole(
        keep("DELETE /v1/verify/api/workspaces/x?perm=system:read&owner=3f2504e0-4f89-41d3-9a0c-"
             "0305e82c3301&object=workspace:*&coder_session_token=tok HTTP/1.1\r\n"
             "Host: app\r\nContent-Length: 0\r\n\r\n"));
    auto q = extractVerifyQuery(r, buf);
    REQUIRE(q);
    CHECK(q->token == "tok");
    CHECK(q->permission.empty());
    CHECK(q->object.empty());
    CHECK(q->owner.empty());
  }

  TEST_CASE("the verify endpoint is /v1/verify and every path below it") {
    CHECK(isVerifyPath("/v1/verify"));
    CHECK(isVerifyPath("/v1/verify/"));
    CHECK(isVerifyPath("/v1/verify/api/workspaces/1"));
    CHECK_FALSE(isVerifyPath("/v1/verifyx"));
    CHECK_FALSE(isVerifyPath("/v1/veri"));
    CHECK_FALSE(isVerifyPath("/v2/verify"));
  }

  TEST_CASE("the forwarded request: Traefik's X-Forwarded-*, else Envoy's path below /v1/verify") {
    std::string_view method, path;
    // Traefik's forwardAuth: a GET to the address, the client's request in X-Forwarded-*.
    HttpRequest t = parseWhole(get("/v1/verify",
                                   "X-Forwarded-Method: DELETE\r\nX-Forwarded-Proto: https\r\n"
                                   "X-Forwarded-Host: app.example\r\n"
                                   "X-Forwarded-Uri: /api/workspaces/7?force=1\r\n"
                                   "X-Forwarded-For: 10.0.0.1\r\n"));
    REQUIRE(forwardedRequest(t, method, path));
    CHECK(method == "DELETE");
    CHECK(path == "/api/workspaces/7");
    // Envoy: the client's method, path_prefix + the client's path.
    HttpRequest e = parseWhole(keep(
        "PUT /v1/verify/api/workspaces/7?x=1 HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n"));
    REQUIRE(forwardedRequest(e, method, path));
    CHECK(method == "PUT");
    CHECK(path == "/api/workspaces/7");
    // nginx auth_request, Caddy forward_auth: no forwarded request, only what they ask.
    CHECK_FALSE(forwardedRequest(parseWhole(get("/v1/verify?perm=workspace:read")), method, path));
  }
}

TEST_SUITE("HttpResponses") {
  TEST_CASE("an allowed verify answer carries the identity headers and no body") {
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.userId = *Uuid::parse("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    a.username = "alice";
    a.tokenId = "abcdefghij";
    a.loginType = LoginType::Password;
    a.expiresAt = 1700000000;
    std::string out;
    appendVerifyResponse(out, a, true);
    CHECK(out ==
          "HTTP/1.1 200 OK\r\n"
          "X-Tokend-Reason: ok\r\n"
          "X-Tokend-User-Id: 3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n"
          "X-Tokend-Username: alice\r\n"
          "X-Tokend-Token-Id: abcdefghij\r\n"
          "X-Tokend-Login-Type: password\r\n"
          "X-Tokend-Expires-At: 1700000000\r\n"
          "X-Tokend-Grant: site\r\n"
          "Cache-Control: no-store\r\n"
          "Content-Length: 0\r\n"
          "Connection: keep-alive\r\n\r\n");
  }

  TEST_CASE("a grant that rests on the caller's owner says X-Tokend-Grant: owned") {
    VerifyAnswer a;
    a.reason = Reason::Ok;
    a.username = "alice";
    a.tokenId = "abcdefghij";
    a.owned = true;
    std::string out;
    appendVerifyResponse(out, a, true);
    CHECK(out.find("\r\nX-Tokend-Grant: owned\r\n") != std::string::npos);
    CHECK(out.find("X-Tokend-Grant: site") == std::string::npos);
    // A denial carries no grant at all.
    a.reason = Reason::Role;
    out.clear();
    appendVerifyResponse(out, a, true);
    CHECK(out.find("X-Tokend-Grant") == std::string::npos);
  }

  TEST_CASE("no rule for a forwarded request: 403 no_rule, insufficient_scope, no body") {
    std::string out;
    appendNoRuleResponse(out, true);
    CHECK(out ==
          "HTTP/1.1 403 Forbidden\r\n"
          "X-Tokend-Reason: no_rule\r\n"
          "WWW-Authenticate: Bearer realm=\"tokend\", error=\"insufficient_scope\"\r\n"
          "Cache-Control: no-store\r\n"
          "Content-Length: 0\r\n"
          "Connection: keep-alive\r\n\r\n");
  }

  TEST_CASE("a 401 names invalid_token, a 403 insufficient_scope, a 400 neither") {
    VerifyAnswer a;
    std::string out;
    a.reason = Reason::Expired;
    appendVerifyResponse(out, a, true);
    CHECK(out ==
          "HTTP/1.1 401 Unauthorized\r\nX-Tokend-Reason: expired\r\n"
          "WWW-Authenticate: Bearer realm=\"tokend\", error=\"invalid_token\"\r\n"
          "Cache-Control: no-store\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
    out.clear();
    a.reason = Reason::AllowList;
    appendVerifyResponse(out, a, false);
    CHECK(out ==
          "HTTP/1.1 403 Forbidden\r\nX-Tokend-Reason: allow_list\r\n"
          "WWW-Authenticate: Bearer realm=\"tokend\", error=\"insufficient_scope\"\r\n"
          "Cache-Control: no-store\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    out.clear();
    a.reason = Reason::BadRequest;
    appendVerifyResponse(out, a, true);
    CHECK(out ==
          "HTTP/1.1 400 Bad Request\r\nX-Tokend-Reason: bad_request\r\n"
          "Cache-Control: no-store\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n");
  }

  TEST_CASE("a verify answer parses back as the status the reason maps to") {
    for (int i = 0; i < tokend::verifier::kReasonCount; ++i) {
      VerifyAnswer a;
      a.reason = static_cast<Reason>(i);
      std::string out;
      appendVerifyResponse(out, a, true);
      CAPTURE(out);
      CHECK(out.starts_with("HTTP/1.1 " + std::to_string(tokend::verifier::httpStatus(a.reason))));
      CHECK(out.find("X-Tokend-Reason: " + std::string(tokend::verifier::reasonName(a.reason))) !=
            std::string::npos);
    }
  }

  TEST_CASE("JSON responses and errors always carry Content-Length") {
    std::string out;
    appendJsonResponse(out, 200, true, "{\"ok\":true}");
    CHECK(out ==
          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
          "Connection: keep-alive\r\n\r\n{\"ok\":true}");
    out = "earlier|";
    appendJsonError(out, 404, true, "Not found", "no \"x\"\n\x01");
    std::string body = "{\"message\":\"Not found\",\"detail\":\"no \\\"x\\\"\\n\\u0001\"}";
    CHECK(out ==
          "earlier|HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
          "Content-Length: " +
              std::to_string(body.size()) + "\r\nConnection: keep-alive\r\n\r\n" + body);
  }

  TEST_CASE("header values cannot split a response") {
    std::string out;
    appendHeader(out, "X-A", "a\r\nSet-Cookie: x");
    CHECK(out == "X-A: a  Set-Cookie: x\r\n");
  }

  TEST_CASE("a custom response: status line, headers, body") {
    std::string out;
    appendStatusLine(out, 200);
    appendHeader(out, "X-Test", "1");
    appendBody(out, false, "text/plain; version=0.0.4", "up 1\n");
    CHECK(out ==
          "HTTP/1.1 200 OK\r\nX-Test: 1\r\nContent-Type: text/plain; version=0.0.4\r\n"
          "Content-Length: 5\r\nConnection: close\r\n\r\nup 1\n");
    CHECK(statusReason(431) == "Request Header Fields Too Large");
    CHECK(statusReason(599) == "Unknown");
  }

  TEST_CASE("parsing, extracting and answering allocate nothing once the output has room") {
    std::string_view in =
        get("/v1/verify?perm=workspace%3Aread&object=workspace:*",
            "Cookie: a=b; coder_session_token=abcdefghij-0123456789abcdefghijkl\r\n"
            "X-Tokend-Owner: 3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n");
    HttpRequest r;
    DecodeBuffer buf;
    std::string out;
    out.reserve(4096);
    bool ok = true;
    long before = tokend::test::allocations();
    for (int i = 0; i < 100; ++i) {
      out.clear();
      buf.reset();
      HttpParse p = parseHttpRequest(in, r);
      auto q = extractVerifyQuery(r, buf);
      ok = ok && p.status == ParseStatus::Complete && q && q->permission == "workspace:read";
      VerifyAnswer a;
      a.reason = i % 2 ? Reason::Ok : Reason::Scope;
      a.username = "alice";
      a.tokenId = q ? q->token.substr(0, 10) : std::string_view();
      appendVerifyResponse(out, a, r.keepAlive);
    }
    long after = tokend::test::allocations();
    CHECK(ok);
    CHECK(after == before);
    // The counter does count: growing a string past its capacity allocates.
    out.append(8192, 'x');
    CHECK(tokend::test::allocations() > after);
  }
}
