// Coder's API, exactly (SPEC 8, issue 13 item 1): requests shaped as codersdk's Go client
// marshals them (codersdk.CreateTokenRequest: `lifetime` a time.Duration in nanoseconds, always
// sent, 0 when unset; `token_name` always sent, "" when unset; `allow_list` objects), answered
// with codersdk's shapes and coderd's statuses: 201 {"key"}, 204 for expire and delete, 409 with
// validations, {"message", "detail", "validations"} errors with empty parts left out.
#include <doctest/doctest.h>
#include <time.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>

#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using Json = nlohmann::json;

namespace {

const char* kWs = "aaaaaaaa-0000-4000-8000-000000000001";
constexpr long long kNs = 1000000000LL;
constexpr long long kHourNs = 3600 * kNs;  // the web UI's NANO_HOUR

struct World {
  Daemon d;
  std::string mia;  // a member's coder:all token
  explicit World(std::vector<std::string> args = {}) : d(std::move(args)) {
    d.ctlOk({"users", "create", "mia"});
    mia = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "mine"});
  }
  HttpReply create(const std::string& body, const std::string& user = "me") const {
    return httpRequest(d.socket(), "POST", "/api/v2/users/" + user + "/keys/tokens", mia, body);
  }
  HttpReply get(const std::string& path) const {
    return httpRequest(d.socket(), "GET", "/api/v2/users/me" + path, mia);
  }
};

Json parsed(const HttpReply& r) {
  Json j = Json::parse(r.body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

// "2026-12-04T10:00:00Z" to Unix seconds.
long long unixTime(const std::string& text) {
  struct tm tm {};
  REQUIRE(strptime(text.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm) != nullptr);
  return static_cast<long long>(timegm(&tm));
}

bool isRfc3339(const Json& v) {
  static const std::regex re(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))");
  return v.is_string() && std::regex_match(v.get<std::string>(), re);
}

// Every field of codersdk.APIKey, with its JSON type (and `username` of APIKeyWithOwner).
void checkApiKey(const Json& k, bool withOwner) {
  std::set<std::string> keys;
  for (const auto& [name, value] : k.items()) keys.insert(name);
  std::set<std::string> want = {"id",         "user_id",    "last_used",        "expires_at",
                                "created_at", "updated_at", "login_type",       "scope",
                                "scopes",     "token_name", "lifetime_seconds", "allow_list"};
  if (withOwner) want.insert("username");
  for (const std::string& w : want) {
    CAPTURE(w);
    CHECK(keys.count(w) == 1);
  }
  CHECK(k["id"].is_string());
  CHECK(k["id"].get<std::string>().size() == 10);
  CHECK(k["user_id"].is_string());
  for (const char* t : {"last_used", "expires_at", "created_at", "updated_at"}) {
    CAPTURE(t);
    CHECK(isRfc3339(k[t]));
  }
  CHECK(k["login_type"].is_string());
  CHECK(k["scope"].is_string());
  CHECK(k["scopes"].is_array());
  CHECK(k["token_name"].is_string());
  CHECK(k["lifetime_seconds"].is_number_integer());
  REQUIRE(k["allow_list"].is_array());
  for (const auto& e : k["allow_list"]) {
    CHECK(e.is_object());
    CHECK(e["type"].is_string());
    CHECK(e["id"].is_string());
  }
}

// codersdk.Response: a message, and detail / validations only when they say something.
void checkError(const HttpReply& r, int status) {
  CHECK(r.status == status);
  Json j = parsed(r);
  REQUIRE(j.is_object());
  CHECK(j["message"].is_string());
  CHECK_FALSE(j["message"].get<std::string>().empty());
  for (const auto& [name, value] : j.items()) {
    CAPTURE(name);
    CHECK((name == "message" || name == "detail" || name == "validations"));
  }
  if (j.contains("detail")) CHECK_FALSE(j["detail"].get<std::string>().empty());
  if (j.contains("validations")) CHECK_FALSE(j["validations"].empty());
}

}  // namespace

TEST_SUITE("CoderApi") {
  TEST_CASE("codersdk.CreateTokenRequest: lifetime in nanoseconds, allow_list objects, 201 key") {
    World w;
    // json.Marshal(codersdk.CreateTokenRequest{Lifetime: time.Hour, Scopes: {"workspace:read"},
    // TokenName: "ci", AllowList: {{Type: "workspace", ID: kWs}}}), byte for byte.
    const std::string body =
        std::string(R"({"lifetime":3600000000000,"scopes":["workspace:read"],)") +
        R"("token_name":"ci","allow_list":[{"type":"workspace","id":")" + kWs + R"("}]})";
    HttpReply r = w.create(body);
    REQUIRE(r.status == 201);
    Json j = parsed(r);
    // codersdk.GenerateAPIKeyResponse: "key" is "<id>-<secret>".
    REQUIRE(j["key"].is_string());
    const std::string key = j["key"];
    CHECK(std::regex_match(key, std::regex("[0-9a-zA-Z]{10}-[0-9a-zA-Z]{22}")));
    CHECK(j["id"] == key.substr(0, 10));
    CHECK(j["lifetime_seconds"] == 3600);
    CHECK(unixTime(j["expires_at"]) - unixTime(j["created_at"]) == 3600);
    CHECK(j["allow_list"] == Json::array({{{"type", "workspace"}, {"id", kWs}}}));
    CHECK(j["token_name"] == "ci");
    CHECK(j["login_type"] == "token");
    const std::string verdict = w.d.text("VERIFY " + key + " workspace:read workspace:" + kWs +
                                         " " + j["user_id"].get<std::string>());
    CAPTURE(verdict);
    CHECK(verdict.rfind("OK ", 0) == 0);

    // The same token read back by id and by name (codersdk.APIKey), and in the list
    // (codersdk.APIKeyWithOwner).
    HttpReply byId = w.get("/keys/" + key.substr(0, 10));
    REQUIRE(byId.status == 200);
    checkApiKey(parsed(byId), false);
    CHECK(parsed(byId)["allow_list"] == j["allow_list"]);
    CHECK(parsed(byId)["scope"] == "");
    HttpReply byName = w.get("/keys/tokens/ci");
    REQUIRE(byName.status == 200);
    checkApiKey(parsed(byName), false);
    CHECK(parsed(byName)["id"] == key.substr(0, 10));
    HttpReply list = w.get("/keys/tokens");
    REQUIRE(list.status == 200);
    Json all = parsed(list);
    REQUIRE(all.is_array());
    CHECK(all.size() == 2);
    for (const auto& t : all) {
      checkApiKey(t, true);
      CHECK(t["username"] == "mia");
    }
    // Coder's deprecated single scope: "all" for a coder:all token.
    HttpReply mine = w.get("/keys/tokens/mine");
    CHECK(parsed(mine)["scope"] == "all");
    CHECK(parsed(mine)["allow_list"] == Json::array({{{"type", "*"}, {"id", "*"}}}));
  }

  TEST_CASE("the zero request codersdk sends: lifetime 0 and token_name \"\" take the defaults") {
    World w;
    // json.Marshal(codersdk.CreateTokenRequest{}): omitempty drops scope, scopes and allow_list.
    HttpReply r = w.create(R"({"lifetime":0,"token_name":""})");
    REQUIRE(r.status == 201);
    Json j = parsed(r);
    CHECK(j["lifetime_seconds"] == 168 * 3600);  // --default-token-lifetime
    CHECK_FALSE(j["token_name"].get<std::string>().empty());
    CHECK(j["scopes"] == Json::array({"coder:all"}));
    // The deprecated `scope` alone, as older clients send it.
    HttpReply legacy =
        w.create(R"({"lifetime":0,"scope":"application_connect","token_name":"old"})");
    REQUIRE(legacy.status == 201);
    CHECK(parsed(legacy)["scopes"] == Json::array({"coder:application_connect"}));
    CHECK(parsed(legacy)["scope"] == "application_connect");
  }

  TEST_CASE(
      "lifetimes: nanoseconds against the cap tokenconfig reports, whole seconds rounded up") {
    World w;
    HttpReply config = w.get("/keys/tokens/tokenconfig");
    REQUIRE(config.status == 200);
    const long long max = parsed(config)["max_token_lifetime"];
    CHECK(max == 876600LL * kHourNs);
    // Equal to the cap is accepted (coderd's check is strictly greater-than), one ns more is not.
    HttpReply atMax = w.create(Json{{"lifetime", max}, {"token_name", "max"}}.dump());
    REQUIRE(atMax.status == 201);
    CHECK(parsed(atMax)["lifetime_seconds"] == max / kNs);
    HttpReply over = w.create(Json{{"lifetime", max + 1}, {"token_name", "over"}}.dump());
    checkError(over, 400);
    CHECK(parsed(over)["message"] == "Failed to validate create API key request.");
    CHECK(parsed(over)["detail"].get<std::string>().find("lifetime must be less than") == 0);
    // A week in the web UI's units; 1.5 s and 1 ns round up to whole seconds.
    HttpReply week = w.create(Json{{"lifetime", 7 * 24 * kHourNs}, {"token_name", "week"}}.dump());
    REQUIRE(week.status == 201);
    CHECK(parsed(week)["lifetime_seconds"] == 7 * 24 * 3600);
    HttpReply frac = w.create(Json{{"lifetime", 1500000000LL}, {"token_name", "frac"}}.dump());
    REQUIRE(frac.status == 201);
    CHECK(parsed(frac)["lifetime_seconds"] == 2);
    HttpReply tiny = w.create(Json{{"lifetime", 1}, {"token_name", "tiny"}}.dump());
    REQUIRE(tiny.status == 201);
    CHECK(parsed(tiny)["lifetime_seconds"] == 1);
    // Negative: coderd's 400; not an integer or beyond int64 (what Go cannot decode into a
    // time.Duration): 400 "Request body must be valid JSON.".
    HttpReply negative = w.create(R"({"lifetime":-3600000000000})");
    checkError(negative, 400);
    CHECK(parsed(negative)["message"] == "Failed to validate create API key request.");
    for (const char* bad :
         {R"({"lifetime":1.5})", R"({"lifetime":"1h"})", R"({"lifetime":10000000000000000000})"}) {
      CAPTURE(bad);
      HttpReply r = w.create(bad);
      checkError(r, 400);
      CHECK(parsed(r)["message"] == "Request body must be valid JSON.");
    }
    // The owner's cap is the admin cap, also reported in nanoseconds.
    HttpReply ownerConfig = httpRequest(
        w.d.socket(), "GET", "/api/v2/users/me/keys/tokens/tokenconfig", w.d.adminToken());
    CHECK(parsed(ownerConfig)["max_token_lifetime"] == 168 * kHourNs);
  }

  TEST_CASE("a cap longer than a Go duration holds is reported as the longest one") {
    World w({"--max-token-lifetime", "3000000h"});  // 342 years; int64 nanoseconds hold 292
    HttpReply config = w.get("/keys/tokens/tokenconfig");
    REQUIRE(config.status == 200);
    CHECK(parsed(config)["max_token_lifetime"] == INT64_MAX);
    HttpReply longest = w.create(Json{{"lifetime", INT64_MAX}, {"token_name", "long"}}.dump());
    REQUIRE(longest.status == 201);
    CHECK(parsed(longest)["lifetime_seconds"] == INT64_MAX / kNs + 1);
  }

  TEST_CASE("allow_list: objects and strings read, objects written, bad entries 400") {
    World w;
    const std::string ws = std::string("workspace:") + kWs;
    HttpReply str = w.create(Json{{"token_name", "s"}, {"allow_list", {ws, "template:*"}}}.dump());
    REQUIRE(str.status == 201);
    CHECK(parsed(str)["allow_list"] ==
          Json::array({{{"type", "template"}, {"id", "*"}}, {{"type", "workspace"}, {"id", kWs}}}));
    HttpReply star = w.create(R"({"token_name":"w","allow_list":[{"type":"*","id":"*"}]})");
    REQUIRE(star.status == 201);
    CHECK(parsed(star)["allow_list"] == Json::array({{{"type", "*"}, {"id", "*"}}}));
    for (const char* bad :
         {R"([{"type":"workspace"}])", R"([{"id":"*"}])", R"([{}])", R"([5])",
          R"([{"type":"workspace:*,*","id":"*"}])", R"([{"type":"workspace","id":"not-a-uuid"}])",
          R"([{"type":"spaceship","id":"*"}])", R"({"type":"*","id":"*"})"}) {
      CAPTURE(bad);
      HttpReply r = w.create(std::string(R"({"token_name":"bad","allow_list":)") + bad + "}");
      checkError(r, 400);
      CHECK(parsed(r).contains("detail"));
    }
    HttpReply half = w.create(R"({"allow_list":[{"type":"workspace"}]})");
    CHECK(parsed(half)["detail"] == "allow_list entry must include both type and id");
  }

  TEST_CASE("a duplicate name is 409 with coderd's validation; errors leave out empty parts") {
    World w;
    REQUIRE(w.create(R"({"lifetime":0,"token_name":"ci"})").status == 201);
    HttpReply dup = w.create(R"({"lifetime":0,"token_name":"ci"})");
    checkError(dup, 409);
    CHECK(parsed(dup) ==
          Json{{"message", "A token with name \"ci\" already exists."},
               {"validations", Json::array({{{"field", "name"},
                                             {"detail",
                                              "This value is already in use and should be "
                                              "unique."}}})}});
    // A member acting for another user: 403, message only.
    HttpReply other = w.create("{}", "admin");
    checkError(other, 403);
    CHECK_FALSE(parsed(other).contains("detail"));
    checkError(w.get("/keys/AAAAAAAAAA"), 404);
    checkError(w.create("{oops"), 400);
    checkError(httpRequest(w.d.socket(), "GET", "/api/v2/users/me/keys/tokens"), 401);
    // Users too: a duplicate username is 409 on "username".
    HttpReply user = httpRequest(w.d.socket(), "POST", "/api/v2/users", w.d.adminToken(),
                                 R"({"username":"mia"})");
    checkError(user, 409);
    CHECK(parsed(user)["validations"][0]["field"] == "username");
  }

  TEST_CASE("expire and delete answer 204 without a body; the key is gone at once") {
    World w;
    HttpReply a = w.create(R"({"lifetime":3600000000000,"token_name":"a"})");
    HttpReply b = w.create(R"({"lifetime":3600000000000,"token_name":"b"})");
    REQUIRE(a.status == 201);
    REQUIRE(b.status == 201);
    const std::string ka = parsed(a)["key"], kb = parsed(b)["key"];
    HttpReply expire = httpRequest(w.d.socket(), "PUT",
                                   "/api/v2/users/me/keys/" + ka.substr(0, 10) + "/expire", w.mia);
    CHECK(expire.status == 204);
    CHECK(expire.body.empty());
    CHECK(expire.headers.count("content-length") == 0);
    CHECK(w.d.text("VERIFY " + ka) == "DENY expired 401");
    // Kept, expired: read back by id.
    HttpReply kept = w.get("/keys/" + ka.substr(0, 10));
    REQUIRE(kept.status == 200);
    CHECK(unixTime(parsed(kept)["expires_at"]) <= time(nullptr));
    HttpReply del =
        httpRequest(w.d.socket(), "DELETE", "/api/v2/users/me/keys/" + kb.substr(0, 10), w.mia);
    CHECK(del.status == 204);
    CHECK(del.body.empty());
    CHECK(w.d.text("VERIFY " + kb).rfind("DENY ", 0) == 0);
    checkError(w.get("/keys/" + kb.substr(0, 10)), 404);
  }

  TEST_CASE("sessions and the scope catalog as codersdk reads them") {
    World w;
    // codersdk.CreateAPIKey sends no body.
    HttpReply s = httpRequest(w.d.socket(), "POST", "/api/v2/users/me/keys", w.mia);
    REQUIRE(s.status == 201);
    CHECK(std::regex_match(parsed(s)["key"].get<std::string>(),
                           std::regex("[0-9a-zA-Z]{10}-[0-9a-zA-Z]{22}")));
    CHECK(parsed(s)["login_type"] == "password");
    HttpReply scopes = httpRequest(w.d.socket(), "GET", "/api/v2/auth/scopes");
    REQUIRE(scopes.status == 200);
    REQUIRE(parsed(scopes)["external"].is_array());
    CHECK(parsed(scopes)["external"].size() > 10);
  }

  TEST_CASE("tokenctl's user mode speaks the same JSON: lifetimes, allow lists, 204s") {
    World w;
    auto user = [&](std::vector<std::string> args) {
      // The token in TOKEND_TOKEN, as the docs say: on the command line it draws a warning.
      std::vector<std::string> argv = {programPath("TOKENCTL"), "--socket", w.d.socket()};
      argv.insert(argv.end(), args.begin(), args.end());
      return run(argv, {{"TOKEND_TOKEN", w.mia}});
    };
    const std::string ws = std::string("workspace:") + kWs;
    RunResult c = user({"tokens", "create", "--name", "ctl", "--lifetime", "90m", "--allow",
                        ws + ",template:*", "--scope", "workspace:read", "-o", "json"});
    REQUIRE(c.status == 0);
    Json j = Json::parse(c.out);
    CHECK(j["lifetime_seconds"] == 5400);
    CHECK(j["allow_list"] ==
          Json::array({{{"type", "template"}, {"id", "*"}}, {{"type", "workspace"}, {"id", kWs}}}));
    RunResult table = user({"tokens", "list"});
    REQUIRE(table.status == 0);
    CHECK(table.out.find("template:*," + ws) != std::string::npos);
    RunResult over = user({"tokens", "create", "--lifetime", "876600h1s"});
    CHECK(over.status == 1);
    CHECK(over.err.find("tokenctl: lifetime must be less than or equal to 876600h") == 0);
    RunResult removed = user({"tokens", "remove", "ctl"});
    CHECK(removed.status == 0);
    CHECK(removed.out == "Token ctl (" + j["id"].get<std::string>() + ") is expired.\n");
    RunResult deleted = user({"tokens", "remove", "ctl", "--delete"});
    CHECK(deleted.status == 0);
    CHECK(deleted.out.find("is deleted.") != std::string::npos);
    CHECK(user({"tokens", "view", "ctl"}).status == 1);
  }
}
