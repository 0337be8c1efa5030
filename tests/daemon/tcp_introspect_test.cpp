// Integration tests of SPEC 7's TCP listeners (--http-listen, --metrics-listen) and of POST
// /v1/introspect (RFC 7662), on the built tokend; TOKEND_TEST_IO picks the backend.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"

using namespace tokend::test;
using tokend::UniqueFd;
using Json = nlohmann::json;

namespace {

// A port nobody listens on now (the kernel's pick, released).
int freePort() {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);
  return ntohs(a.sin_port);
}

UniqueFd connectTcp(int port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return UniqueFd();
  return fd;
}

std::vector<std::string> backendArgs(std::vector<std::string> extra) {
  const char* io = std::getenv("TOKEND_TEST_IO");
  std::vector<std::string> args = {"--io", io ? io : "auto", "--threads", "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

struct Answer {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// curl with `args`; "-s -D -" first, so the head comes before the body.
Answer curl(std::vector<std::string> args) {
  std::vector<std::string> argv = {"/usr/bin/curl", "-s", "-D", "-"};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult r = run(argv);
  Answer a;
  size_t end = r.out.find("\r\n\r\n");
  std::string head = r.out.substr(0, end);
  a.body = end == std::string::npos ? "" : r.out.substr(end + 4);
  if (head.size() > 12) a.status = std::atoi(head.c_str() + 9);
  size_t pos = head.find("\r\n");
  while (pos != std::string::npos && pos + 2 < head.size()) {
    size_t next = head.find("\r\n", pos + 2);
    std::string line =
        head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (char& c : name) c = static_cast<char>(tolower(c));
      a.headers[name] = line.substr(colon + 2);
    }
    pos = next;
  }
  return a;
}

std::string url(int port, const std::string& path) {
  return "http://127.0.0.1:" + std::to_string(port) + path;
}

// An introspection request over TCP: the caller's Authorization header (empty: none) and a form.
Answer introspect(int port, const std::string& authorization, const std::string& form,
                  std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"-X", "POST", url(port, "/v1/introspect")};
  if (!authorization.empty()) args.insert(args.end(), {"-H", "Authorization: " + authorization});
  args.insert(args.end(), extra.begin(), extra.end());
  args.insert(args.end(), {"--data-raw", form});
  return curl(args);
}

std::string base64(const std::string& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned v =
        (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
    for (int s = 18; s >= 0; s -= 6) out.push_back(k[(v >> s) & 63]);
  }
  if (i + 1 == in.size()) {
    unsigned v = (unsigned char)in[i] << 16;
    out += {k[v >> 18], k[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    unsigned v = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8;
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], '='};
  }
  return out;
}

// "Basic base64(id:secret)" for a whole token "id-secret".
std::string basicOf(const std::string& token) {
  return "Basic " + base64(token.substr(0, 10) + ":" + token.substr(11));
}

// A daemon with both TCP listeners, an owner, a member, a gateway service user and its tokens.
struct World {
  int http = freePort(), metrics = freePort();
  Daemon d;
  std::string ownerToken, memberToken, gatewayToken, narrow, expired, suspended, deleted;
  std::string memberId;
  explicit World(std::vector<std::string> extra = {})
      : d(backendArgs([&] {
          std::vector<std::string> a = {"--http-listen",     "127.0.0.1:" + std::to_string(http),
                                        "--metrics-listen",  "127.0.0.1:" + std::to_string(metrics),
                                        "--introspect-user", "gateway"};
          a.insert(a.end(), extra.begin(), extra.end());
          return a;
        }())) {
    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    memberId = d.ctlOk({"users", "create", "mia"});
    d.ctlOk({"users", "create", "gateway"});
    d.ctlOk({"users", "create", "sus"});
    ownerToken = d.ctlOk({"tokens", "create", "--user", "boss", "--name", "all"});
    memberToken = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "mine"});
    gatewayToken = d.ctlOk({"tokens", "create", "--user", "gateway", "--name", "apache"});
    narrow = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "narrow", "--scope",
                      "workspace:read", "--scope", "template:read", "--allow",
                      "workspace:aaaaaaaa-0000-4000-8000-000000000001"});
    expired = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "old"});
    d.ctlOk({"tokens", "remove", "old", "--user", "mia"});
    deleted = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "gone"});
    d.ctlOk({"tokens", "remove", "gone", "--user", "mia", "--delete"});
    suspended = d.ctlOk({"tokens", "create", "--user", "sus"});
    d.ctlOk({"users", "suspend", "sus"});
    // The TCP listeners open right after the socket: wait until they answer.
    REQUIRE(waitFor([&] { return curl({url(metrics, "/healthz")}).status == 200; }));
  }
};

}  // namespace

TEST_SUITE("TCP listeners") {
  TEST_CASE("--http-listen serves the same HTTP as the socket: verify, management API, health") {
    World w;
    Answer ok = curl({"-H", "Authorization: Bearer " + w.memberToken, url(w.http, "/v1/verify")});
    CHECK(ok.status == 200);
    CHECK(ok.headers["x-tokend-username"] == "mia");
    Answer bad = curl({"-H", "Authorization: Bearer " + w.expired, url(w.http, "/v1/verify")});
    CHECK(bad.status == 401);
    CHECK(bad.headers["x-tokend-reason"] == "expired");
    Answer me =
        curl({"-H", "Coder-Session-Token: " + w.memberToken, url(w.http, "/api/v2/users/me")});
    CHECK(me.status == 200);
    CHECK(Json::parse(me.body)["username"] == "mia");
    CHECK(curl({url(w.http, "/healthz")}).status == 200);
    CHECK(curl({url(w.http, "/readyz")}).status == 200);
    CHECK(curl({url(w.http, "/metrics")}).body.find("tokend_requests_total") != std::string::npos);
  }

  TEST_CASE("--metrics-listen serves /metrics, /healthz and /readyz and nothing else") {
    World w;
    CHECK(curl({url(w.metrics, "/healthz")}).body == "ok\n");
    Answer ready = curl({url(w.metrics, "/readyz")});
    CHECK(ready.status == 200);
    CHECK(ready.body == "ok\n");
    Answer m = curl({url(w.metrics, "/metrics")});
    CHECK(m.status == 200);
    CHECK(m.body.find("# TYPE tokend_requests_total counter") != std::string::npos);
    // A valid token opens nothing else there.
    for (const char* path :
         {"/v1/verify", "/v1/introspect", "/api/v2/users/me", "/", "/metricsx"}) {
      CAPTURE(path);
      Answer a = curl({"-H", "Authorization: Bearer " + w.ownerToken, url(w.metrics, path)});
      CHECK(a.status == 404);
      CHECK(a.headers.count("x-tokend-user-id") == 0);
    }
    Answer post = curl({"-H", "Authorization: Bearer " + w.ownerToken, "-d",
                        "token=" + w.memberToken, url(w.metrics, "/v1/introspect")});
    CHECK(post.status == 404);
    CHECK(post.body.find("active") == std::string::npos);
  }

  TEST_CASE("TCP listeners speak HTTP only: the text and binary protocols are refused") {
    World w;
    for (int port : {w.http, w.metrics}) {
      CAPTURE(port);
      UniqueFd text = connectTcp(port);
      REQUIRE(text);
      sendAll(text.get(), "VERIFY " + w.ownerToken + "\n");
      bool closed = false;
      CHECK(readUntilClosed(text.get(), 3000, &closed) ==
            "ERR only HTTP is served on TCP listeners\n");
      CHECK(closed);

      // The segment hand-over needs peer credentials: SHM_ATTACH (or anything binary) is refused
      // before it is read, and no descriptor comes back.
      UniqueFd bin = connectTcp(port);
      REQUIRE(bin);
      std::string frame;
      tokend::daemon::encodeShmAttach(frame, 9);
      sendAll(bin.get(), frame);
      std::string got = readUntilClosed(bin.get(), 3000, &closed);
      CHECK(got == "ERR only HTTP is served on TCP listeners\n");
      CHECK(closed);
    }
    // The socket still speaks all three.
    CHECK(w.d.text("VERIFY " + w.ownerToken).rfind("OK ", 0) == 0);
  }

  TEST_CASE("--http-listen takes loopback addresses only, unless --http-listen-any") {
    TempDir dir;
    int port = freePort();
    RunResult r = run({programPath("TOKEND"), "--data-dir", dir / "data", "--http-listen",
                       "0.0.0.0:" + std::to_string(port)});
    CHECK(r.status == 1);
    CHECK(r.err.find("0.0.0.0:" + std::to_string(port) +
                     " is not a loopback address; --http-listen-any allows it") !=
          std::string::npos);
    RunResult junk =
        run({programPath("TOKEND"), "--data-dir", dir / "data", "--http-listen", "8080"});
    CHECK(junk.status == 1);
    CHECK(junk.err.find("no port") != std::string::npos);

    Daemon any(
        backendArgs({"--http-listen", "0.0.0.0:" + std::to_string(port), "--http-listen-any"}));
    CHECK(waitFor([&] { return curl({url(port, "/healthz")}).status == 200; }));
    // --metrics-listen takes any address without a flag (it holds no secret).
    int mport = freePort();
    Daemon metrics(backendArgs({"--metrics-listen", "0.0.0.0:" + std::to_string(mport)}));
    CHECK(waitFor([&] { return curl({url(mport, "/metrics")}).status == 200; }));
  }

  TEST_CASE("TOKEND_HTTP_LISTEN, TOKEND_METRICS_LISTEN and TOKEND_INTROSPECT_USER are read") {
    int http = freePort(), metrics = freePort();
    Daemon d(backendArgs({}), {{"TOKEND_HTTP_LISTEN", "127.0.0.1:" + std::to_string(http)},
                               {"TOKEND_METRICS_LISTEN", "[::1]:" + std::to_string(metrics)},
                               {"TOKEND_INTROSPECT_USER", "svc,other"}});
    d.ctlOk({"users", "create", "svc"});
    std::string svc = d.ctlOk({"tokens", "create", "--user", "svc"});
    REQUIRE(waitFor([&] { return curl({url(http, "/healthz")}).status == 200; }));
    Answer a = introspect(http, "Bearer " + svc, "token=" + d.adminToken());
    CHECK(a.status == 200);
    CHECK(Json::parse(a.body)["username"] == "admin");
    Answer m = curl({"-g", "http://[::1]:" + std::to_string(metrics) + "/readyz"});
    CHECK(m.status == 200);
  }
}

TEST_SUITE("Introspection") {
  TEST_CASE("a valid token: active, with every field of SPEC 7") {
    World w;
    Answer a = introspect(w.http, "Bearer " + w.gatewayToken, "token=" + w.narrow);
    REQUIRE(a.status == 200);
    CHECK(a.headers["content-type"] == "application/json");
    CHECK(a.headers["cache-control"] == "no-store");
    Json j = Json::parse(a.body);
    CHECK(j["active"] == true);
    CHECK(j["scope"] == "template:read workspace:read");
    CHECK(j["username"] == "mia");
    CHECK(j["sub"] == w.memberId);
    CHECK(j["token_type"] == "Bearer");
    CHECK(j["jti"] == w.narrow.substr(0, 10));
    CHECK(j["client_id"] == "narrow");
    CHECK(j["login_type"] == "token");
    CHECK(j["allow_list"] == Json::array({"workspace:aaaaaaaa-0000-4000-8000-000000000001"}));
    // iat and exp agree with what the management API says of the token.
    Answer view = curl({"-H", "Coder-Session-Token: " + w.ownerToken,
                        url(w.http, "/api/v2/users/mia/keys/" + w.narrow.substr(0, 10))});
    REQUIRE(view.status == 200);
    CHECK(j["exp"].get<int64_t>() > j["iat"].get<int64_t>());
    CHECK(j["iat"].get<int64_t>() > 1700000000);
    CHECK(j.size() == 11);
    // A session token says its login type.
    std::string session =
        w.d.ctlOk({"sessions", "create", "--user", "mia", "--login-type", "oidc"});
    Json s = Json::parse(introspect(w.http, "Bearer " + w.ownerToken, "token=" + session).body);
    CHECK(s["active"] == true);
    CHECK(s["login_type"] == "oidc");
  }

  TEST_CASE("every token that is not valid is {\"active\":false} and nothing more") {
    World w;
    std::string badSecret = w.memberToken.substr(0, 11) + "0123456789012345678901";
    for (const std::string& t :
         {std::string("not-a-token"), std::string("AAAAAAAAAA-0123456789012345678901"), badSecret,
          w.expired, w.deleted, w.suspended, std::string(" ")}) {
      CAPTURE(t);
      Answer a = introspect(w.http, "Bearer " + w.gatewayToken, "token=" + t);
      CHECK(a.status == 200);
      CHECK(a.body == R"({"active":false})");
    }
    // Each counts in the request metrics by the introspected token's reason.
    std::string metrics = curl({url(w.metrics, "/metrics")}).body;
    CHECK(metrics.find("tokend_requests_total{protocol=\"http\",reason=\"expired\"} 1\n") !=
          std::string::npos);
    CHECK(metrics.find("tokend_requests_total{protocol=\"http\",reason=\"user_inactive\"} 1\n") !=
          std::string::npos);
    // Revoked while cached: inactive at once (the cache entry goes with the change).
    CHECK(Json::parse(introspect(w.http, "Bearer " + w.gatewayToken, "token=" + w.memberToken)
                          .body)["active"] == true);
    w.d.ctlOk({"tokens", "remove", "mine", "--user", "mia"});
    CHECK(waitFor(
        [&] {
          return introspect(w.http, "Bearer " + w.gatewayToken, "token=" + w.memberToken).body ==
                 R"({"active":false})";
        },
        std::chrono::seconds(2)));
  }

  TEST_CASE("the caller authenticates with Bearer or Basic (id and secret), else 401") {
    World w;
    // HTTP Basic: the token's id as client id, its secret as client secret (mod_oauth2's
    // client_secret_basic), also over the Unix socket.
    Answer basic = introspect(w.http, basicOf(w.gatewayToken), "token=" + w.memberToken);
    CHECK(basic.status == 200);
    CHECK(Json::parse(basic.body)["active"] == true);
    Answer viaCurl = curl({"-u", w.gatewayToken.substr(0, 10) + ":" + w.gatewayToken.substr(11),
                           "-d", "token=" + w.memberToken, "--unix-socket", w.d.socket(),
                           "http://tokend/v1/introspect"});
    CHECK(viaCurl.status == 200);

    Answer none = introspect(w.http, "", "token=" + w.memberToken);
    CHECK(none.status == 401);
    CHECK(none.headers["www-authenticate"] == R"(Basic realm="tokend", Bearer realm="tokend")");
    CHECK(Json::parse(none.body)["error"] == "invalid_client");
    CHECK(none.body.find("active") == std::string::npos);

    std::string wrongSecret = w.gatewayToken.substr(0, 11) + "0123456789012345678901";
    Answer badBasic = introspect(w.http, basicOf(wrongSecret), "token=" + w.memberToken);
    CHECK(badBasic.status == 401);
    CHECK(badBasic.headers["www-authenticate"] == R"(Basic realm="tokend")");
    Answer badBearer = introspect(w.http, "Bearer " + w.expired, "token=" + w.memberToken);
    CHECK(badBearer.status == 401);
    CHECK(badBearer.headers["www-authenticate"] ==
          R"(Bearer realm="tokend", error="invalid_token")");
    CHECK(Json::parse(badBearer.body)["error"] == "invalid_token");
    Answer garbage = introspect(w.http, "Basic !!!", "token=" + w.memberToken);
    CHECK(garbage.status == 401);
    Answer other = introspect(w.http, "Digest x", "token=" + w.memberToken);
    CHECK(other.status == 401);
    // The token to introspect is no credential: a request with only it is still refused.
    Answer selfOnly = curl({"-d", "token=" + w.ownerToken, url(w.http, "/v1/introspect")});
    CHECK(selfOnly.status == 401);
  }

  TEST_CASE("only owners and --introspect-user users may introspect, others get 403") {
    World w;
    Answer member = introspect(w.http, "Bearer " + w.memberToken, "token=" + w.memberToken);
    CHECK(member.status == 403);
    CHECK(Json::parse(member.body)["error"] == "access_denied");
    CHECK(member.body.find("\"active\"") == std::string::npos);
    CHECK(member.headers["www-authenticate"] ==
          R"(Bearer realm="tokend", error="insufficient_scope")");
    Answer memberBasic = introspect(w.http, basicOf(w.memberToken), "token=" + w.ownerToken);
    CHECK(memberBasic.status == 403);
    Answer owner = introspect(w.http, "Bearer " + w.ownerToken, "token=" + w.memberToken);
    CHECK(owner.status == 200);
    Answer gateway = introspect(w.http, "Bearer " + w.gatewayToken, "token=" + w.memberToken);
    CHECK(gateway.status == 200);
    // A suspended gateway user's token no longer authenticates.
    w.d.ctlOk({"users", "suspend", "gateway"});
    CHECK(waitFor(
        [&] {
          return introspect(w.http, "Bearer " + w.gatewayToken, "token=" + w.memberToken).status ==
                 401;
        },
        std::chrono::seconds(2)));
  }

  TEST_CASE("the form: percent-decoded, token_type_hint ignored, errors are 400, POST only") {
    World w;
    std::string encoded = w.memberToken;
    encoded.replace(10, 1, "%2D");  // the '-' percent-encoded
    Answer a = introspect(w.http, "Bearer " + w.ownerToken,
                          "token_type_hint=access_token&token=" + encoded);
    CHECK(Json::parse(a.body)["active"] == true);
    Answer hint = introspect(w.http, "Bearer " + w.ownerToken,
                             "token=" + w.memberToken + "&token_type_hint=refresh_token");
    CHECK(Json::parse(hint.body)["active"] == true);

    Answer missing = introspect(w.http, "Bearer " + w.ownerToken, "token_type_hint=access_token");
    CHECK(missing.status == 400);
    CHECK(Json::parse(missing.body)["error"] == "invalid_request");
    Answer badEscape = introspect(w.http, "Bearer " + w.ownerToken, "token=%zz");
    CHECK(badEscape.status == 400);
    Answer json = introspect(w.http, "Bearer " + w.ownerToken, "{\"token\":\"x\"}",
                             {"-H", "Content-Type: application/json"});
    CHECK(json.status == 400);
    Answer get =
        curl({"-H", "Authorization: Bearer " + w.ownerToken, url(w.http, "/v1/introspect")});
    CHECK(get.status == 405);
    CHECK(get.headers["allow"] == "POST");
  }
}
