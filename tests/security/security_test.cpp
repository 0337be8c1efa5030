// Security tests (docs/security.md): who can reach the socket and the segment, what they may do,
// and that no token secret leaks into logs, metrics, error messages, listings or the database.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using tokend::UniqueFd;
using Json = nlohmann::json;
namespace bp = tokend::daemon;

namespace {

unsigned modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

RunResult userCtl(const Daemon& d, const std::string& token, std::vector<std::string> args) {
  std::vector<std::string> argv = {programPath("TOKENCTL"), "--socket", d.socket(), "--token",
                                   token};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv);
}

}  // namespace

TEST_SUITE("Security") {
  TEST_CASE(
      "the socket is created 0660 by default, owned by the daemon's user; --socket-mode is "
      "honoured") {
    {
      Daemon d;
      CHECK(modeOf(d.socket()) == 0660);
      struct stat st {};
      REQUIRE(::stat(d.socket().c_str(), &st) == 0);
      CHECK(S_ISSOCK(st.st_mode));
      CHECK(st.st_uid == ::getuid());
      CHECK(st.st_gid == ::getgid());
      // The database is the daemon's alone.
      CHECK(modeOf(d.dataDir()) == 0700);
      CHECK((modeOf(d.dataDir() + "/data.mdb") & 077) == 0);
      CHECK((modeOf(d.dataDir() + "/lock.mdb") & 077) == 0);
    }
    for (std::string mode : {"0600", "0666", "600"}) {
      Daemon d({"--socket-mode", mode});
      CAPTURE(mode);
      CHECK(modeOf(d.socket()) == std::stoul(mode, nullptr, 8));
    }
    // The socket path belongs to one daemon at a time (a lock, not a connect probe): a second
    // tokend on it refuses to start, the first goes on serving.
    {
      Daemon d;
      TempDir other;
      RunResult second =
          run({programPath("TOKEND"), "--data-dir", other / "data", "--socket", d.socket()});
      CHECK(second.status == 1);
      CHECK(second.err.find("another tokend is serving") != std::string::npos);
      CHECK(d.text("PING") == "PONG");
    }
    TempDir dir;
    RunResult bad =
        run({programPath("TOKEND"), "--data-dir", dir / "data", "--socket-mode", "0999"});
    CHECK(bad.status == 2);
    CHECK(bad.err.find("--socket-mode") != std::string::npos);
  }

  TEST_CASE("no token secret appears in logs, metrics, errors, listings or the database") {
    Daemon d({"--log-level", "debug", "--writeback-interval-ms", "20", "--threads", "2"});
    std::vector<std::string> tokens = {d.adminToken()};
    std::string seen;  // every output a secret must not be in
    auto keep = [&](const std::string& s) { seen += s + "\n"; };

    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    d.ctlOk({"users", "create", "mia"});
    tokens.push_back(d.ctlOk({"tokens", "create", "--user", "boss", "--name", "b1"}));
    tokens.push_back(d.ctlOk({"tokens", "create", "--user", "mia", "--name", "m1", "--scope",
                              "workspace:read", "--allow", "workspace:*"}));
    RunResult json = d.ctl({"tokens", "create", "--user", "mia", "--name", "m2", "-o", "json"});
    REQUIRE(json.status == 0);
    tokens.push_back(Json::parse(json.out)["key"]);
    tokens.push_back(d.ctlOk({"sessions", "create", "--user", "mia", "--login-type", "github"}));
    RunResult mine = userCtl(d, tokens[1], {"tokens", "create", "--name", "via-socket"});
    REQUIRE(mine.status == 0);
    tokens.push_back(mine.out.substr(0, 33));
    keep(mine.err);
    HttpReply s = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", tokens[3],
                              "{\"login_type\":\"oidc\"}");
    REQUIRE(s.status == 201);
    tokens.push_back(Json::parse(s.body)["key"]);

    // Presented secrets that do not match are secrets too (someone's mistyped token).
    std::vector<std::string> presented;
    for (const std::string& t : tokens) presented.push_back(t.substr(0, 11) + "Zz" + t.substr(13));

    // Use everything every way, good and bad.
    for (const auto& list : {tokens, presented}) {
      for (const std::string& t : list) {
        keep(d.text("VERIFY " + t));
        keep(d.text("VERIFY " + t +
                    " workspace:read workspace:aaaaaaaa-0000-4000-8000-000000000001"));
        keep(d.text("VERIFY " + t + "x"));  // malformed
        HttpReply v = httpRequest(d.socket(), "GET", "/v1/verify?perm=template:read", t);
        for (const auto& [k, val] : v.headers) keep(k + ": " + val);
        keep(v.body);
        HttpReply q = httpRequest(d.socket(), "GET", "/v1/verify?access_token=" + t);
        for (const auto& [k, val] : q.headers) keep(k + ": " + val);
        HttpReply api = httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens", t);
        keep(api.body);
        HttpReply bad = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", t, "{oops");
        keep(bad.body);
        RunResult check = d.ctl({"check", t, "workspace:read"});
        keep(check.out + check.err);
        RunResult viaSocket = userCtl(d, t, {"tokens", "list", "-o", "json"});
        keep(viaSocket.out + viaSocket.err);
        RunResult view = d.ctl({"tokens", "view", t});
        keep(view.out + view.err);
      }
    }
    for (const char* fmt : {"table", "json"}) {
      RunResult all = d.ctl({"tokens", "list", "--all", "--include-expired", "-o", fmt});
      keep(all.out + all.err);
    }
    RunResult dup = d.ctl({"tokens", "create", "--user", "boss", "--name", "b1"});
    keep(dup.out + dup.err);
    RunResult removed = d.ctl({"tokens", "remove", tokens[1]});
    keep(removed.out + removed.err);
    keep(httpRequest(d.socket(), "GET", "/metrics").body);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // a write-back round
    REQUIRE(d.stop() == 0);
    keep(d.log());
    const std::string db = readFile(d.dataDir() + "/data.mdb");
    REQUIRE(db.size() > 0);

    for (const auto& list : {tokens, presented}) {
      for (const std::string& t : list) {
        const std::string secret = t.substr(11);
        CAPTURE(t);
        CHECK(seen.find(secret) == std::string::npos);
        CHECK(db.find(secret) == std::string::npos);  // only SHA-256(secret) is stored
      }
    }
    // The daemon logged something at debug level, so the check above looked at real output.
    CHECK(d.log().find("listening") != std::string::npos);
  }

  TEST_CASE("user mode: members manage only their own tokens, with public scopes") {
    Daemon d({"--threads", "2"});
    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    d.ctlOk({"users", "create", "mia"});
    d.ctlOk({"users", "create", "ned"});
    const std::string boss = d.ctlOk({"tokens", "create", "--user", "boss", "--name", "all"});
    const std::string mia = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "all"});
    const std::string ned = d.ctlOk({"tokens", "create", "--user", "ned", "--name", "all"});
    const std::string readOnly =
        d.ctlOk({"tokens", "create", "--user", "mia", "--name", "ro", "--scope", "api_key:read"});
    const std::string nedId = ned.substr(0, 10);
    // Covered in tests/daemon/daemon_test.cpp ("the management API and tokenctl in user mode"):
    // own tokens, public scopes only, --user needs owner, no api_key permission -> refused.
    // The gaps:
    // A member cannot see, expire or delete another user's tokens, by name or by id.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/ned/keys/tokens", mia).status == 403);
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/ned/keys/tokens/all", mia).status == 403);
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/ned/keys/" + nedId, mia).status == 403);
    CHECK(
        httpRequest(d.socket(), "PUT", "/api/v2/users/ned/keys/" + nedId + "/expire", mia).status ==
        403);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/ned/keys/" + nedId, mia).status == 403);
    // ... nor reach it through her own path.
    CHECK(
        httpRequest(d.socket(), "PUT", "/api/v2/users/me/keys/" + nedId + "/expire", mia).status ==
        404);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/me/keys/" + nedId, mia).status == 404);
    CHECK(d.text("VERIFY " + ned).rfind("OK ", 0) == 0);
    // ... nor list everyone's, nor make sessions for others.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens?include_all=true", mia)
              .status == 403);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/ned/keys", mia, "{}").status == 403);
    RunResult list = userCtl(d, mia, {"tokens", "list", "-o", "json"});
    REQUIRE(list.status == 0);
    for (const auto& t : Json::parse(list.out)) CHECK(t["username"] == "mia");
    // A member cannot give herself the owner role, make users, or suspend others.
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/me/roles", mia, "{\"roles\":[\"owner\"]}")
              .status == 403);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users", mia, "{\"username\":\"eve\"}").status ==
          403);
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/ned/status/suspend", mia).status == 403);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/boss", mia).status == 403);
    // Non-public scopes are refused, also inside a comma list and through the alias forms.
    for (std::string scope : {"system:read", "workspace:read,system:*", "*:*", "workspace:fly"}) {
      HttpReply r = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia,
                                Json{{"scopes", {scope}}}.dump());
      CAPTURE(scope);
      CHECK(r.status == 400);
    }
    // A lifetime over the member cap is refused; the owner's own cap applies to the owner.
    HttpReply longLife =
        httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", boss,
                    "{\"lifetime\":" + std::to_string(200LL * 3600 * 1000000000) + "}");
    CHECK(longLife.status == 400);
    // A token that may only read keys cannot create, expire or delete them.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens", readOnly).status == 200);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", readOnly, "{}").status ==
          403);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", readOnly, "{}").status == 403);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/me/keys/" + mia.substr(0, 10), readOnly)
              .status == 403);
    // A suspended user's token manages nothing.
    d.ctlOk({"users", "suspend", "ned"});
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens", ned).status == 401);
    // An owner can do all of it for others.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/mia/keys/tokens", boss).status == 200);
    HttpReply forMia = httpRequest(d.socket(), "POST", "/api/v2/users/mia/keys/tokens", boss,
                                   "{\"token_name\":\"from-boss\"}");
    CHECK(forMia.status == 201);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/ned/keys/" + nedId, boss).status == 204);
    // Bodies of the wrong shape are refused with 400, never an internal error.
    for (std::string body : {"{\"login_type\":5}", "{\"login_type\":null}", "[]",
                             "{\"scopes\":\"x\"}", "{\"token_name\":{}}", "{\"lifetime\":1.5}"}) {
      HttpReply r = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", mia, body);
      CAPTURE(body);
      CHECK(r.status < 500);
      HttpReply t = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia, body);
      CHECK(t.status < 500);
    }
    // Token names are shown to others (an owner's list of every token): no terminal escapes,
    // no line breaks, no invalid UTF-8 (from tokenctl, whose arguments are bytes).
    for (std::string name : {"\\u001b]0;owned\\u0007", "two\\nlines", "del\\u007f", "c1\\u0085"}) {
      HttpReply r = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia,
                                std::string("{\"token_name\":\"") + name + "\"}");
      CAPTURE(name);
      CHECK(r.status == 400);
    }
    for (std::string name : {"\x1b[31mred", "bad\xff", "tab\there"}) {
      RunResult r = d.ctl({"tokens", "create", "--user", "mia", "--name", name});
      CAPTURE(name);
      CHECK(r.status != 0);
      CHECK(r.err.find("printable") != std::string::npos);
    }
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia,
                      "{\"token_name\":\"caf\u00e9 \u2615\"}")
              .status == 201);
    HttpReply u = httpRequest(d.socket(), "POST", "/api/v2/users", boss, "{\"username\":7}");
    CHECK(u.status == 400);
    CHECK(d.text("PING") == "PONG");
  }
}
