// Integration tests: the built tokend in a temporary directory, driven over its socket with each
// protocol, and changed underneath by tokenctl in another process. TOKEND_TEST_IO picks the
// backend (uring or epoll), so the same suite runs on both.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <thread>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"

using namespace tokend::test;
using tokend::UniqueFd;
using Json = nlohmann::json;

namespace {

const char* kA = "aaaaaaaa-0000-4000-8000-000000000001";
const char* kB = "bbbbbbbb-0000-4000-8000-000000000002";
std::string ws(const char* id) {
  return std::string("workspace:") + id;
}

std::vector<std::string> backendArgs(std::vector<std::string> extra = {}) {
  const char* io = std::getenv("TOKEND_TEST_IO");
  std::vector<std::string> args = {"--io", io ? io : "auto", "--threads", "2"};
  if (std::find(extra.begin(), extra.end(), "--writeback-interval-ms") == extra.end()) {
    args.insert(args.end(), {"--writeback-interval-ms", "50"});
  }
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

struct HttpAnswer {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

HttpAnswer curl(const Daemon& d, std::vector<std::string> args) {
  std::vector<std::string> argv = {"/usr/bin/curl", "-s", "-D", "-", "--unix-socket", d.socket()};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult r = run(argv);
  HttpAnswer a;
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

std::string verifyUrl(const std::string& query = "") {
  return "http://tokend/v1/verify" + query;
}

// A binary VERIFY round trip on a fresh connection.
tokend::daemon::VerifyResult binaryVerify(const Daemon& d, const tokend::daemon::VerifyQuery& q,
                                          std::string& storage) {
  UniqueFd fd = connectUnix(d.socket());
  std::string req;
  REQUIRE(tokend::daemon::encodeVerify(req, 7, q));
  sendAll(fd.get(), req);
  std::string head = readBytes(fd.get(), tokend::daemon::kFrameHeaderSize);
  auto p = tokend::daemon::parseFrame(head);
  size_t want = tokend::daemon::kFrameHeaderSize;
  if (head.size() >= 8)
    want += static_cast<uint32_t>(head[4] & 0xff) | (static_cast<uint32_t>(head[5] & 0xff) << 8);
  storage = head + readBytes(fd.get(), want - head.size());
  p = tokend::daemon::parseFrame(storage);
  REQUIRE(p.status == tokend::daemon::ParseStatus::Complete);
  REQUIRE(p.frame.header.opcode == tokend::daemon::Opcode::VerifyResult);
  CHECK(p.frame.header.requestId == 7);
  auto r = tokend::daemon::decodeVerifyResult(p.frame.payload);
  REQUIRE(r);
  return *r;
}

// The world every test starts from: an owner, a member, tokens of several kinds.
struct World {
  Daemon d;
  std::string memberId, ownerToken, memberToken, narrow, expired, suspendedToken;
  explicit World(std::vector<std::string> extra = {}, std::map<std::string, std::string> env = {})
      : d(backendArgs(extra), env) {
    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    memberId = d.ctlOk({"users", "create", "mia"});
    d.ctlOk({"users", "create", "sus"});
    ownerToken = d.ctlOk({"tokens", "create", "--user", "boss", "--name", "all"});
    memberToken = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "all"});
    narrow = d.ctlOk({"tokens", "create", "--user", "boss", "--name", "narrow", "--scope",
                      "workspace:read", "--allow", ws(kA)});
    expired = d.ctlOk({"tokens", "create", "--user", "boss", "--name", "old"});
    d.ctlOk({"tokens", "remove", "old", "--user", "boss"});
    suspendedToken = d.ctlOk({"tokens", "create", "--user", "sus"});
    d.ctlOk({"users", "suspend", "sus"});
  }
};

// Every reason of SPEC 6 as one request: token, permission, object, owner, expected reason.
struct Case {
  std::string token, perm, object, owner, reason;
};
std::vector<Case> everyReason(const World& w) {
  return {
      {w.ownerToken, "", "", "", "ok"},
      {"", "", "", "", "missing"},
      {"not-a-token", "", "", "", "malformed"},
      {"AAAAAAAAAA-0123456789012345678901", "", "", "", "unknown"},
      {w.ownerToken.substr(0, 11) + "0123456789012345678901", "", "", "", "bad_secret"},
      {w.expired, "", "", "", "expired"},
      {w.suspendedToken, "", "", "", "user_inactive"},
      {w.narrow, "template:read", "", "", "scope"},
      {w.narrow, "workspace:read", ws(kB), "", "allow_list"},
      {w.memberToken, "system:read", "", "", "role"},
      {w.ownerToken, "workspace:fly", "", "", "bad_request"},
      {w.narrow, "workspace:read", ws(kA), "", "ok"},
      {w.memberToken, "workspace:read", ws(kA), w.memberId, "ok"},
  };
}

// The answer to `line` once a change tokenctl just committed has reached tokend: asked until it
// starts with `prefix`, for at most 2 s. These tests check what a change does; how soon it shows
// is the 10 ms test's to check.
std::string afterChange(Daemon& d, const std::string& line, const std::string& prefix) {
  std::string answer;
  waitFor([&] { return (answer = d.text(line)).rfind(prefix, 0) == 0; }, std::chrono::seconds(2));
  return answer;
}

int statusOf(const std::string& reason) {
  if (reason == "ok") return 200;
  if (reason == "scope" || reason == "allow_list" || reason == "role") return 403;
  if (reason == "bad_request") return 400;
  return 401;
}

}  // namespace

TEST_SUITE("Daemon") {
  TEST_CASE("every reason code over the text protocol") {
    World w;
    for (const Case& c : everyReason(w)) {
      std::string line = "VERIFY " + (c.token.empty() ? std::string() : c.token);
      if (!c.perm.empty() || !c.object.empty()) line += " " + c.perm;
      if (!c.object.empty() || !c.owner.empty()) line += " " + (c.object.empty() ? "-" : c.object);
      if (!c.owner.empty()) line += " " + c.owner;
      std::string answer = w.d.text(line);
      CAPTURE(line);
      if (c.reason == "missing") {
        // The text protocol has no way to send no token: a bare VERIFY is an error line.
        CHECK(answer.rfind("ERR ", 0) == 0);
      } else if (c.reason == "ok") {
        CHECK(answer.rfind("OK ", 0) == 0);
      } else {
        CHECK(answer == "DENY " + c.reason + " " + std::to_string(statusOf(c.reason)));
      }
    }
    CHECK(w.d.text("PING") == "PONG");
    CHECK(w.d.text("HELLO").rfind("ERR ", 0) == 0);
  }

  TEST_CASE("every reason code over HTTP, with the SPEC's headers") {
    World w;
    for (const Case& c : everyReason(w)) {
      std::string q = "?x=1";
      if (!c.perm.empty()) q += "&perm=" + c.perm;
      if (!c.object.empty()) q += "&object=" + c.object;
      if (!c.owner.empty()) q += "&owner=" + c.owner;
      std::vector<std::string> args = {verifyUrl(q)};
      if (!c.token.empty()) args = {"-H", "Authorization: Bearer " + c.token, verifyUrl(q)};
      HttpAnswer a = curl(w.d, args);
      CAPTURE(c.reason);
      CHECK(a.status == statusOf(c.reason));
      CHECK(a.headers["x-tokend-reason"] == c.reason);
      if (c.reason == "ok") {
        CHECK(a.headers.count("x-tokend-user-id") == 1);
        CHECK(a.headers.count("x-tokend-username") == 1);
        CHECK(a.headers.count("x-tokend-token-id") == 1);
        CHECK(a.headers["x-tokend-login-type"] == "token");
      } else if (statusOf(c.reason) == 401) {
        CHECK(a.headers["www-authenticate"] == "Bearer realm=\"tokend\", error=\"invalid_token\"");
      } else if (statusOf(c.reason) == 403) {
        CHECK(a.headers["www-authenticate"] ==
              "Bearer realm=\"tokend\", error=\"insufficient_scope\"");
      }
    }
    HttpAnswer ok = curl(w.d, {"-H", "Coder-Session-Token: " + w.ownerToken, verifyUrl()});
    CHECK(ok.headers["x-tokend-username"] == "boss");
    CHECK(ok.headers["x-tokend-token-id"] == w.ownerToken.substr(0, 10));
    // Permission and object may come as headers instead.
    HttpAnswer viaHeaders = curl(
        w.d, {"-H", "Coder-Session-Token: " + w.narrow, "-H", "X-Tokend-Permission: workspace:read",
              "-H", "X-Tokend-Object: " + ws(kB), verifyUrl()});
    CHECK(viaHeaders.headers["x-tokend-reason"] == "allow_list");
    CHECK(curl(w.d, {"http://tokend/healthz"}).status == 200);
    HttpAnswer metrics = curl(w.d, {"http://tokend/metrics"});
    CHECK(metrics.status == 200);
    CHECK(metrics.body.find("tokend_requests_total{protocol=\"http\",reason=\"ok\"}") !=
          std::string::npos);
    CHECK(metrics.body.find("tokend_cache_hits_total") != std::string::npos);
    CHECK(curl(w.d, {"http://tokend/nowhere"}).status == 404);
  }

  TEST_CASE("every reason code over the binary protocol") {
    World w;
    for (const Case& c : everyReason(w)) {
      std::string storage;
      auto r = binaryVerify(w.d, {c.token, c.perm, c.object, c.owner}, storage);
      CAPTURE(c.reason);
      CHECK(tokend::verifier::reasonName(r.answer.reason) == c.reason);
      CHECK(r.httpStatus == statusOf(c.reason));
      if (c.reason == "ok") CHECK(r.answer.tokenId == c.token.substr(0, 10));
    }
  }

  TEST_CASE("the token comes from the first of the five places, in the SPEC's order") {
    World w;
    const std::string good = w.ownerToken, bad = "AAAAAAAAAA-0123456789012345678901";
    auto reason = [&](std::vector<std::string> args) {
      return curl(w.d, args).headers["x-tokend-reason"];
    };
    // Each place alone.
    CHECK(reason({"-b", "coder_session_token=" + good, verifyUrl()}) == "ok");
    CHECK(reason({verifyUrl("?coder_session_token=" + good)}) == "ok");
    CHECK(reason({"-H", "Coder-Session-Token: " + good, verifyUrl()}) == "ok");
    CHECK(reason({"-H", "Authorization: bearer " + good, verifyUrl()}) == "ok");
    CHECK(reason({verifyUrl("?access_token=" + good)}) == "ok");
    // Precedence: an earlier place wins over every later one.
    CHECK(reason({"-b", "coder_session_token=" + bad, verifyUrl("?coder_session_token=" + good)}) ==
          "unknown");
    CHECK(reason({"-H", "Coder-Session-Token: " + good,
                  verifyUrl("?coder_session_token=" + bad)}) == "unknown");
    CHECK(reason({"-H", "Coder-Session-Token: " + bad, "-H", "Authorization: Bearer " + good,
                  verifyUrl()}) == "unknown");
    CHECK(reason({"-H", "Authorization: Bearer " + bad, verifyUrl("?access_token=" + good)}) ==
          "unknown");
    // Empty places are skipped.
    CHECK(reason({"-b", "coder_session_token=", "-H", "Coder-Session-Token: " + good,
                  verifyUrl()}) == "ok");
  }

  TEST_CASE("pipelined requests are answered in order, in every protocol") {
    World w;
    // Text: 200 lines in one write.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      std::string batch;
      for (int i = 0; i < 200; ++i)
        batch += (i % 2 ? "VERIFY " + w.expired : "VERIFY " + w.ownerToken) + "\n";
      sendAll(fd.get(), batch);
      std::string out = readLines(fd.get(), 200);
      size_t pos = 0;
      for (int i = 0; i < 200; ++i) {
        size_t nl = out.find('\n', pos);
        REQUIRE(nl != std::string::npos);
        std::string line = out.substr(pos, nl - pos);
        CHECK(line.rfind(i % 2 ? "DENY expired" : "OK ", 0) == 0);
        pos = nl + 1;
      }
    }
    // HTTP: 20 requests in one write on one keep-alive connection.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      std::string batch;
      for (int i = 0; i < 20; ++i) {
        batch += "GET /v1/verify HTTP/1.1\r\nHost: t\r\nCoder-Session-Token: " +
                 (i % 2 ? w.expired : w.ownerToken) + "\r\n\r\n";
      }
      sendAll(fd.get(), batch);
      std::string out;
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      size_t answers = 0;
      while (answers < 20 && std::chrono::steady_clock::now() < deadline) {
        out += readBytes(fd.get(), 1, 200);
        answers = 0;
        for (size_t p = out.find("HTTP/1.1 "); p != std::string::npos;
             p = out.find("HTTP/1.1 ", p + 1))
          ++answers;
      }
      REQUIRE(answers == 20);
      size_t p = 0;
      for (int i = 0; i < 20; ++i) {
        p = out.find("HTTP/1.1 ", p);
        CHECK(out.substr(p + 9, 3) == (i % 2 ? "401" : "200"));
        ++p;
      }
    }
    // Binary: 100 frames, answers in order with their request ids.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      std::string batch;
      for (uint64_t i = 0; i < 100; ++i) {
        REQUIRE(tokend::daemon::encodeVerify(batch, 1000 + i,
                                             {i % 2 ? w.expired : w.ownerToken, "", "", ""}));
      }
      sendAll(fd.get(), batch);
      std::string in;
      size_t seen = 0;
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (seen < 100 && std::chrono::steady_clock::now() < deadline) {
        in += readBytes(fd.get(), 1, 200);
        while (true) {
          auto p = tokend::daemon::parseFrame(in);
          if (p.status != tokend::daemon::ParseStatus::Complete) break;
          CHECK(p.frame.header.requestId == 1000 + seen);
          auto r = tokend::daemon::decodeVerifyResult(p.frame.payload);
          REQUIRE(r);
          CHECK(r->answer.reason ==
                (seen % 2 ? tokend::verifier::Reason::Expired : tokend::verifier::Reason::Ok));
          in.erase(0, p.consumed);
          ++seen;
        }
      }
      CHECK(seen == 100);
    }
  }

  TEST_CASE("a revocation by tokenctl in another process is refused within 10 ms") {
    World w;
    const auto bound = revocationBound(w.d.pid());
    for (int i = 0; i < 10; ++i) {
      std::string t =
          w.d.ctlOk({"tokens", "create", "--user", "boss", "--name", "r" + std::to_string(i)});
      // Warm the cache so the revocation has something to invalidate.
      REQUIRE(w.d.text("VERIFY " + t).rfind("OK ", 0) == 0);
      REQUIRE(w.d.text("VERIFY " + t).rfind("OK ", 0) == 0);
      const char* how = i % 3 == 0 ? "expire" : i % 3 == 1 ? "delete" : "suspend";
      if (std::string(how) == "expire") {
        w.d.ctlOk({"tokens", "remove", t.substr(0, 10)});
      } else if (std::string(how) == "delete") {
        w.d.ctlOk({"tokens", "remove", t.substr(0, 10), "--delete"});
      } else {
        w.d.ctlOk({"users", "suspend", "boss"});
      }
      const auto committed = std::chrono::steady_clock::now();
      const Starvation starved(w.d.pid(), "tokend-watcher");
      REQUIRE(starved.threadFound());
      // tokenctl has exited, so its commit is at least this old. Still allowed after that only
      // while the machine kept tokend's watcher from running (tests/support/process.h).
      std::this_thread::sleep_for(bound);
      std::string answer;
      waitFor([&] {
        answer = w.d.text("VERIFY " + t);
        return answer.rfind("DENY ", 0) == 0 ||
               std::chrono::steady_clock::now() >= committed + bound + starved.sinceStart();
      });
      INFO("how: ", how);
      INFO("tokend's watcher was kept from running for ", starved.sinceStart().count() / 1000,
           " us");
      CHECK(answer.rfind("DENY ", 0) == 0);
      if (std::string(how) == "suspend") w.d.ctlOk({"users", "activate", "boss"});
    }
  }

  TEST_CASE("suspension and reactivation, and role changes apply to existing tokens") {
    World w;
    CHECK(w.d.text("VERIFY " + w.memberToken).rfind("OK ", 0) == 0);
    w.d.ctlOk({"users", "suspend", "mia"});
    CHECK(afterChange(w.d, "VERIFY " + w.memberToken, "DENY ") == "DENY user_inactive 401");
    w.d.ctlOk({"users", "activate", "mia"});
    CHECK(afterChange(w.d, "VERIFY " + w.memberToken, "OK ").rfind("OK ", 0) == 0);
    CHECK(w.d.text("VERIFY " + w.memberToken + " system:read") == "DENY role 403");
    w.d.ctlOk({"users", "roles", "mia", "--set", "owner"});
    CHECK(afterChange(w.d, "VERIFY " + w.memberToken + " system:read", "OK ").rfind("OK ", 0) == 0);
  }

  TEST_CASE("a token expires at its time") {
    World w;
    std::string t = w.d.ctlOk({"tokens", "create", "--user", "boss", "--lifetime", "1s"});
    CHECK(w.d.text("VERIFY " + t).rfind("OK ", 0) == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(2100));
    CHECK(w.d.text("VERIFY " + t) == "DENY expired 401");
  }

  TEST_CASE("last_used and the sliding refresh are written back") {
    // Sessions made now; the daemon's clock runs two hours ahead, so 22h of 24h are left: due.
    TempDir scratch;
    World w({}, {{"TOKEND_CLOCK_OFFSET", "7200"}});
    std::string session = w.d.ctlOk({"sessions", "create", "--user", "mia"});
    std::string api = w.memberToken;
    auto before = Json::parse(w.d.ctlOk({"tokens", "view", session.substr(0, 10), "-o", "json"}));
    CHECK(before["last_used"] == "1970-01-01T00:00:00Z");
    REQUIRE(w.d.text("VERIFY " + session).rfind("OK ", 0) == 0);
    REQUIRE(w.d.text("VERIFY " + api).rfind("OK ", 0) == 0);
    Json after, apiAfter;
    for (int i = 0; i < 100; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      after = Json::parse(w.d.ctlOk({"tokens", "view", session.substr(0, 10), "-o", "json"}));
      apiAfter = Json::parse(w.d.ctlOk({"tokens", "view", api.substr(0, 10), "-o", "json"}));
      if (after["last_used"] != before["last_used"] &&
          apiAfter["last_used"] != "1970-01-01T00:00:00Z")
        break;
    }
    CHECK(after["last_used"] != "1970-01-01T00:00:00Z");
    CHECK(after["expires_at"].get<std::string>() > before["expires_at"].get<std::string>());
    // API tokens record last_used but never slide.
    auto apiBefore = Json::parse(w.d.ctlOk({"tokens", "view", api.substr(0, 10), "-o", "json"}));
    CHECK(apiAfter["last_used"] != "1970-01-01T00:00:00Z");
    CHECK(apiAfter["expires_at"] == apiBefore["expires_at"]);
  }

  TEST_CASE("no refresh when it is turned off") {
    World w({"--disable-session-expiry-refresh"}, {{"TOKEND_CLOCK_OFFSET", "7200"}});
    std::string session = w.d.ctlOk({"sessions", "create", "--user", "mia"});
    auto before = Json::parse(w.d.ctlOk({"tokens", "view", session.substr(0, 10), "-o", "json"}));
    REQUIRE(w.d.text("VERIFY " + session).rfind("OK ", 0) == 0);
    Json after;
    for (int i = 0; i < 100; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      after = Json::parse(w.d.ctlOk({"tokens", "view", session.substr(0, 10), "-o", "json"}));
      if (after["last_used"] != before["last_used"]) break;
    }
    CHECK(after["last_used"] != before["last_used"]);
    CHECK(after["expires_at"] == before["expires_at"]);
  }

  TEST_CASE("graceful shutdown answers, commits pending writes and exits 0") {
    World w({"--writeback-interval-ms", "1000"});
    std::vector<std::string> tokens;
    for (int i = 0; i < 5; ++i) tokens.push_back(w.d.ctlOk({"tokens", "create", "--user", "boss"}));
    for (const auto& t : tokens) REQUIRE(w.d.text("VERIFY " + t).rfind("OK ", 0) == 0);
    CHECK(w.d.stop() == 0);
    for (const auto& t : tokens) {
      auto j = Json::parse(w.d.ctlOk({"tokens", "view", t.substr(0, 10), "-o", "json"}));
      CHECK(j["last_used"] != "1970-01-01T00:00:00Z");
    }
    // The socket file is gone and a restart serves the same tokens.
    CHECK(!connectUnix(w.d.socket()));
    w.d.restart();
    CHECK(w.d.text("VERIFY " + tokens[0]).rfind("OK ", 0) == 0);
  }

  TEST_CASE("the management API and tokenctl in user mode") {
    World w;
    // The token in the environment, as the docs say (on the command line it draws a warning).
    auto user = [&](const std::string& token, std::vector<std::string> args) {
      std::vector<std::string> argv = {programPath("TOKENCTL"), "--socket", w.d.socket()};
      argv.insert(argv.end(), args.begin(), args.end());
      return run(argv, {{"TOKEND_TOKEN", token}});
    };
    // A member manages their own tokens.
    RunResult created =
        user(w.memberToken, {"tokens", "create", "--name", "mine", "--scope", "workspace:read"});
    REQUIRE(created.status == 0);
    std::string mine = created.out.substr(0, 33);
    CHECK(w.d.text("VERIFY " + mine).rfind("OK ", 0) == 0);
    RunResult list = user(w.memberToken, {"tokens", "list", "-o", "json"});
    REQUIRE(list.status == 0);
    auto tokens = Json::parse(list.out);
    CHECK(tokens.size() == 2);
    for (const auto& t : tokens) CHECK(t["username"] == "mia");
    RunResult view = user(w.memberToken, {"tokens", "view", "mine", "-o", "json"});
    CHECK(Json::parse(view.out)["scopes"] == Json({"workspace:read"}));
    CHECK(user(w.memberToken, {"tokens", "remove", "mine"}).status == 0);
    CHECK(afterChange(w.d, "VERIFY " + mine, "DENY ") == "DENY expired 401");
    RunResult dup = user(w.memberToken, {"tokens", "create", "--name", "all"});
    CHECK(dup.status == 1);
    CHECK(dup.err == "tokenctl: A token with name \"all\" already exists.\n");

    // Only public scopes.
    RunResult priv = user(w.memberToken, {"tokens", "create", "--scope", "system:read"});
    CHECK(priv.status == 1);
    CHECK(priv.err == "tokenctl: invalid or unsupported API key scope: \"system:read\"\n");
    // Acting for another user needs owner.
    RunResult other = user(w.memberToken, {"tokens", "create", "--user", "boss"});
    CHECK(other.status == 1);
    CHECK(other.err.find("owner") != std::string::npos);
    CHECK(user(w.memberToken, {"tokens", "list", "--user", "boss"}).status == 1);
    RunResult forMia =
        user(w.ownerToken, {"tokens", "create", "--user", "mia", "--name", "from-boss"});
    CHECK(forMia.status == 0);
    CHECK(Json::parse(user(w.ownerToken, {"tokens", "list", "--all", "-o", "json"}).out).size() >=
          5);
    // A token without the api_key permission cannot manage tokens.
    std::string noKeys =
        w.d.ctlOk({"tokens", "create", "--user", "mia", "--scope", "workspace:read"});
    RunResult denied = user(noKeys, {"tokens", "create"});
    CHECK(denied.status == 1);
    CHECK(denied.err.find("api_key:create") != std::string::npos);
    // An invalid caller token gets 401.
    RunResult bogus = user("AAAAAAAAAA-0123456789012345678901", {"tokens", "list"});
    CHECK(bogus.status == 1);
    CHECK(bogus.err.find("not valid") != std::string::npos);
    // Sessions and token config over the REST paths.
    HttpAnswer session =
        curl(w.d, {"-X", "POST", "-H", "Coder-Session-Token: " + w.memberToken, "--data",
                   "{\"login_type\":\"github\"}", "http://t/api/v2/users/me/keys"});
    CHECK(session.status == 201);
    std::string sessionKey = Json::parse(session.body)["key"];
    CHECK(w.d.text("VERIFY " + sessionKey).find(" github ") != std::string::npos);
    HttpAnswer config = curl(w.d, {"-H", "Coder-Session-Token: " + w.memberToken,
                                   "http://t/api/v2/users/me/keys/tokens/tokenconfig"});
    CHECK(config.status == 200);
    CHECK(Json::parse(config.body)["max_token_lifetime"] == 876600LL * 3600 * 1000000000LL);
    HttpAnswer scopes =
        curl(w.d, {"-H", "Coder-Session-Token: " + w.memberToken, "http://t/api/v2/auth/scopes"});
    CHECK(Json::parse(scopes.body)["external"].size() > 10);
    HttpAnswer badBody = curl(w.d, {"-X", "POST", "-H", "Coder-Session-Token: " + w.memberToken,
                                    "--data", "{not json", "http://t/api/v2/users/me/keys/tokens"});
    CHECK(badBody.status == 400);
    CHECK(Json::parse(badBody.body).contains("message"));
    // Users: owners administer, members cannot.
    CHECK(user(w.ownerToken, {"users", "create", "zed"}).status == 0);
    CHECK(user(w.memberToken, {"users", "create", "zed2"}).status == 1);
    CHECK(user(w.ownerToken, {"users", "suspend", "zed"}).status == 0);
  }

  TEST_CASE("bad input gets an error answer and never disturbs other connections") {
    World w({"--stall-timeout-ms", "300", "--max-connections", "8"});
    UniqueFd good = connectUnix(w.d.socket());
    auto goodStillAnswers = [&] {
      sendAll(good.get(), "VERIFY " + w.ownerToken + "\n");
      std::string a = readLines(good.get(), 1);
      return a.rfind("OK ", 0) == 0;
    };
    REQUIRE(goodStillAnswers());

    // Text: an unknown command is answered and the connection goes on.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      sendAll(fd.get(), "VERIFY\nPING\n");
      std::string out = readLines(fd.get(), 2);
      CHECK(out.rfind("ERR ", 0) == 0);
      CHECK(out.find("PONG\n") != std::string::npos);
    }
    // Text: a line over 8 KiB is refused and the connection closed.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      sendAll(fd.get(), "VERIFY " + std::string(9000, 'a'));
      bool closed = false;
      std::string out = readUntilClosed(fd.get(), 3000, &closed);
      CHECK(out == "ERR line too long\n");
      CHECK(closed);
    }
    // Unknown protocol.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      sendAll(fd.get(), "\x01\x02 hello\n");
      bool closed = false;
      std::string out = readUntilClosed(fd.get(), 3000, &closed);
      CHECK(out.rfind("ERR ", 0) == 0);
      CHECK(closed);
    }
    // HTTP: malformed request line, oversized head, oversized body.
    for (auto [req, status] : std::vector<std::pair<std::string, std::string>>{
             {"GET /v1/verify HTTP/1.1\r\nBad Header\r\n\r\n", "400"},
             {"GET /v1/verify HTTP/1.1\r\nX-Big: " + std::string(9000, 'b') + "\r\n\r\n", "431"},
             {"POST /api/v2/users/me/keys/tokens HTTP/1.1\r\nContent-Length: 70000\r\n\r\n",
              "413"}}) {
      UniqueFd fd = connectUnix(w.d.socket());
      sendAll(fd.get(), req);
      bool closed = false;
      std::string out = readUntilClosed(fd.get(), 3000, &closed);
      CAPTURE(status);
      CHECK(out.substr(0, 12) == "HTTP/1.1 " + status);
      CHECK(closed);
    }
    // Binary: a frame with bad flags is refused with an error frame and closed; an unknown opcode
    // is answered and the connection goes on.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      std::string frame;
      tokend::daemon::encodePing(frame, 1);
      frame[3] = 1;  // flags
      sendAll(fd.get(), frame);
      bool closed = false;
      std::string out = readUntilClosed(fd.get(), 3000, &closed);
      auto p = tokend::daemon::parseFrame(out);
      REQUIRE(p.status == tokend::daemon::ParseStatus::Complete);
      CHECK(p.frame.header.opcode == tokend::daemon::Opcode::Error);
      CHECK(closed);
    }
    {
      UniqueFd fd = connectUnix(w.d.socket());
      std::string frame;
      tokend::daemon::appendFrameHeader(frame, static_cast<tokend::daemon::Opcode>(0x55), 9, 0);
      tokend::daemon::encodePing(frame, 10);
      sendAll(fd.get(), frame);
      std::string out = readBytes(fd.get(), 2 * tokend::daemon::kFrameHeaderSize + 4);
      auto p = tokend::daemon::parseFrame(out);
      REQUIRE(p.status == tokend::daemon::ParseStatus::Complete);
      CHECK(p.frame.header.opcode == tokend::daemon::Opcode::Error);
      CHECK(p.frame.header.requestId == 9);
      std::string rest = out.substr(p.consumed) + readBytes(fd.get(), 1, 500);
      auto pong = tokend::daemon::parseFrame(rest);
      REQUIRE(pong.status == tokend::daemon::ParseStatus::Complete);
      CHECK(pong.frame.header.opcode == tokend::daemon::Opcode::Pong);
    }
    // A client that stalls mid-request is closed after the stall timeout.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      sendAll(fd.get(), "VERIFY abc");
      bool closed = false;
      auto start = std::chrono::steady_clock::now();
      readUntilClosed(fd.get(), 5000, &closed);
      CHECK(closed);
      CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));
    }
    // A client that disconnects mid-request.
    {
      UniqueFd fd = connectUnix(w.d.socket());
      sendAll(fd.get(), "GET /v1/verify HTTP/1.1\r\nCoder-Sess");
    }
    // Connections past the limit are closed; those within it still work.
    {
      std::vector<UniqueFd> many;
      for (int i = 0; i < 12; ++i) many.push_back(connectUnix(w.d.socket()));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      int refused = 0;
      for (auto& fd : many) {
        sendAll(fd.get(), "PING\n");
        std::string out = readLines(fd.get(), 1, 1000);
        if (out != "PONG\n") ++refused;
      }
      CHECK(refused >= 4);
    }
    CHECK(goodStillAnswers());
    HttpAnswer metrics = curl(w.d, {"http://tokend/metrics"});
    CHECK(metrics.body.find("tokend_connections_refused_total") != std::string::npos);
  }
}
