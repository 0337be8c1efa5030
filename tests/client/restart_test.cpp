// The daemon restarted under a running client: the client reconnects on its next call, maps the
// new segment, and never answers from the old one once it is no longer updated.
#include <doctest/doctest.h>
#include <tokend/client.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "tests/client/daemon.h"

using tokend::test::Daemon;
using tokend::test::waitFor;

namespace {

using Clock = std::chrono::steady_clock;

// Verifies until the answer comes from shared memory, at most ~1 s.
tokend_result warm(tokend_client* c, const std::string& tok) {
  tokend_result r{};
  for (int i = 0; i < 500; ++i) {
    int rc = tokend_verify(c, tok.c_str(), nullptr, nullptr, nullptr, &r);
    REQUIRE_MESSAGE(rc == 0, std::strerror(-rc), " ", tokend_last_error(c));
    if (r.via_shm) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return r;
}

long long us(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

TEST_SUITE("Restart") {
  TEST_CASE("a restarted daemon is reconnected to transparently and its new segment mapped") {
    Daemon d;
    d.start();
    d.ctl({"users", "create", "lena"});
    const std::string keep = d.ctl({"tokens", "create", "--user", "lena"});
    const std::string offline = d.ctl({"tokens", "create", "--user", "lena"});
    const std::string later = d.ctl({"tokens", "create", "--user", "lena"});
    tokend_client* c = nullptr;
    REQUIRE(tokend_open(d.socket().c_str(), &c) == 0);
    for (const auto* t : {&keep, &offline, &later}) {
      tokend_result r = warm(c, *t);
      REQUIRE(r.via_shm == 1);
      REQUIRE(r.allowed == 1);
    }

    SUBCASE("stopped and started between two calls: the next call just works") {
      REQUIRE(d.stop() == 0);
      d.start();
      tokend_result r;
      REQUIRE(tokend_verify(c, keep.c_str(), nullptr, nullptr, nullptr, &r) == 0);
      CHECK(r.allowed == 1);
      CHECK(std::string(r.username) == "lena");
      CHECK(warm(c, keep).via_shm == 1);
      CHECK(tokend_shm_state(c) == TOKEND_SHM_MAPPED);
    }

    SUBCASE("while it is down, nothing is answered from the stale segment") {
      REQUIRE(d.stop() == 0);
      // The background thread sees the daemon's end close at once.
      CHECK(waitFor([&] { return tokend_shm_state(c) != TOKEND_SHM_MAPPED; },
                    std::chrono::milliseconds(500)));
      tokend_result r;
      int rc = tokend_verify(c, keep.c_str(), nullptr, nullptr, nullptr, &r);
      CHECK((rc == -ECONNREFUSED || rc == -ENOENT));
      CHECK(std::string(tokend_last_error(c)).find("connect") != std::string::npos);
      // Revoked while no daemon runs: the old segment still holds it as valid, and must not be
      // believed.
      d.ctl({"tokens", "remove", offline.substr(0, 10)});
      rc = tokend_verify(c, offline.c_str(), nullptr, nullptr, nullptr, &r);
      CHECK(rc < 0);

      d.start();
      REQUIRE(tokend_verify(c, offline.c_str(), nullptr, nullptr, nullptr, &r) == 0);
      CHECK(std::string(r.reason) == "expired");
      CHECK(warm(c, keep).via_shm == 1);
      CHECK(tokend_shm_state(c) == TOKEND_SHM_MAPPED);

      // And the new segment hears of revocations: refused within 10 ms of tokenctl's exit (plus
      // any time the machine kept tokend's watcher from running, tests/support/process.h).
      CHECK(warm(c, later).via_shm == 1);
      const auto bound = tokend::test::revocationBound(d.pid());
      d.ctl({"tokens", "remove", later.substr(0, 10)});
      const auto committed = Clock::now();
      const tokend::test::Starvation starved(d.pid(), "tokend-watcher");
      auto lastAllowed = committed;  // when the last call that still answered OK started
      bool refused = false;
      while (!refused && Clock::now() - committed < std::chrono::seconds(2)) {
        const auto started = Clock::now();
        REQUIRE(tokend_verify(c, later.c_str(), nullptr, nullptr, nullptr, &r) == 0);
        refused = r.allowed == 0;
        if (!refused) lastAllowed = started;
      }
      REQUIRE(refused);
      CHECK(std::string(r.reason) == "expired");
      const auto late = lastAllowed - committed;
      const auto starvation = starved.sinceStart();
      INFO("last OK answer started ", us(late), " us after tokenctl exited; tokend's watcher ",
           "was kept from running for ", us(starvation), " us");
      CHECK(late <= bound + starvation);
    }

    tokend_close(c);
    d.stop();
  }
}
