// Tests for --route-rules: the file's syntax and errors, matching, and forwarded requests shaped
// as Traefik's forwardAuth and Envoy's ext_authz send them.
#include "daemon/route_rules.h"

#include <doctest/doctest.h>

#include <deque>
#include <string>

#include "tests/support/alloc_counter.h"

using namespace tokend::daemon;
using tokend::verifier::Reason;

namespace {

constexpr std::string_view kRules =
    "# the routes of the example app\n"
    "GET,HEAD  /api/workspaces/{id}          workspace:read    workspace:{id}\n"
    "DELETE    /api/workspaces/{id}          workspace:delete  workspace:{id}\n"
    "POST      /api/workspaces               workspace:create\n"
    "*         /api/templates/*              template:read     # any method, any depth\n"
    "GET       /                             -\n"
    "\n"
    "GET       /api/users/{u}/keys/{k}       api_key:read      api_key:{k}\n";

RouteRules rules() {
  auto r = RouteRules::parse(kRules);
  REQUIRE(r);
  return std::move(*r);
}

std::string_view keep(std::string s) {
  static std::deque<std::string> kept;
  return kept.emplace_back(std::move(s));
}

HttpRequest parseWhole(std::string_view in) {
  HttpRequest r;
  HttpParse p = parseHttpRequest(in, r);
  REQUIRE(p.status == ParseStatus::Complete);
  return r;
}

// What Traefik's forwardAuth sends to `address: http://tokend/v1/verify` for a client's request
// (doc.traefik.io, middlewares/http/forwardauth: X-Forwarded-Method, -Proto, -Host, -Uri, -For).
std::string_view traefik(std::string_view method, std::string_view uri,
                         std::string_view extra = {}) {
  return keep(
      "GET /v1/verify HTTP/1.1\r\nHost: tokend\r\nUser-Agent: Go-http-client/1.1\r\n"
      "Authorization: Bearer abcdefghij-0123456789abcdefghijkl\r\n"
      "X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Host: app.example\r\n"
      "X-Forwarded-Method: " +
      std::string(method) + "\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Uri: " + std::string(uri) +
      "\r\n" + std::string(extra) + "Accept-Encoding: gzip\r\n\r\n");
}

std::string parseError(std::string_view text) {
  auto r = RouteRules::parse(text, "routes.conf");
  REQUIRE_FALSE(r);
  return r.error().message;
}

}  // namespace

TEST_SUITE("RouteRules") {
  TEST_CASE("a rules file parses: comments, blank lines, method lists, captures, '*'") {
    RouteRules r = rules();
    CHECK(r.size() == 6);
    RouteMatch m;
    REQUIRE(r.match("GET", "/api/workspaces/3f2504e0-4f89-41d3-9a0c-0305e82c3301", m));
    CHECK(m.permission == "workspace:read");
    CHECK(m.object == "workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    REQUIRE(r.match("HEAD", "/api/workspaces/x", m));
    CHECK(m.permission == "workspace:read");
    REQUIRE(r.match("DELETE", "/api/workspaces/x", m));
    CHECK(m.permission == "workspace:delete");
    CHECK(m.object == "workspace:x");
    REQUIRE(r.match("POST", "/api/workspaces", m));
    CHECK(m.permission == "workspace:create");
    CHECK(m.object.empty());
    REQUIRE(r.match("PATCH", "/api/templates/a/b/c", m));
    CHECK(m.permission == "template:read");
    REQUIRE(r.match("OPTIONS", "/api/templates", m));
    REQUIRE(r.match("GET", "/", m));
    CHECK(m.permission.empty());  // '-': authentication only
    REQUIRE(r.match("GET", "/api/users/u1/keys/k1", m));
    CHECK(m.object == "api_key:k1");
  }

  TEST_CASE("what matches no rule") {
    RouteRules r = rules();
    RouteMatch m;
    CHECK_FALSE(r.match("PUT", "/api/workspaces/x", m));        // method not listed
    CHECK_FALSE(r.match("get", "/api/workspaces/x", m));        // methods are case-sensitive
    CHECK_FALSE(r.match("GET", "/api/workspaces/", m));         // a capture is never empty
    CHECK_FALSE(r.match("GET", "/api/workspaces/x/y", m));      // one segment per capture
    CHECK_FALSE(r.match("GET", "/api/workspaces", m));          // POST only
    CHECK_FALSE(r.match("GET", "/api/Workspaces/x", m));        // literals compare exactly
    CHECK_FALSE(r.match("GET", "/api/templatesx", m));          // '*' starts a segment
    CHECK_FALSE(r.match("GET", "/api/templates/../admin", m));  // dot segments match nothing
    CHECK_FALSE(r.match("GET", "/api/templates/%2e%2E/admin", m));
    CHECK_FALSE(r.match("GET", "/api/workspaces/.", m));
    CHECK_FALSE(r.match("GET", "api/workspaces/x", m));
    CHECK_FALSE(r.match("", "/api/workspaces/x", m));
    CHECK(r.match("GET", "/api/templates/..x", m));  // not a dot segment
  }

  TEST_CASE("the first matching rule wins") {
    auto r = RouteRules::parse(
        "GET /api/workspaces/mine workspace:read\nGET /api/workspaces/{id} system:read\n");
    REQUIRE(r);
    RouteMatch m;
    REQUIRE(r->match("GET", "/api/workspaces/mine", m));
    CHECK(m.permission == "workspace:read");
    REQUIRE(r->match("GET", "/api/workspaces/other", m));
    CHECK(m.permission == "system:read");
  }

  TEST_CASE("a bad rules file is refused with the line and what is wrong") {
    CHECK(parseError("GET /a workspace:read\n\nGET /b\n") ==
          "routes.conf line 3: want METHOD PATH-PATTERN PERMISSION [OBJECT-TEMPLATE], got 2 words");
    CHECK(parseError("GET /a workspace:fly\n") ==
          "routes.conf line 1: unknown permission \"workspace:fly\"");
    CHECK(parseError("GET a workspace:read\n") ==
          "routes.conf line 1: path pattern \"a\" must start with '/'");
    CHECK(parseError("G(T /a workspace:read\n") == "routes.conf line 1: malformed method \"G(T\"");
    CHECK(parseError("GET /a/*/b workspace:read\n") ==
          "routes.conf line 1: path pattern \"/a/*/b\": '*' must be last");
    CHECK(parseError("GET /a//b workspace:read\n") ==
          "routes.conf line 1: path pattern \"/a//b\": empty segment");
    CHECK(parseError("GET /a/{id}/{id} workspace:read\n") ==
          "routes.conf line 1: capture \"{id}\" twice");
    CHECK(parseError("GET /a/x{id} workspace:read\n") ==
          "routes.conf line 1: segment \"x{id}\": a capture is a whole segment, '*' the last one");
    CHECK(parseError("GET /a/{id} workspace:read workspace:{other}\n") ==
          "routes.conf line 1: object template \"workspace:{other}\": no capture {other} in "
          "\"/a/{id}\"");
    CHECK(parseError("GET /a/{id} workspace:read spaceship:{id}\n") ==
          "routes.conf line 1: object template \"spaceship:{id}\" must start with a resource type "
          "and ':'");
    CHECK(parseError("GET /a/.. workspace:read\n") ==
          "routes.conf line 1: path pattern \"/a/..\": '.' and '..' match nothing");
    CHECK(parseError("GET /a?b workspace:read\n").find("line 1: path pattern") !=
          std::string::npos);
    CHECK(parseError("GET /a workspace:read workspace:* extra\n").find("got more than 4 words") !=
          std::string::npos);
    CHECK(RouteRules::parse("# only comments\n\n   \n"));
    CHECK(RouteRules::parse("# only comments\n")->empty());
  }

  TEST_CASE("a file that cannot be read is an error naming it") {
    auto r = RouteRules::load("/nonexistent/routes.conf");
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "/nonexistent/routes.conf: No such file or directory");
  }

  TEST_CASE("an object template too long for the match buffer is flagged, not cut") {
    auto r = RouteRules::parse("GET /w/{id} workspace:read workspace:{id}\n");
    REQUIRE(r);
    RouteMatch m;
    std::string longId(kMaxRouteObject, 'a');
    REQUIRE(r->match("GET", "/w/" + longId, m));
    CHECK(m.objectTooLong);
  }
}

TEST_SUITE("ForwardedRequests") {
  TEST_CASE("Traefik forwardAuth: X-Forwarded-Method and -Uri choose the rule") {
    RouteRules r = rules();
    DecodeBuffer buf;
    RouteMatch m;
    HttpRequest req = parseWhole(
        traefik("DELETE", "/api/workspaces/3f2504e0-4f89-41d3-9a0c-0305e82c3301?force=true"));
    auto q = extractVerifyQuery(req, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(r, req, *q, m) == RouteOutcome::Matched);
    CHECK(q->token == "abcdefghij-0123456789abcdefghijkl");
    CHECK(q->permission == "workspace:delete");
    CHECK(q->object == "workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    CHECK(q->owner.empty());  // a rule never supplies the owner

    HttpRequest get = parseWhole(traefik("GET", "/api/workspaces/7"));
    q = extractVerifyQuery(get, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(r, get, *q, m) == RouteOutcome::Matched);
    CHECK(q->permission == "workspace:read");

    HttpRequest none = parseWhole(traefik("PUT", "/api/workspaces/7"));
    q = extractVerifyQuery(none, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(r, none, *q, m) == RouteOutcome::NoRule);
  }

  TEST_CASE("headers the gateway sets win over the rules") {
    RouteRules r = rules();
    DecodeBuffer buf;
    RouteMatch m;
    HttpRequest req =
        parseWhole(traefik("DELETE", "/api/workspaces/7",
                           "X-Tokend-Permission: workspace:read\r\n"
                           "X-Tokend-Owner: 3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n"));
    auto q = extractVerifyQuery(req, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(r, req, *q, m) == RouteOutcome::NotApplied);
    CHECK(q->permission == "workspace:read");
    CHECK(q->object.empty());
    CHECK(q->owner == "3f2504e0-4f89-41d3-9a0c-0305e82c3301");

    // A header for the object only: the rule gives the permission, the header's object stays.
    HttpRequest obj =
        parseWhole(traefik("DELETE", "/api/workspaces/7", "X-Tokend-Object: workspace:8\r\n"));
    q = extractVerifyQuery(obj, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(r, obj, *q, m) == RouteOutcome::Matched);
    CHECK(q->permission == "workspace:delete");
    CHECK(q->object == "workspace:8");
    // So do headers set for a route with no rule: the gateway said what it needs.
    HttpRequest unruled =
        parseWhole(traefik("PUT", "/api/elsewhere", "X-Tokend-Permission: template:read\r\n"));
    q = extractVerifyQuery(unruled, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(r, unruled, *q, m) == RouteOutcome::NotApplied);
  }

  TEST_CASE("Envoy ext_authz: the client's method and the path below /v1/verify") {
    RouteRules r = rules();
    DecodeBuffer buf;
    RouteMatch m;
    // ext_authz HTTP service, path_prefix /v1/verify: Host, method, path_prefix + path,
    // Content-Length: 0, Authorization, and the allowed_headers.
    HttpRequest req = parseWhole(
        keep("DELETE /v1/verify/api/workspaces/7?perm=system:read HTTP/1.1\r\nhost: app.example\r\n"
             "authorization: Bearer abcdefghij-0123456789abcdefghijkl\r\n"
             "x-forwarded-proto: https\r\nx-request-id: 1b2c\r\ncontent-length: 0\r\n\r\n"));
    auto q = extractVerifyQuery(req, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(r, req, *q, m) == RouteOutcome::Matched);
    CHECK(q->permission == "workspace:delete");  // the client's ?perm= is not read
    CHECK(q->object == "workspace:7");
  }

  TEST_CASE("no rules, or no forwarded request: nothing changes") {
    DecodeBuffer buf;
    RouteMatch m;
    HttpRequest req = parseWhole(traefik("DELETE", "/api/workspaces/7"));
    auto q = extractVerifyQuery(req, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(RouteRules(), req, *q, m) == RouteOutcome::NotApplied);
    CHECK(q->permission.empty());
    HttpRequest plain = parseWhole(keep("GET /v1/verify?perm=workspace:read HTTP/1.1\r\n\r\n"));
    q = extractVerifyQuery(plain, buf);
    REQUIRE(q);
    CHECK(applyRouteRules(rules(), plain, *q, m) == RouteOutcome::NotApplied);
    CHECK(q->permission == "workspace:read");
  }

  TEST_CASE("parsing, extracting and applying rules allocate nothing") {
    RouteRules r = rules();
    std::string_view in =
        traefik("GET", "/api/users/3f2504e0-4f89-41d3-9a0c-0305e82c3301/keys/abcdefghij");
    HttpRequest req;
    DecodeBuffer buf;
    RouteMatch m;
    std::string out;
    out.reserve(4096);
    bool ok = true;
    long before = tokend::test::allocations();
    for (int i = 0; i < 100; ++i) {
      out.clear();
      buf.reset();
      HttpParse p = parseHttpRequest(in, req);
      auto q = extractVerifyQuery(req, buf);
      ok = ok && p.status == ParseStatus::Complete && q &&
           applyRouteRules(r, req, *q, m) == RouteOutcome::Matched &&
           q->object == "api_key:abcdefghij";
      VerifyAnswer a;
      a.reason = Reason::Ok;
      a.owned = i % 2;
      appendVerifyResponse(out, a, req.keepAlive);
      appendNoRuleResponse(out, req.keepAlive);
    }
    long after = tokend::test::allocations();
    CHECK(ok);
    CHECK(after == before);
  }
}
