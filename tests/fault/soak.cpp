// Soak run (scripts/soak, not part of the test suites): tokend under high load on every protocol
// for a long time, with tokens created, revoked and deleted through the API and tokenctl all
// along, and the daemon restarted (SIGTERM and SIGKILL in turn) every few minutes. Fails on any
// wrong answer, and when the daemon's memory grows within one of its lifetimes beyond the
// warm-up's level (VmRSS, sampled every few seconds). Prints the samples.
//   soak [SECONDS] [RESTART_EVERY_SECONDS]      defaults 600 and 150
// Environment: TOKEND, TOKENCTL (the programs to soak).
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "daemon/binary_protocol.h"
#include "tests/fault/db_check.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"
#include "verifier/manage.h"

using namespace tokend::test;
using tokend::UniqueFd;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
namespace bp = tokend::daemon;

namespace {

std::atomic<bool> stopping{false};
std::atomic<long> answers{0}, wrong{0};
std::mutex problemsMu;
std::vector<std::string> problems;

void problem(const std::string& p) {
  ++wrong;
  std::lock_guard l(problemsMu);
  if (problems.size() < 50) problems.push_back(p);
}

// Pipelined text and binary verification of a fixed pool (all valid) and of known-bad tokens.
void verifier(const std::string& socket, const std::vector<std::string>& pool, bool binary,
              int seed) {
  std::mt19937 rng(seed);
  UniqueFd fd;
  uint64_t next = 1;
  while (!stopping.load()) {
    if (!fd) {
      fd = connectUnix(socket);
      if (!fd) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
    }
    std::vector<int> ids;
    std::string batch;
    for (int k = 0; k < 64; ++k) {
      int i = static_cast<int>(rng() % (pool.size() + 1));  // pool.size(): an unknown token
      ids.push_back(i);
      const std::string t = i < static_cast<int>(pool.size())
                                ? pool[i]
                                : std::string("AAAAAAAAAA-0123456789012345678901");
      if (binary) {
        (void)bp::encodeVerify(batch, next + k, {t, "", "", ""});
      } else {
        batch += "VERIFY " + t + "\n";
      }
    }
    if (!sendAll(fd.get(), batch)) {
      fd.reset();
      continue;
    }
    size_t got = 0;
    std::string in;
    auto deadline = Clock::now() + std::chrono::seconds(5);
    while (got < ids.size() && Clock::now() < deadline) {
      std::string more = readBytes(fd.get(), 1, 200);
      if (more.empty()) break;
      in += more;
      while (got < ids.size()) {
        bool ok = false;
        if (binary) {
          auto p = bp::parseFrame(in);
          if (p.status != bp::ParseStatus::Complete) break;
          auto r = bp::decodeVerifyResult(p.frame.payload);
          ok = r && r->answer.reason == tokend::verifier::Reason::Ok;
          if (p.frame.header.requestId != next + got) problem("binary answer out of order");
          in.erase(0, p.consumed);
        } else {
          size_t nl = in.find('\n');
          if (nl == std::string::npos) break;
          ok = in.rfind("OK ", 0) == 0;
          in.erase(0, nl + 1);
        }
        const bool want = ids[got] < static_cast<int>(pool.size());
        if (ok != want) problem(std::string(binary ? "binary" : "text") + " verdict wrong");
        ++answers;
        ++got;
      }
    }
    if (got < ids.size()) fd.reset();  // the daemon restarted under us
    next += 64;
  }
}

// Tokens created, used, expired or deleted through the API, and tokenctl from outside.
void churn(const Daemon& d, const std::string& owner, int seed) {
  std::mt19937 rng(seed);
  int n = 0;
  while (!stopping.load()) {
    HttpReply c = httpRequest(
        d.socket(), "POST", "/api/v2/users/me/keys/tokens", owner,
        Json{{"token_name", "churn-" + std::to_string(seed) + "-" + std::to_string(n++)},
             {"scopes", {"workspace:read"}}}
            .dump());
    if (c.status != 201) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // restarting
      continue;
    }
    Json j = Json::parse(c.body);
    const std::string key = j["key"], id = j["id"];
    std::string a = d.text("VERIFY " + key);
    if (a == "(no connection)" || a.empty()) continue;
    if (a.rfind("OK ", 0) != 0) problem("fresh token not OK: " + a);
    ++answers;
    const bool del = rng() % 4 != 0;
    HttpReply r =
        del ? httpRequest(d.socket(), "DELETE", "/api/v2/users/me/keys/" + id, owner)
            : httpRequest(d.socket(), "PUT", "/api/v2/users/me/keys/" + id + "/expire", owner);
    if (r.status != 204) continue;
    std::this_thread::sleep_for(std::chrono::milliseconds(15));
    a = d.text("VERIFY " + key);
    if (a == "(no connection)" || a.empty()) continue;
    if (a != (del ? "DENY unknown 401" : "DENY expired 401"))
      problem("revoked token answered " + a);
    ++answers;
    if (n % 50 == 0) {
      httpRequest(d.socket(), "GET", "/metrics");
      httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens", owner);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 600;
  const int restartEvery = argc > 2 ? std::atoi(argv[2]) : 150;
  const int sampleEvery = 5;
  std::printf("soak: %d s, restart every %d s, RSS every %d s\n", seconds, restartEvery,
              sampleEvery);

  Daemon d({"--threads", "2", "--writeback-interval-ms", "100", "--log-level", "warn"});
  const std::string owner = d.adminToken();
  std::vector<std::string> pool;
  {
    auto db = tokend::verifier::KeyDb::open(d.dataDir());
    if (!db) return std::printf("soak: %s\n", db.error().message.c_str()), 1;
    tokend::verifier::Manager m(**db, {});
    auto u = m.createUser("soak", {}, tokend::clockNow());
    for (int i = 0; i < 2000 && u; ++i) {
      tokend::verifier::CreateTokenRequest r;
      r.user = u->id;
      auto t = i % 5 == 4 ? m.createSession(u->id, tokend::verifier::LoginType::Password,
                                            tokend::clockNow())
                          : m.createToken(r, tokend::clockNow());
      if (t) pool.push_back(t->key);
    }
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) threads.emplace_back(verifier, d.socket(), std::cref(pool), false, i);
  for (int i = 0; i < 2; ++i)
    threads.emplace_back(verifier, d.socket(), std::cref(pool), true, 10 + i);
  threads.emplace_back(churn, std::cref(d), owner, 20);

  const auto start = Clock::now();
  auto lifeStart = start;
  long warm = -1, peak = 0;
  int lifetime = 0, restarts = 0;
  bool grew = false;
  // RssAnon (heap, stacks) is what a leak grows; VmRSS also counts the database's mapped pages,
  // which grow with the data.
  std::printf("%8s %8s %10s %10s %12s\n", "t (s)", "life", "VmRSS KiB", "anon KiB", "answers");
  while (Clock::now() - start < std::chrono::seconds(seconds)) {
    std::this_thread::sleep_for(std::chrono::seconds(sampleEvery));
    const long t = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start).count();
    const long life =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - lifeStart).count();
    const long rss = statusKiB(d.pid(), "RssAnon");
    std::printf("%8ld %8d %10ld %10ld %12ld\n", t, lifetime, rssKiB(d.pid()), rss, answers.load());
    std::fflush(stdout);
    // The first third of a lifetime (at least 30 s) warms pools, caches and LMDB pages.
    if (life >= std::max(30, restartEvery / 3) && warm < 0) warm = rss;
    if (warm > 0) {
      peak = std::max(peak, rss);
      if (rss > warm + std::max(16L * 1024, warm / 5)) grew = true;
    }
    if (life >= restartEvery) {
      if (restarts++ % 2 == 0) {
        if (d.stop() != 0) problem("tokend did not exit 0 on SIGTERM");
      } else {
        d.kill(SIGKILL);
      }
      d.restart();
      lifeStart = Clock::now();
      warm = -1;
      ++lifetime;
    }
  }
  stopping = true;
  for (auto& th : threads) th.join();
  const int status = d.stop();
  DbCheck c = checkDatabase(d.dataDir());
  for (const auto& p : c.problems) problem("database: " + p);
  if (status != 0) problem("tokend exited " + std::to_string(status));

  std::printf("soak: %ld answers, %ld wrong, %d restarts, memory %s\n", answers.load(),
              wrong.load(), restarts, grew ? "GREW" : "flat");
  for (const auto& p : problems) std::printf("  %s\n", p.c_str());
  if (grew)
    std::printf("soak: RssAnon rose past warm-up level + max(16 MiB, 20%%) in a lifetime\n");
  return wrong == 0 && !grew && answers > 0 ? 0 : 1;
}
