// Forward-auth gateways against the built tokend: /v1/verify on any method and path (Envoy's
// ext_authz), requests shaped as Traefik's forwardAuth sends them with --route-rules, gateway
// headers over the query, and owned grants marked in every protocol (SPEC 6, 7).
//
// Neither Envoy nor Traefik is in Debian: the requests are built as their documentation says they
// send them (docs/gateways/envoy.md, traefik.md).
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"

using namespace tokend::test;
using tokend::UniqueFd;
namespace bp = tokend::daemon;

namespace {

const char* kWs = "workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301";

struct Answer {
  int status = 0;
  std::string head;  // status line and fields, CRLF-separated
  std::string body;
  std::string field(const std::string& name) const {
    size_t at = head.find("\r\n" + name + ": ");
    if (at == std::string::npos) return "";
    at += name.size() + 4;
    return head.substr(at, head.find("\r\n", at) - at);
  }
};

// Splits a stream of answers, framed by Content-Length (HEAD answers: `headFlags` says which
// carry a Content-Length but no body).
std::vector<Answer> splitAnswers(std::string s, const std::vector<bool>& headFlags) {
  std::vector<Answer> out;
  for (size_t i = 0; !s.empty(); ++i) {
    size_t end = s.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    Answer a;
    a.head = s.substr(0, end + 2);
    a.status = std::atoi(a.head.c_str() + 9);
    size_t length = std::strtoul(a.field("Content-Length").c_str(), nullptr, 10);
    if (i < headFlags.size() && headFlags[i]) length = 0;
    REQUIRE(s.size() >= end + 4 + length);
    a.body = s.substr(end + 4, length);
    s.erase(0, end + 4 + length);
    out.push_back(a);
  }
  return out;
}

// Sends `requests` on one connection and reads every answer until tokend closes (the last request
// says Connection: close).
std::vector<Answer> converse(const Daemon& d, const std::string& requests,
                             const std::vector<bool>& headFlags = {}) {
  UniqueFd fd = connectUnix(d.socket());
  REQUIRE(fd.get() >= 0);
  REQUIRE(sendAll(fd.get(), requests));
  bool closed = false;
  std::string all = readUntilClosed(fd.get(), 5000, &closed);
  CHECK(closed);
  return splitAnswers(all, headFlags);
}

Answer one(const Daemon& d, const std::string& request) {
  auto a = converse(d, request);
  REQUIRE(a.size() == 1);
  return a[0];
}

// Traefik's forwardAuth request for a client's `method uri` (doc.traefik.io, ForwardAuth:
// X-Forwarded-Method, -Proto, -Host, -Uri, -For; the client's Authorization copied).
std::string traefik(const std::string& token, const std::string& method, const std::string& uri,
                    const std::string& extra = "", bool close = true) {
  return "GET /v1/verify HTTP/1.1\r\nHost: tokend\r\nUser-Agent: Go-http-client/1.1\r\n"
         "Authorization: Bearer " +
         token + "\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Host: app.example\r\n" +
         "X-Forwarded-Method: " + method + "\r\nX-Forwarded-Proto: https\r\n" +
         "X-Forwarded-Uri: " + uri + "\r\n" + extra + "Accept-Encoding: gzip\r\n" +
         (close ? "Connection: close\r\n" : "") + "\r\n";
}

// Envoy's ext_authz HTTP service with path_prefix /v1/verify: the client's method, the prefix
// plus the client's path, Host, Content-Length: 0 and Authorization (plus allowed_headers).
std::string envoy(const std::string& token, const std::string& method, const std::string& path,
                  bool close = true) {
  return method + " /v1/verify" + path + " HTTP/1.1\r\nhost: app.example\r\n" +
         "authorization: Bearer " + token +
         "\r\nx-forwarded-proto: https\r\nx-request-id: 5d3c0e4a\r\ncontent-length: 0\r\n" +
         (close ? "connection: close\r\n" : "") + "\r\n";
}

struct World {
  TempDir files;
  std::string rules;
  Daemon d;
  std::string mia, member, boss;
  static std::string writeRules(const TempDir& dir) {
    std::string path = dir / "routes.conf";
    std::ofstream(path) << "# the example app\n"
                           "GET,HEAD /api/workspaces/{id}  workspace:read    workspace:{id}\n"
                           "DELETE   /api/workspaces/{id}  workspace:delete  workspace:{id}\n"
                           "*        /api/templates/*      template:read\n"
                           "GET      /api/me               -\n";
    return path;
  }
  explicit World(bool withRules = false)
      : rules(writeRules(files)),
        d(withRules ? std::vector<std::string>{"--threads", "2", "--route-rules", rules}
                    : std::vector<std::string>{"--threads", "2"}) {
    mia = d.ctlOk({"users", "create", "mia"});
    member = d.ctlOk({"tokens", "create", "--user", "mia"});
    boss = d.adminToken();
  }
};

}  // namespace

TEST_SUITE("ForwardAuth") {
  TEST_CASE("/v1/verify answers on every method Envoy may forward") {
    World w;
    for (const char* m : {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}) {
      CAPTURE(m);
      Answer a = one(w.d, envoy(w.boss, m, ""));
      CHECK(a.status == 200);
      CHECK(a.field("X-Tokend-Reason") == "ok");
      Answer bad = one(w.d, envoy("nope", m, ""));
      CHECK(bad.status == 401);
      CHECK(bad.field("X-Tokend-Reason") == "malformed");
    }
  }

  TEST_CASE("any path below /v1/verify is the verify endpoint; /v1/verifyx is not") {
    World w;
    Answer a = one(w.d, envoy(w.boss, "POST", "/api/workspaces/7?x=1"));
    CHECK(a.status == 200);
    CHECK(a.field("X-Tokend-Username") == "admin");
    CHECK(one(w.d, envoy(w.boss, "GET", "/")).status == 200);
    CHECK(one(w.d, "GET /v1/verifyx HTTP/1.1\r\nConnection: close\r\n\r\n").status == 404);
  }

  TEST_CASE("a body is read and ignored, HEAD has no body, and keep-alive framing holds") {
    World w;
    const std::string body = "{\"name\":\"ws\",\"template\":\"x\"}";
    std::string reqs =
        "POST /v1/verify/api/workspaces HTTP/1.1\r\nAuthorization: Bearer " + w.boss +
        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\n\r\n" + body + "HEAD /v1/verify HTTP/1.1\r\nAuthorization: Bearer " + w.boss +
        "\r\n\r\n" +
        "PUT /v1/verify/x HTTP/1.1\r\nAuthorization: Bearer nope\r\nContent-Length: 5\r\n\r\n"
        "GET /" +
        "GET /v1/verify HTTP/1.1\r\nAuthorization: Bearer " + w.boss +
        "\r\nConnection: close\r\n\r\n";
    auto a = converse(w.d, reqs, {false, true, false, false});
    REQUIRE(a.size() == 4);
    CHECK(a[0].status == 200);
    CHECK(a[1].status == 200);
    CHECK(a[1].field("X-Tokend-Reason") == "ok");
    CHECK(a[1].body.empty());
    CHECK(a[2].status == 401);
    CHECK(a[3].status == 200);
  }

  TEST_CASE("the gateway's headers win over the query") {
    World w;
    // A member's token may read her own workspaces, never the system.
    std::string q = "GET /v1/verify?perm=workspace:read&object=" + std::string(kWs) +
                    "&owner=" + w.mia + " HTTP/1.1\r\nCoder-Session-Token: " + w.member +
                    "\r\nX-Tokend-Permission: system:read\r\nConnection: close\r\n\r\n";
    Answer a = one(w.d, q);
    CHECK(a.status == 403);
    CHECK(a.field("X-Tokend-Reason") == "role");
    // The owner likewise: a query owner does not replace the gateway's.
    std::string o = "GET /v1/verify?perm=workspace:delete&object=" + std::string(kWs) +
                    "&owner=" + w.mia + " HTTP/1.1\r\nCoder-Session-Token: " + w.member +
                    "\r\nX-Tokend-Owner: 11111111-1111-4111-8111-111111111111\r\n"
                    "Connection: close\r\n\r\n";
    CHECK(one(w.d, o).status == 403);
  }

  TEST_CASE("Traefik forwardAuth with --route-rules: one middleware guards several routes") {
    World w(true);
    // The member reads a workspace (her role grants it owned only: no owner, so refused), the
    // owner deletes one, templates are readable by any member on any method.
    Answer read = one(w.d, traefik(w.member, "GET",
                                   "/api/workspaces/3f2504e0-4f89-41d3-9a0c-"
                                   "0305e82c3301?fields=all"));
    CHECK(read.status == 403);
    CHECK(read.field("X-Tokend-Reason") == "role");
    Answer del = one(w.d, traefik(w.boss, "DELETE", "/api/workspaces/7"));
    CHECK(del.status == 400);  // the rule's object "workspace:7" is not a workspace id
    Answer del2 = one(w.d, traefik(w.boss, "DELETE", "/api/workspaces/" + std::string(kWs + 10)));
    CHECK(del2.status == 200);
    CHECK(del2.field("X-Tokend-Grant") == "site");
    CHECK(one(w.d, traefik(w.member, "POST", "/api/templates/a/versions")).status == 200);
    CHECK(one(w.d, traefik(w.member, "GET", "/api/me")).status == 200);
    CHECK(one(w.d, traefik("nope", "GET", "/api/me")).status == 401);

    // No rule for this route: refused once authenticated, 401 first when not.
    Answer none = one(w.d, traefik(w.member, "PUT", "/api/workspaces/x"));
    CHECK(none.status == 403);
    CHECK(none.field("X-Tokend-Reason") == "no_rule");
    CHECK(none.field("WWW-Authenticate").find("insufficient_scope") != std::string::npos);
    Answer anon = one(w.d, traefik("", "PUT", "/api/workspaces/x"));
    CHECK(anon.status == 401);
    CHECK(anon.field("X-Tokend-Reason") == "missing");
    // Dot segments match no rule.
    CHECK(one(w.d, traefik(w.member, "GET", "/api/templates/../workspaces/x"))
              .field("X-Tokend-Reason") == "no_rule");

    // Headers the gateway sets win over the rules, and the owner comes only from them.
    Answer owned = one(w.d, traefik(w.member, "GET", "/api/workspaces/" + std::string(kWs + 10),
                                    "X-Tokend-Owner: " + w.mia + "\r\n"));
    CHECK(owned.status == 200);
    CHECK(owned.field("X-Tokend-Grant") == "owned");
    Answer hdr = one(
        w.d, traefik(w.member, "GET", "/api/templates/x", "X-Tokend-Permission: system:read\r\n"));
    CHECK(hdr.status == 403);
    CHECK(hdr.field("X-Tokend-Reason") == "role");

    // Envoy through the same rules: the method and path below /v1/verify.
    CHECK(one(w.d, envoy(w.member, "PATCH", "/api/templates/x")).status == 200);
    CHECK(one(w.d, envoy(w.member, "PATCH", "/api/other")).field("X-Tokend-Reason") == "no_rule");
    // nginx and Caddy style requests (no forwarded request) are untouched by the rules.
    CHECK(one(w.d, "GET /v1/verify HTTP/1.1\r\nCoder-Session-Token: " + w.member +
                       "\r\nConnection: close\r\n\r\n")
              .status == 200);
    // Pipelined forwardAuth requests on one keep-alive connection.
    auto many = converse(w.d, traefik(w.member, "GET", "/api/me", "", false) +
                                  traefik(w.member, "PUT", "/api/x", "", false) +
                                  traefik(w.member, "GET", "/api/templates"));
    REQUIRE(many.size() == 3);
    CHECK(many[0].status == 200);
    CHECK(many[1].status == 403);
    CHECK(many[2].status == 200);
  }

  TEST_CASE("a bad rules file stops tokend at start, naming the file and line") {
    TempDir dir;
    std::string path = dir / "routes.conf";
    std::ofstream(path) << "GET /a workspace:read\n# fine so far\nGET /b workspace:fly\n";
    const char* tokend = std::getenv("TOKEND");
    REQUIRE(tokend);
    RunResult r = run({tokend, "--data-dir", dir / "data", "--no-admin", "--route-rules", path});
    CHECK(r.status != 0);
    INFO(r.err);
    CHECK(r.err.find("Failed to load the route rules: " + path +
                     " line 3: unknown permission \"workspace:fly\"") != std::string::npos);
    RunResult missing =
        run({tokend, "--data-dir", dir / "data", "--no-admin", "--route-rules", dir / "nope"});
    CHECK(missing.status != 0);
    CHECK(missing.err.find("No such file or directory") != std::string::npos);
  }

  TEST_CASE("an owned grant is marked in HTTP, text and binary answers") {
    World w;
    // HTTP: owned on the member's word, site for the owner role, nothing on a denial.
    auto http = [&](const std::string& token, const std::string& owner) {
      return one(w.d, "GET /v1/verify HTTP/1.1\r\nCoder-Session-Token: " + token +
                          "\r\nX-Tokend-Permission: workspace:delete\r\nX-Tokend-Object: " + kWs +
                          "\r\n" + (owner.empty() ? "" : "X-Tokend-Owner: " + owner + "\r\n") +
                          "Connection: close\r\n\r\n");
    };
    Answer a = http(w.member, w.mia);
    CHECK(a.status == 200);
    CHECK(a.field("X-Tokend-Grant") == "owned");
    CHECK(http(w.boss, w.mia).field("X-Tokend-Grant") == "site");
    Answer denied = http(w.member, "");
    CHECK(denied.status == 403);
    CHECK(denied.field("X-Tokend-Grant").empty());

    // Text: the trailing word.
    std::string t = w.d.text("VERIFY " + w.member + " workspace:delete " + kWs + " " + w.mia);
    CHECK(t.rfind("OK ", 0) == 0);
    CHECK(t.size() > 6);
    CHECK(t.substr(t.size() - 6) == " owned");
    std::string s = w.d.text("VERIFY " + w.boss + " workspace:delete " + kWs + " " + w.mia);
    CHECK(s.rfind("OK ", 0) == 0);
    CHECK(s.find("owned") == std::string::npos);

    // Binary: HELLO asks for grant flags, the daemon offers them back, VERIFY_RESULT carries them.
    UniqueFd fd = connectUnix(w.d.socket());
    std::string out;
    bp::Hello hello;
    hello.features = bp::kFeatureGrantFlags;
    bp::encodeHello(out, 1, hello);
    REQUIRE(bp::encodeVerify(out, 2, {w.member, "workspace:delete", kWs, w.mia}));
    REQUIRE(bp::encodeVerify(out, 3, {w.boss, "workspace:delete", kWs, w.mia}));
    REQUIRE(sendAll(fd.get(), out));
    std::string in;
    auto next = [&]() {
      for (;;) {
        bp::FrameParse p = bp::parseFrame(in);
        if (p.status == bp::ParseStatus::Complete) {
          std::string frame = in.substr(0, p.consumed);
          in.erase(0, p.consumed);
          return frame;
        }
        REQUIRE(p.status == bp::ParseStatus::NeedMore);
        std::string more = readBytes(fd.get(), 1);
        REQUIRE_FALSE(more.empty());
        in += more;
      }
    };
    std::string hf = next();
    bp::FrameParse hp = bp::parseFrame(hf);
    REQUIRE(hp.frame.header.opcode == bp::Opcode::Hello);
    auto h = bp::decodeHello(hp.frame.payload);
    REQUIRE(h);
    CHECK((h->features & bp::kFeatureGrantFlags) != 0);
    std::string f1 = next(), f2 = next();
    auto r1 = bp::decodeVerifyResult(bp::parseFrame(f1).frame.payload, true);
    auto r2 = bp::decodeVerifyResult(bp::parseFrame(f2).frame.payload, true);
    REQUIRE(r1);
    REQUIRE(r2);
    CHECK(r1->answer.reason == tokend::verifier::Reason::Ok);
    CHECK(r1->answer.owned);
    CHECK(r2->answer.reason == tokend::verifier::Reason::Ok);
    CHECK_FALSE(r2->answer.owned);

    // A client that did not ask gets the 1.0 layout, which old decoders read.
    UniqueFd old = connectUnix(w.d.socket());
    std::string req;
    REQUIRE(bp::encodeVerify(req, 9, {w.member, "workspace:delete", kWs, w.mia}));
    REQUIRE(sendAll(old.get(), req));
    std::string got = readBytes(old.get(), bp::kFrameHeaderSize);
    while (bp::parseFrame(got).status == bp::ParseStatus::NeedMore) {
      std::string more = readBytes(old.get(), 1);
      REQUIRE_FALSE(more.empty());
      got += more;
    }
    auto r0 = bp::decodeVerifyResult(bp::parseFrame(got).frame.payload);
    REQUIRE(r0);
    CHECK(r0->answer.reason == tokend::verifier::Reason::Ok);
  }
}
