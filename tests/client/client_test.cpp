// libtokend against a real tokend: opening, verdicts, batches, the fast path, usage reports.
#include <doctest/doctest.h>
#include <tokend/client.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/client/daemon.h"

using tokend::test::Daemon;
using tokend::test::TempDir;

namespace {

struct Handle {
  tokend_client* c = nullptr;
  explicit Handle(const std::string& socket, unsigned flags = 0) {
    int rc = tokend_open_ex(socket.c_str(), flags, &c);
    INFO("tokend_open_ex: ", std::strerror(-rc));
    REQUIRE(rc == 0);
  }
  ~Handle() { tokend_close(c); }
  operator tokend_client*() const { return c; }
};

tokend_result verify(tokend_client* c, const std::string& token, const char* perm = nullptr,
                     const char* object = nullptr, const char* owner = nullptr) {
  tokend_result r;
  std::memset(&r, 0x5a, sizeof r);
  int rc = tokend_verify(c, token.c_str(), perm, object, owner, &r);
  INFO("tokend_verify: ", std::strerror(-rc), " ", tokend_last_error(c));
  REQUIRE(rc == 0);
  return r;
}

// Verifies until the answer comes from shared memory (the first use fills the cache).
tokend_result verifyViaShm(tokend_client* c, const std::string& token, const char* perm = nullptr,
                           const char* object = nullptr, const char* owner = nullptr) {
  tokend_result r = verify(c, token, perm, object, owner);
  for (int i = 0; i < 200 && !r.via_shm; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    r = verify(c, token, perm, object, owner);
  }
  return r;
}

}  // namespace

TEST_SUITE("Client") {
  TEST_CASE("a grant that rests on the owner named is marked owned, on both paths") {
    Daemon d;
    d.start();
    const std::string mia = d.ctl({"users", "create", "mia"});
    const std::string tok = d.ctl({"tokens", "create", "--user", "mia"});
    const std::string boss = d.adminToken();
    const char* ws = "workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    Handle fast(d.socket());
    Handle slow(d.socket(), TOKEND_OPEN_NO_SHM);
    for (tokend_client* c : {fast.c, slow.c}) {
      const bool viaShm = c == fast.c;
      CAPTURE(viaShm);
      auto get = [&](const std::string& t, const char* perm, const char* owner) {
        return viaShm ? verifyViaShm(c, t, perm, ws, owner) : verify(c, t, perm, ws, owner);
      };
      // A member may delete her own workspaces: granted on the word that the owner is her.
      tokend_result r = get(tok, "workspace:delete", mia.c_str());
      CHECK(r.allowed == 1);
      CHECK(r.owned == 1);
      CHECK(r.via_shm == (viaShm ? 1 : 0));
      // Without that word she is refused; authentication alone is no grant.
      r = get(tok, "workspace:delete", nullptr);
      CHECK(r.allowed == 0);
      CHECK(r.owned == 0);
      r = get(tok, nullptr, nullptr);
      CHECK(r.allowed == 1);
      CHECK(r.owned == 0);
      // A site-wide grant (the owner role) is not owned, whatever owner is named.
      r = get(boss, "workspace:delete", mia.c_str());
      CHECK(r.allowed == 1);
      CHECK(r.owned == 0);
    }
  }

  TEST_CASE("opening fails with a negative errno when there is no daemon, and checks arguments") {
    TempDir dir;
    tokend_client* c = reinterpret_cast<tokend_client*>(1);
    CHECK(tokend_open((dir / "nothing.sock").c_str(), &c) == -ENOENT);
    CHECK(c == nullptr);
    CHECK(tokend_open("/tmp/x", nullptr) == -EINVAL);
    CHECK(tokend_open_ex("/tmp/x", 0x80, &c) == -EINVAL);
    CHECK(tokend_open(std::string(200, 'x').c_str(), &c) == -EINVAL);
    tokend_result r;
    CHECK(tokend_verify(nullptr, "x", nullptr, nullptr, nullptr, &r) == -EINVAL);
    CHECK(tokend_verify_batch(nullptr, nullptr, 0, nullptr) == -EINVAL);
    CHECK(std::string(tokend_version()) == TOKEND_VERSION_STRING);
    CHECK(tokend_shm_state(nullptr) == TOKEND_SHM_OFF);
    tokend_close(nullptr);
  }

  TEST_CASE("a valid token is allowed with its identity; denials are verdicts, not errors") {
    Daemon d;
    d.start();
    std::string uid = d.ctl({"users", "create", "alice"});
    std::string tok = d.ctl({"tokens", "create", "--user", "alice", "--scope", "workspace:read"});
    Handle c(d.socket());
    CHECK(std::string(tokend_daemon_version(c)).rfind("tokend/", 0) == 0);

    tokend_result r = verify(c, tok, "workspace:read", nullptr, uid.c_str());
    CHECK(r.allowed == 1);
    CHECK(r.http_status == 200);
    CHECK(std::string(r.reason) == "ok");
    CHECK(std::string(r.user_id) == uid);
    CHECK(std::string(r.username) == "alice");
    CHECK(std::string(r.token_id) == tok.substr(0, 10));
    CHECK(std::string(r.login_type) == "token");
    CHECK(r.expires_at > 0);

    r = verify(c, tok, "template:delete");
    CHECK(r.allowed == 0);
    CHECK(r.http_status == 403);
    CHECK(std::string(r.reason) == "scope");
    CHECK(std::string(r.user_id).empty());
    CHECK(r.expires_at == 0);

    CHECK(std::string(verify(c, "").reason) == "missing");
    CHECK(std::string(verify(c, "not-a-token").reason) == "malformed");
    tokend_result nul;
    REQUIRE(tokend_verify(c, nullptr, nullptr, nullptr, nullptr, &nul) == 0);
    CHECK(std::string(nul.reason) == "missing");
    // Oversize inputs are verdicts too (sent as something equally unparseable).
    CHECK(std::string(verify(c, std::string(100000, 'a')).reason) == "malformed");
    CHECK(std::string(verify(c, tok, std::string(100000, 'p').c_str()).reason) == "bad_request");
    d.stop();
  }

  TEST_CASE("the owner's own process maps the segment and decides cached tokens in-process") {
    Daemon d;
    d.start();
    d.ctl({"users", "create", "bob"});
    std::string tok = d.ctl({"tokens", "create", "--user", "bob"});
    Handle c(d.socket());
    CHECK(tokend_shm_state(c) == TOKEND_SHM_MAPPED);
    tokend_result first = verify(c, tok);
    CHECK(first.allowed == 1);
    tokend_result again = verifyViaShm(c, tok);
    CHECK(again.via_shm == 1);
    CHECK(again.allowed == 1);
    CHECK(std::string(again.username) == "bob");
    CHECK(again.expires_at == first.expires_at);

    SUBCASE("turned off, every answer comes from the daemon, and back on from memory") {
      REQUIRE(tokend_set_fast_path(c, 0) == 0);
      CHECK(tokend_shm_state(c) == TOKEND_SHM_OFF);
      CHECK(verify(c, tok).via_shm == 0);
      REQUIRE(tokend_set_fast_path(c, 1) == 0);
      CHECK(tokend_shm_state(c) == TOKEND_SHM_MAPPED);
      CHECK(verify(c, tok).via_shm == 1);
    }
    SUBCASE("opened without the fast path, the segment is never mapped until asked for") {
      Handle s(d.socket(), TOKEND_OPEN_NO_SHM);
      CHECK(tokend_shm_state(s) == TOKEND_SHM_OFF);
      CHECK(verify(s, tok).via_shm == 0);
      CHECK(verify(s, tok).via_shm == 0);
      REQUIRE(tokend_set_fast_path(s, 1) == 0);
      CHECK(tokend_shm_state(s) == TOKEND_SHM_MAPPED);
      CHECK(verify(s, tok).via_shm == 1);
    }
    d.stop();
  }

  TEST_CASE("a batch answers in order, mixing the fast path and pipelined socket requests") {
    Daemon d;
    d.start();
    std::string carol = d.ctl({"users", "create", "carol"});
    std::vector<std::string> toks;
    for (int i = 0; i < 20; ++i) {
      toks.push_back(d.ctl({"tokens", "create", "--user", "carol", "--scope", "workspace:read"}));
    }
    Handle c(d.socket());
    // Warm half of them into the cache.
    for (int i = 0; i < 10; ++i) verifyViaShm(c, toks[i]);
    std::vector<tokend_request> reqs;
    for (int round = 0; round < 30; ++round) {
      for (int i = 0; i < 20; ++i) {
        // workspace:read is an owned permission of the member role: name the owner.
        reqs.push_back({toks[i].c_str(), i % 3 == 0 ? "template:delete" : "workspace:read", nullptr,
                        carol.c_str()});
      }
      reqs.push_back({"garbage", nullptr, nullptr, nullptr});
    }
    std::vector<tokend_result> res(reqs.size());
    REQUIRE(tokend_verify_batch(c, reqs.data(), reqs.size(), res.data()) == 0);
    int viaShm = 0;
    for (size_t k = 0; k < reqs.size(); ++k) {
      const size_t i = k % 21;
      if (i == 20) {
        CHECK(std::string(res[k].reason) == "malformed");
        continue;
      }
      CHECK(std::string(res[k].reason) == (i % 3 == 0 ? "scope" : "ok"));
      if (i % 3 != 0) CHECK(std::string(res[k].token_id) == toks[i].substr(0, 10));
      viaShm += res[k].via_shm;
    }
    CHECK(viaShm > 0);
    CHECK(tokend_verify_batch(c, reqs.data(), TOKEND_BATCH_MAX + 1, res.data()) == -EINVAL);
    CHECK(tokend_verify_batch(c, reqs.data(), 0, res.data()) == 0);
    d.stop();
  }

  TEST_CASE("uses seen only in shared memory still reach last_used") {
    Daemon d;
    d.start({"--writeback-interval-ms", "20"});
    d.ctl({"users", "create", "dave"});
    Handle c(d.socket());
    // The daemon may drop a cache entry at any time (a changelog round that ran after the fill,
    // say), and an allowed answer from the socket would count the use itself: so try with fresh
    // tokens until one was allowed through memory only.
    bool viaShmOnly = false;
    for (int attempt = 0; attempt < 5 && !viaShmOnly; ++attempt) {
      const std::string name = "t" + std::to_string(attempt);
      const std::string tok = d.ctl(
          {"tokens", "create", "--user", "dave", "--name", name, "--scope", "workspace:read"});
      auto lastUsed = [&] {
        auto j =
            nlohmann::json::parse(d.ctl({"tokens", "view", name, "--user", "dave", "-o", "json"}));
        return j["last_used"].get<std::string>();
      };
      const std::string never = lastUsed();
      // A denial fills the cache without counting as a use (only successful verifications do).
      tokend_result r = verifyViaShm(c, tok, "template:delete");
      REQUIRE(r.via_shm == 1);
      CHECK(std::string(r.reason) == "scope");
      r = verify(c, tok);
      CHECK(r.allowed == 1);
      if (!r.via_shm) continue;
      viaShmOnly = true;
      CHECK(tokend_flush(c, 3000) == 0);
      bool updated = false;
      for (int i = 0; i < 150 && !updated; ++i) {
        updated = lastUsed() != never;
        if (!updated) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      CHECK(updated);
    }
    CHECK(viaShmOnly);
    d.stop();
  }

  TEST_CASE("a session used only in shared memory slides, and its last_used is written") {
    Daemon d;
    d.start({"--writeback-interval-ms", "20"});
    d.ctl({"users", "create", "erin"});
    Handle c(d.socket());
    bool viaShmOnly = false;
    for (int attempt = 0; attempt < 5 && !viaShmOnly; ++attempt) {
      // Made two hours ago: 22 h left, so a use now is due the sliding refresh (to now + 24 h).
      tokend::test::RunResult made =
          tokend::test::run({tokend::test::programPath("TOKENCTL"), "--db", d.dataDir(), "sessions",
                             "create", "--user", "erin"},
                            {{"TOKEND_CLOCK_OFFSET", "-7200"}});
      REQUIRE(made.status == 0);
      const std::string tok = made.out.substr(0, 33);
      auto view = [&] {
        return nlohmann::json::parse(d.ctl({"tokens", "view", tok.substr(0, 10), "-o", "json"}));
      };
      const nlohmann::json before = view();
      // A denial (erin holds no role that deletes templates) fills the cache from a verification
      // that presented the secret, and writes nothing itself.
      tokend_result r = verifyViaShm(c, tok, "template:delete");
      REQUIRE(r.via_shm == 1);
      CHECK(std::string(r.reason) == "role");
      r = verify(c, tok);
      CHECK(r.allowed == 1);
      if (!r.via_shm) continue;
      viaShmOnly = true;
      CHECK(tokend_flush(c, 3000) == 0);
      bool updated = false;
      for (int i = 0; i < 150 && !updated; ++i) {
        updated = view()["last_used"] != before["last_used"];
        if (!updated) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      CHECK(updated);
      // ISO 8601 in UTC compares as text.
      CHECK(view()["expires_at"].get<std::string>() > before["expires_at"].get<std::string>());
    }
    CHECK(viaShmOnly);
    d.stop();
  }

  TEST_CASE("a use due on an entry a wrong secret filled goes through the socket and counts") {
    Daemon d;
    d.start({"--writeback-interval-ms", "20"});
    d.ctl({"users", "create", "fay"});
    const std::string tok = d.ctl({"tokens", "create", "--user", "fay", "--name", "t"});
    auto lastUsed = [&] {
      return nlohmann::json::parse(
          d.ctl({"tokens", "view", "t", "--user", "fay", "-o", "json"}))["last_used"];
    };
    const auto never = lastUsed();
    Handle c(d.socket());
    // Someone presents the id with a wrong secret: the daemon caches the token (the answer comes
    // from memory next time) but marks no verification, so it would refuse a report of its use.
    const std::string wrong = tok.substr(0, 11) + std::string(22, 'x');
    tokend_result r = verifyViaShm(c, wrong);
    REQUIRE(r.via_shm == 1);
    CHECK(std::string(r.reason) == "bad_secret");
    // The holder's use is due (last_used never set): it is answered by the socket, where the
    // daemon counts it, rather than reported and lost.
    r = verify(c, tok);
    CHECK(r.allowed == 1);
    CHECK(r.via_shm == 0);
    bool updated = false;
    for (int i = 0; i < 150 && !updated; ++i) {
      updated = lastUsed() != never;
      if (!updated) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK(updated);
    d.stop();
  }
}
