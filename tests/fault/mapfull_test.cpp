// Fault test: the key database's map at its cap (--max-db-size). Writes through the management
// API are refused with a clear 507, verification and reads go on, and space freed by deleting
// tokens lets writes resume.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/fault/db_check.h"
#include "tests/fault/fill.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using Json = nlohmann::json;

TEST_SUITE("MapFull") {
  TEST_CASE(
      "a full map refuses writes clearly, keeps verifying, and recovers when space is freed") {
    Daemon d({"--max-db-size", "1M", "--threads", "2", "--writeback-interval-ms", "20"});
    const std::string admin = d.adminToken();
    REQUIRE(admin.size() == 33);
    const std::string base = kTokensPath;

    Filled filled = fillUntilRefused(d, admin);
    const std::vector<std::string>& ids = filled.ids;
    const std::vector<std::string>& keys = filled.keys;
    const HttpReply& full = filled.refusal;
    INFO("created ", ids.size(), " tokens before the map filled; answer: ", full.body);
    REQUIRE(full.status == 507);
    REQUIRE(ids.size() > 10);
    Json err = Json::parse(full.body);
    CHECK(err["message"] == "The key database is full.");
    CHECK(err["detail"].get<std::string>().find("kept for deletes and updates") !=
          std::string::npos);

    // Everything that reads still works: verification (cached or not), lists, health.
    for (size_t i = 0; i < keys.size(); i += 7)
      CHECK(d.text("VERIFY " + keys[i]).rfind("OK ", 0) == 0);
    CHECK(d.text("VERIFY " + admin).rfind("OK ", 0) == 0);
    CHECK(d.text("VERIFY AAAAAAAAAA-0123456789012345678901") == "DENY unknown 401");
    HttpReply list = httpRequest(d.socket(), "GET", base, admin);
    CHECK(list.status == 200);
    CHECK(Json::parse(list.body).size() == ids.size() + 1);
    CHECK(httpRequest(d.socket(), "GET", "/healthz").status == 200);
    // Refused again, the same way, and nothing half-written.
    CHECK(httpRequest(d.socket(), "POST", base, admin, bigToken(9999)).status == 507);
    DbCheck c = checkDatabase(d.dataDir());
    INFO(c.report());
    CHECK(c.problems.empty());
    CHECK(c.tokens.size() == ids.size() + 1);

    // Deleting frees pages; then creating works again.
    int deleted = 0;
    for (size_t i = 0; i < ids.size() && deleted < 20; ++i) {
      HttpReply r = httpRequest(d.socket(), "DELETE", "/api/v2/users/me/keys/" + ids[i], admin);
      INFO("delete answered ", r.status, " ", r.body);
      REQUIRE(r.status == 204);
      ++deleted;
    }
    HttpReply again = httpRequest(d.socket(), "POST", base, admin, bigToken(10000));
    INFO(again.body);
    CHECK(again.status == 201);
    CHECK(d.text("VERIFY " + keys.back()).rfind("OK ", 0) == 0);
    CHECK(d.text("VERIFY " + keys.front()).rfind("DENY ", 0) == 0);  // deleted
    CHECK(d.stop() == 0);
  }
}
