// Escalation tests (docs/security.md, SPEC 8): through the daemon's HTTP API and tokenctl, a token
// creates only within its own reach, a user-admin cannot touch owners, the last active owner
// stays, promotion to owner clamps old tokens, and no lookup of an unknown token echoes a secret.
#include <doctest/doctest.h>
#include <time.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using Json = nlohmann::json;

namespace {

const std::string kWs = "workspace:11111111-1111-4111-8111-111111111111";
const std::string kOtherWs = "workspace:22222222-2222-4222-8222-222222222222";

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string messageOf(const HttpReply& r) {
  Json j = Json::parse(r.body, nullptr, false);
  return j.is_object() && j.contains("message") && j["message"].is_string()
             ? j["message"].get<std::string>()
             : r.body;
}

HttpReply createToken(const Daemon& d, const std::string& caller, const Json& body) {
  return httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", caller, body.dump());
}

// The expiry in an OK answer of the text protocol (its last field, Unix seconds); 0 otherwise.
long long okExpiry(const std::string& answer) {
  if (answer.rfind("OK ", 0) != 0) return 0;
  return std::stoll(answer.substr(answer.rfind(' ') + 1));
}

// "2026-12-04T10:00:00Z" to Unix seconds.
long long parseTime(const std::string& text) {
  struct tm tm {};
  REQUIRE(strptime(text.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm) != nullptr);
  return static_cast<long long>(timegm(&tm));
}

long long tokenExpiry(const Daemon& d, const std::string& ref) {
  Json j = Json::parse(d.ctlOk({"tokens", "view", ref, "-o", "json"}));
  return parseTime(j["expires_at"].get<std::string>());
}

size_t tokenCount(const Daemon& d, const std::string& user) {
  return Json::parse(d.ctlOk({"tokens", "list", "--user", user, "--include-expired", "-o", "json"}))
      .size();
}

// The answer to `line` once a change committed elsewhere has reached tokend.
std::string answerOnceChanged(const Daemon& d, const std::string& line,
                              const std::function<bool(const std::string&)>& done) {
  std::string answer;
  waitFor([&] { return done(answer = d.text(line)); }, std::chrono::seconds(2));
  return answer;
}

}  // namespace

TEST_SUITE("Escalation") {
  TEST_CASE("a narrow token mints only within its scopes, allow list and expiry, and no session") {
    // API tokens get 30 days by default here (the first owner token too).
    Daemon d({"--default-token-lifetime", "720h", "--max-admin-token-lifetime", "720h"});
    const std::string miaId = d.ctlOk({"users", "create", "mia"});
    const std::string narrow =
        d.ctlOk({"tokens", "create", "--user", "mia", "--name", "rotate", "--scope",
                 "coder:apikeys.manage_self", "--allow", "api_key:*", "--lifetime", "1000h"});
    const std::string shortNarrow =
        d.ctlOk({"tokens", "create", "--user", "mia", "--name", "rotate-short", "--scope",
                 "coder:apikeys.manage_self", "--allow", "api_key:*", "--lifetime", "1h"});
    CHECK(d.text("VERIFY " + narrow + " workspace:delete") == "DENY scope 403");
    const size_t before = tokenCount(d, "mia");

    // Wider scopes: the default (coder:all), a named one, one among several.
    for (Json scopes : {Json(nullptr), Json{"coder:all"}, Json{"api_key:read", "workspace:*"},
                        Json{"coder:workspaces.delete"}}) {
      CAPTURE(scopes.dump());
      HttpReply r = createToken(d, narrow, Json{{"scopes", scopes}, {"allow_list", {"api_key:*"}}});
      CHECK(r.status == 403);
      CHECK(has(messageOf(r), "is beyond the creating token's scopes"));
    }
    HttpReply all = createToken(d, narrow, Json::object());
    CHECK(all.status == 403);
    CHECK(has(messageOf(all), "scope \"coder:all\""));
    // Wider allow lists: absent (*:*), *:* itself, another type.
    for (Json allow : {Json(nullptr), Json{"*:*"}, Json{"api_key:*", kWs}}) {
      CAPTURE(allow.dump());
      HttpReply r =
          createToken(d, narrow, Json{{"scopes", {"api_key:read"}}, {"allow_list", allow}});
      CHECK(r.status == 403);
      CHECK(has(messageOf(r), "allow-list entry"));
    }
    // Outliving itself: the default 30 days after a 1-hour creator.
    HttpReply outlive = createToken(
        d, shortNarrow, Json{{"scopes", {"api_key:read"}}, {"allow_list", {"api_key:*"}}});
    CHECK(outlive.status == 403);
    CHECK(has(messageOf(outlive), "after the creating token"));
    // A session: neither through the API nor through tokenctl.
    HttpReply session = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", narrow,
                                    "{\"login_type\":\"password\"}");
    CHECK(session.status == 403);
    CHECK(has(messageOf(session), "only a session or a coder:all token"));
    RunResult viaCtl =
        run({programPath("TOKENCTL"), "--socket", d.socket(), "tokens", "create", "--name", "x"},
            {{"TOKEND_TOKEN", narrow}});
    CHECK(viaCtl.status == 1);
    CHECK(has(viaCtl.err, "coder:all"));
    RunResult sessionCtl =
        run({programPath("TOKENCTL"), "--socket", d.socket(), "sessions", "create", "--user", "me"},
            {{"TOKEND_TOKEN", narrow}});
    CHECK(sessionCtl.status == 1);
    CHECK(has(sessionCtl.err, "only a session or a coder:all token"));
    CHECK(tokenCount(d, "mia") == before);  // no refusal wrote anything

    // Within its reach: allowed, and no wider than asked.
    HttpReply ok = createToken(d, narrow,
                               Json{{"token_name", "successor"},
                                    {"scopes", {"api_key:read", "api_key:create"}},
                                    {"allow_list", {"api_key:*"}}});
    REQUIRE(ok.status == 201);
    const std::string successor = Json::parse(ok.body)["key"];
    CHECK(d.text("VERIFY " + successor + " api_key:read - " + miaId).rfind("OK ", 0) == 0);
    CHECK(d.text("VERIFY " + successor + " workspace:delete") == "DENY scope 403");
    CHECK(d.text("VERIFY " + successor + " api_key:delete") == "DENY scope 403");
    // ... and the successor, narrower still, is bound in turn.
    CHECK(createToken(d, successor,
                      Json{{"scopes", {"api_key:delete"}}, {"allow_list", {"api_key:*"}}})
              .status == 403);

    // A token of every scope but one workspace (and its keys) keeps its successors to that
    // workspace.
    const std::string oneWs = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "one-ws",
                                       "--allow", kWs + ",api_key:*", "--lifetime", "1000h"});
    HttpReply otherWs =
        createToken(d, oneWs, Json{{"scopes", {"workspace:read"}}, {"allow_list", {kOtherWs}}});
    CHECK(otherWs.status == 403);
    CHECK(has(messageOf(otherWs), "allow-list entry \"" + kOtherWs + "\""));
    HttpReply anyWs = createToken(
        d, oneWs, Json{{"scopes", {"workspace:read"}}, {"allow_list", {"workspace:*"}}});
    CHECK(anyWs.status == 403);
    CHECK(has(messageOf(anyWs), "\"workspace:*\""));
    CHECK(createToken(d, oneWs, Json{{"scopes", {"workspace:read"}}}).status == 403);
    CHECK(
        createToken(d, oneWs, Json{{"scopes", {"workspace:read"}}, {"allow_list", {kWs}}}).status ==
        201);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", oneWs, "{}").status == 403);

    // A session still makes sessions and a 30-day token, beyond its own 24 hours.
    const std::string mine = d.ctlOk({"sessions", "create", "--user", "mia"});
    HttpReply fromSession = createToken(d, mine, Json::object());
    REQUIRE(fromSession.status == 201);
    CHECK(Json::parse(fromSession.body)["scopes"] == Json({"coder:all"}));
    CHECK(tokenExpiry(d, Json::parse(fromSession.body)["id"]) > okExpiry(d.text("VERIFY " + mine)));
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", mine, "{}").status == 201);
    // So does a full token (coder:all, *:*).
    const std::string full = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "full"});
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", full, "{}").status == 201);
    CHECK(createToken(d, full, Json::object()).status == 201);
  }

  TEST_CASE("a user-admin cannot suspend, delete or re-role an owner, nor suspend itself") {
    Daemon d;
    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    d.ctlOk({"users", "create", "ua", "--role", "user-admin"});
    d.ctlOk({"users", "create", "mia"});
    const std::string boss = d.ctlOk({"tokens", "create", "--user", "boss"});
    const std::string ua = d.ctlOk({"tokens", "create", "--user", "ua"});

    HttpReply suspend = httpRequest(d.socket(), "PUT", "/api/v2/users/boss/status/suspend", ua);
    CHECK(suspend.status == 403);
    CHECK(messageOf(suspend) == "Only owners may suspend an owner.");
    HttpReply del = httpRequest(d.socket(), "DELETE", "/api/v2/users/boss", ua);
    CHECK(del.status == 403);
    CHECK(messageOf(del) == "Only owners may delete an owner.");
    HttpReply roles =
        httpRequest(d.socket(), "PUT", "/api/v2/users/boss/roles", ua, "{\"roles\":[\"auditor\"]}");
    CHECK(roles.status == 403);
    CHECK(messageOf(roles) == "Only owners may grant or take the owner role.");
    CHECK(d.text("VERIFY " + boss).rfind("OK ", 0) == 0);
    Json bossNow = Json::parse(d.ctlOk({"users", "view", "boss", "-o", "json"}));
    CHECK(bossNow["status"] == "active");
    CHECK(has(bossNow.dump(), "owner"));

    HttpReply self = httpRequest(d.socket(), "PUT", "/api/v2/users/me/status/suspend", ua);
    CHECK(self.status == 400);
    CHECK(messageOf(self) == "You cannot suspend yourself.");
    CHECK(d.text("VERIFY " + ua).rfind("OK ", 0) == 0);
    // Members are the user-admin's to manage; owners are an owner's.
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/mia/status/suspend", ua).status == 200);
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/mia/status/activate", ua).status == 200);
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/ua/status/suspend", boss).status == 200);
  }

  TEST_CASE("the last active owner is not suspended or deleted, through the API or tokenctl --db") {
    Daemon d;
    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    d.ctlOk({"users", "create", "deputy", "--role", "owner"});
    const std::string boss = d.ctlOk({"tokens", "create", "--user", "boss"});
    // Every other owner gone or suspended: boss is the last active one.
    d.ctlOk({"users", "delete", "admin"});
    d.ctlOk({"users", "suspend", "deputy"});

    for (const char* who : {"me", "boss"}) {
      CAPTURE(who);
      HttpReply del = httpRequest(d.socket(), "DELETE", std::string("/api/v2/users/") + who, boss);
      CHECK(del.status == 403);
      CHECK(messageOf(del) ==
            "cannot delete \"boss\": they are the last active owner; make another user an owner "
            "first");
      HttpReply demote =
          httpRequest(d.socket(), "PUT", std::string("/api/v2/users/") + who + "/roles", boss,
                      "{\"roles\":[\"user-admin\"]}");
      CHECK(demote.status == 403);
      CHECK(has(messageOf(demote), "last active owner"));
    }
    for (std::vector<std::string> args : {std::vector<std::string>{"users", "suspend", "boss"},
                                          {"users", "delete", "boss"},
                                          {"users", "roles", "boss", "--set", "auditor"}}) {
      CAPTURE(args[1]);
      RunResult r = d.ctl(args);
      CHECK(r.status == 1);
      CHECK(has(r.err, "\"boss\": they are the last active owner"));
    }
    CHECK(d.text("VERIFY " + boss + " user:delete").rfind("OK ", 0) == 0);
    // With another active owner, the owner may go (and an owner suspends another).
    HttpReply activate =
        httpRequest(d.socket(), "PUT", "/api/v2/users/deputy/status/activate", boss);
    CHECK(activate.status == 200);
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/deputy/status/suspend", boss).status ==
          200);
    d.ctlOk({"users", "activate", "deputy"});
    CHECK(d.ctl({"users", "suspend", "boss"}).status == 0);
  }

  TEST_CASE("promotion to owner clamps the user's tokens to the admin cap, cache included") {
    Daemon d;
    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    d.ctlOk({"users", "create", "carl"});
    d.ctlOk({"users", "create", "dana"});
    const std::string boss = d.ctlOk({"tokens", "create", "--user", "boss"});
    const std::string carl =
        d.ctlOk({"tokens", "create", "--user", "carl", "--lifetime", "876000h"});
    const std::string dana =
        d.ctlOk({"tokens", "create", "--user", "dana", "--lifetime", "876000h"});
    const long long cap = 168LL * 3600;
    // Cached before the promotion, with its 100-year expiry.
    const std::string carlBefore = d.text("VERIFY " + carl + " user:delete");
    CHECK(carlBefore == "DENY role 403");
    const long long far = okExpiry(d.text("VERIFY " + carl));
    CHECK(far > ::time(nullptr) + 100LL * 365 * 86400 - 86400);

    // Through the API ...
    HttpReply promote =
        httpRequest(d.socket(), "PUT", "/api/v2/users/carl/roles", boss, "{\"roles\":[\"owner\"]}");
    REQUIRE(promote.status == 200);
    const long long after = ::time(nullptr);
    const std::string answer = d.text("VERIFY " + carl + " user:delete");
    REQUIRE(answer.rfind("OK ", 0) == 0);
    CHECK(okExpiry(answer) <= after + cap);
    CHECK(okExpiry(answer) >= after - 5 + cap);
    CHECK(tokenExpiry(d, carl.substr(0, 10)) == okExpiry(answer));

    // ... and through tokenctl --db, which the daemon's changelog watcher follows.
    CHECK(okExpiry(d.text("VERIFY " + dana)) > ::time(nullptr) + cap * 2);
    d.ctlOk({"users", "roles", "dana", "--set", "owner"});
    std::string danaAnswer = answerOnceChanged(d, "VERIFY " + dana, [&](const std::string& a) {
      return okExpiry(a) != 0 && okExpiry(a) <= ::time(nullptr) + cap;
    });
    CHECK(okExpiry(danaAnswer) <= ::time(nullptr) + cap);
    CHECK(okExpiry(danaAnswer) > 0);
  }

  TEST_CASE("lookups of unknown or foreign whole tokens never print the secret") {
    Daemon d;
    d.ctlOk({"users", "create", "mia"});
    d.ctlOk({"users", "create", "ned"});
    const std::string mia = d.ctlOk({"tokens", "create", "--user", "mia"});
    const std::string ned = d.ctlOk({"tokens", "create", "--user", "ned"});
    const std::string unknown = "AAAAAAAAAA-SecretSecretSecretSecr";
    // The review's example is a secret of 24 characters, not 22: shaped nearly like a token.
    const std::string nearly = "AAAAAAAAAA-SecretSecretSecretSecre1";
    for (const std::string& t : {unknown, nearly, ned}) {
      CAPTURE(t);
      const std::string secret = t.substr(11);
      const std::string id = t.substr(0, 10);
      RunResult view = d.ctl({"tokens", "view", t, "--user", "mia"});
      CHECK(view.status == 1);
      CHECK_FALSE(has(view.out + view.err, secret));
      CHECK(has(view.err, id));
      if (t != ned) {
        RunResult any = d.ctl({"tokens", "view", t});
        CHECK(any.status == 1);
        CHECK_FALSE(has(any.out + any.err, secret));
        RunResult remove = d.ctl({"tokens", "remove", t});
        CHECK_FALSE(has(remove.out + remove.err, secret));
      }
      for (std::pair<const char*, std::string> req :
           {std::pair<const char*, std::string>{"GET", "/api/v2/users/me/keys/tokens/" + t},
            {"GET", "/api/v2/users/me/keys/" + t},
            {"PUT", "/api/v2/users/me/keys/" + t + "/expire"},
            {"DELETE", "/api/v2/users/me/keys/" + t},
            {"GET", "/api/v2/users/me/keys/" + t + "/nothing/here"}}) {
        CAPTURE(req.second);
        HttpReply r = httpRequest(d.socket(), req.first, req.second, mia);
        CHECK(r.status == 404);
        CHECK_FALSE(has(r.body, secret));
        CHECK(has(r.body, id));
      }
    }
    CHECK(d.text("VERIFY " + ned).rfind("OK ", 0) == 0);  // nobody's lookups touched it
  }
}
