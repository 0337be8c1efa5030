// Fault tests: tokend and tokenctl killed with SIGKILL at random moments (tokend in the middle of
// write-back batches, tokenctl in the middle of creating tokens), over and over. After every kill
// the database must open clean, hold every token whose creation was reported, and show nothing
// half-written (every record decodes, every index agrees with the records).
#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "tests/fault/db_check.h"
#include "tests/support/daemon.h"
#include "verifier/manage.h"
#include "verifier/token.h"

using namespace tokend::test;
using tokend::UniqueFd;

namespace {

std::mt19937& rng() {
  static std::mt19937 r(std::random_device{}());
  return r;
}
int randomMs(int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng());
}

void requireConsistent(const DbCheck& c) {
  INFO(c.report());
  REQUIRE(c.problems.empty());
}

// Verifies every token, many times over, pipelined on one connection, until `stop` or the daemon
// goes away; counts answers that are not OK (all the tokens are valid).
void hammer(const std::string& socket, const std::vector<std::string>& tokens,
            std::atomic<bool>& stop, std::atomic<int>& wrong, std::atomic<int>& answered) {
  UniqueFd fd = connectUnix(socket);
  if (!fd) return;
  std::string batch;
  for (const std::string& t : tokens) batch += "VERIFY " + t + "\n";
  while (!stop.load()) {
    if (!sendAll(fd.get(), batch)) return;
    std::string out = readLines(fd.get(), tokens.size(), 2000);
    size_t pos = 0;
    while (pos < out.size()) {
      size_t nl = out.find('\n', pos);
      if (nl == std::string::npos) break;  // cut short by the kill
      if (out.compare(pos, 3, "OK ") != 0) ++wrong;
      ++answered;
      pos = nl + 1;
    }
    if (pos < out.size() || out.empty()) return;
  }
}

}  // namespace

TEST_SUITE("Crash") {
  TEST_CASE("tokend killed -9 in the middle of write-back batches leaves a clean database") {
    Daemon d({"--threads", "2", "--writeback-interval-ms", "10", "--no-admin"});
    std::vector<std::string> tokens;
    {
      auto db = tokend::verifier::KeyDb::open(d.dataDir());
      REQUIRE(db);
      // Sessions of a year: the daemon's clock moves 100 hours over the rounds, and a session
      // whose refresh a kill cut off must still be valid (this test is about torn writes).
      tokend::verifier::LifetimeConfig lifetimes;
      lifetimes.sessionDuration = 365 * 86400;
      tokend::verifier::Manager m(**db, lifetimes);
      const int64_t now = tokend::clockNow();
      auto user = m.createUser("crash", {}, now);
      REQUIRE(user);
      for (int i = 0; i < 150; ++i) {
        tokend::verifier::CreateTokenRequest r;
        r.user = user->id;
        r.name = "t" + std::to_string(i);
        r.lifetime = 365 * 86400;
        auto t = m.createToken(r, now);
        REQUIRE(t);
        tokens.push_back(t->key);
        // Sessions too: their use also slides expires_at.
        auto s = m.createSession(user->id, tokend::verifier::LoginType::Password, now);
        REQUIRE(s);
        tokens.push_back(s->key);
      }
    }
    std::map<std::string, tokend::verifier::TokenRecord> before = checkDatabase(d.dataDir()).tokens;
    REQUIRE(before.size() == tokens.size());

    const int rounds = 50;
    int wrong = 0, answered = 0;
    for (int round = 1; round <= rounds; ++round) {
      // Each round the daemon's clock is two hours further on, so every token's last_used (and
      // every session's expiry) is due again and the write-back has work in every batch.
      d.kill(SIGKILL);
      d.setEnv("TOKEND_CLOCK_OFFSET", std::to_string(round * 7200));
      d.restart();
      std::atomic<bool> stop{false};
      std::atomic<int> w{0}, a{0};
      std::vector<std::thread> clients;
      for (int c = 0; c < 2; ++c)
        clients.emplace_back(hammer, d.socket(), std::cref(tokens), std::ref(stop), std::ref(w),
                             std::ref(a));
      std::this_thread::sleep_for(std::chrono::milliseconds(randomMs(5, 120)));
      d.kill(SIGKILL);
      stop = true;
      for (auto& t : clients) t.join();
      wrong += w;
      answered += a;

      DbCheck after = checkDatabase(d.dataDir());
      requireConsistent(after);
      REQUIRE(after.tokens.size() == tokens.size());
      // Written back or not, never torn and never backwards.
      for (const auto& [id, t] : after.tokens) {
        const auto& old = before.at(id);
        CHECK(t.lastUsed >= old.lastUsed);
        CHECK(t.expiresAt >= old.expiresAt);
        CHECK(t.secretHash == old.secretHash);
      }
      before = after.tokens;
    }
    CHECK(wrong == 0);
    CHECK(answered > 0);
    // The write-back did commit between kills: most tokens carry a use.
    int used = 0;
    for (const auto& [id, t] : before) used += t.lastUsed > 0;
    CHECK(used > static_cast<int>(tokens.size()) / 2);
    // And the database serves again after the last crash.
    d.restart();
    CHECK(d.text("VERIFY " + tokens[0]).rfind("OK ", 0) == 0);
  }

  TEST_CASE("tokenctl killed -9 while creating tokens never leaves half a token") {
    Daemon d({"--threads", "2", "--writeback-interval-ms", "20"});
    d.ctlOk({"users", "create", "maker"});
    std::vector<std::string> reported;  // tokens whose creation tokenctl reported (exit 0)
    int killedMidway = 0;
    const int rounds = 40;
    for (int round = 0; round < rounds; ++round) {
      // Three at once, so that kills land while another writer holds or waits for the lock.
      std::vector<Child> ctls;
      for (int i = 0; i < 3; ++i) {
        std::vector<std::string> argv = {programPath("TOKENCTL"),
                                         "--db",
                                         d.dataDir(),
                                         "tokens",
                                         "create",
                                         "--user",
                                         "maker",
                                         "--name",
                                         "r" + std::to_string(round) + "-" + std::to_string(i)};
        if (i == 1)
          argv.insert(argv.end(), {"--scope", "workspace:read", "--allow", "workspace:*"});
        ctls.push_back(spawn(argv, {}, d.dir().path()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(randomMs(0, 60)));
      // Every fifth round the daemon dies too.
      if (round % 5 == 4) d.kill(SIGKILL);
      for (Child& c : ctls) {
        std::string out;
        int status = c.stop(SIGKILL);
        if (status == 0) {
          out = c.out();
          REQUIRE(out.size() == 34);  // the token and a newline
          reported.push_back(out.substr(0, 33));
        } else {
          CHECK(status == 128 + SIGKILL);
          ++killedMidway;
        }
      }
      if (d.pid() < 0) d.restart();
      DbCheck c = checkDatabase(d.dataDir());
      requireConsistent(c);
      for (const std::string& t : reported) {
        auto it = c.tokens.find(t.substr(0, 10));
        REQUIRE(it != c.tokens.end());
        tokend::verifier::Sha256 sha;
        CHECK(it->second.secretHash == sha.digest(t.substr(11)));
      }
    }
    INFO("reported ", reported.size(), ", killed midway ", killedMidway);
    CHECK(killedMidway > 0);
    // Every reported token verifies through the daemon; a new one can still be created.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (const std::string& t : reported) CHECK(d.text("VERIFY " + t).rfind("OK ", 0) == 0);
    std::string fresh = d.ctlOk({"tokens", "create", "--user", "maker", "--name", "after"});
    CHECK(d.text("VERIFY " + fresh).rfind("OK ", 0) == 0);
  }
}
