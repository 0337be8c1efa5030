// Fault test: hostile and broken clients (random bytes, oversized lines, headers, bodies and
// frames, disconnects mid-request, one byte a second, more connections than the limit, a client
// that never reads) while well-behaved clients keep being answered correctly and promptly, and
// the daemon's memory stays bounded (VmRSS before and after, from /proc/<pid>/status).
#include <doctest/doctest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"

using namespace tokend::test;
using tokend::UniqueFd;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kMaxConnections = 48;
constexpr int kStallMs = 800;

// Well-behaved clients: each holds one connection (opened before any attack, so within the
// limit) and verifies a valid and a revoked token every few milliseconds, checking each answer.
// `late`: no whole answer within 5 s (the stream is then out of step, so that client stops);
// `wrong`: a whole answer that is not the expected one. A request's time leaves out the time the
// machine kept the client's own thread from running (Starvation: its run-queue wait, and host
// steal): the test's threads compete with the attack and the rest of the machine, and that is
// not tokend's delay. tokend's own threads get no such allowance.
struct GoodClients {
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, late{0}, answered{0}, lost{0};
  std::atomic<long> worstMs{0}, worstRawMs{0};
  std::vector<std::thread> threads;

  GoodClients(const std::string& socket, const std::string& valid, const std::string& revoked) {
    for (int i = 0; i < 3; ++i) {
      UniqueFd fd = connectUnix(socket);
      REQUIRE(fd);
      threads.emplace_back([this, i, valid, revoked, fd = std::move(fd)] {
        const std::string name = "good-client-" + std::to_string(i);
        pthread_setname_np(pthread_self(), name.c_str());
        const std::string request = "VERIFY " + valid + "\nVERIFY " + revoked + "\n";
        while (!stop.load()) {
          Starvation starved(::getpid(), name);
          auto t0 = Clock::now();
          if (!sendAll(fd.get(), request)) {
            ++lost;
            return;
          }
          std::string a = readLines(fd.get(), 2, 5000);
          const auto raw = Clock::now() - t0;
          const long rawMs = std::chrono::duration_cast<std::chrono::milliseconds>(raw).count();
          const long ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              raw - std::min<Clock::duration>(raw, starved.sinceStart()))
                              .count();
          if (ms > worstMs.load()) worstMs = ms;
          if (rawMs > worstRawMs.load()) worstRawMs = rawMs;
          if (std::count(a.begin(), a.end(), '\n') < 2) {
            ++late;
            ++lost;
            return;
          }
          const size_t nl = a.find('\n');
          if (a.rfind("OK ", 0) != 0 || a.substr(nl + 1) != "DENY expired 401\n") ++wrong;
          ++answered;
          std::this_thread::sleep_for(std::chrono::milliseconds(3));
        }
      });
    }
  }
  ~GoodClients() { halt(); }
  void halt() {
    stop = true;
    for (auto& t : threads)
      if (t.joinable()) t.join();
  }
};

std::string randomBytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Sends `data` and reads until the daemon closes (or the timeout); whether it closed.
bool closedAfter(const std::string& socket, const std::string& data, int timeoutMs = 3000) {
  UniqueFd fd = connectUnix(socket);
  if (!fd) return true;  // refused at the door is closed too
  sendAll(fd.get(), data);
  bool closed = false;
  readUntilClosed(fd.get(), timeoutMs, &closed);
  return closed;
}

// One round of every attack.
void attack(const std::string& socket, std::mt19937& rng) {
  // Random bytes, alone and after each protocol's first bytes.
  std::string frameHead;
  tokend::daemon::appendFrameHeader(frameHead, tokend::daemon::Opcode::Verify, 1, 4000);
  for (int i = 0; i < 60; ++i) {
    const char* prefixes[] = {"", "VERIFY ", "GET /v1/verify HTTP/1.1\r\n", "POST /api/v2/users "};
    std::string data = (i % 5 == 4 ? frameHead : std::string(prefixes[i % 4])) +
                       randomBytes(rng, 64 + rng() % 4000);
    UniqueFd fd = connectUnix(socket);
    if (!fd) continue;
    sendAll(fd.get(), data);
    readBytes(fd.get(), 1, 20);
  }
  // Oversized: a line, a header block, a body, a frame, each past its limit, must be closed.
  CHECK(closedAfter(socket, "VERIFY " + std::string(100000, 'a')));
  CHECK(closedAfter(socket, "GET /v1/verify HTTP/1.1\r\nX-A: " + std::string(100000, 'b')));
  CHECK(closedAfter(
      socket, "POST /api/v2/users/me/keys/tokens HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" +
                  std::string(70000, '{')));
  {
    std::string huge;
    tokend::daemon::appendFrameHeader(huge, tokend::daemon::Opcode::Verify, 2, 0xFFFFFFF0u);
    CHECK(closedAfter(socket, huge + std::string(1000, 'x')));
  }
  // Many headers, many pipelined requests that are each fine but never read.
  {
    std::string req = "GET /healthz HTTP/1.1\r\n";
    for (int i = 0; i < 200; ++i) req += "X-" + std::to_string(i) + ": v\r\n";
    CHECK(closedAfter(socket, req + "\r\n"));
  }
  // Disconnects mid-request, some with a reset (SO_LINGER 0).
  for (int i = 0; i < 100; ++i) {
    UniqueFd fd = connectUnix(socket);
    if (!fd) continue;
    const char* partial[] = {"VERIFY abc", "GET /v1/verify HTTP/1.1\r\nCoder-Sess",
                             "\xd7\x01\x02\x00\x21\x00\x00\x00"};
    sendAll(fd.get(), partial[i % 3]);
    if (i % 2) {
      linger l{1, 0};
      ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
  }
  // Small requests with big answers, pipelined and never read: what the daemon buffers for
  // them must stay within --max-pending-output per connection, not grow with the answers.
  {
    std::string metrics;
    for (int i = 0; i < 3000; ++i) metrics += "GET /metrics HTTP/1.1\r\n\r\n";
    std::vector<UniqueFd> greedy;
    for (int i = 0; i < 4; ++i) {
      greedy.push_back(connectUnix(socket));
      if (!greedy.back()) continue;
      timeval tv{1, 0};
      ::setsockopt(greedy.back().get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      sendAll(greedy.back().get(), metrics);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  // A client that sends a stream of requests and never reads the answers.
  {
    UniqueFd fd = connectUnix(socket);
    if (fd) {
      timeval tv{2, 0};
      ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      std::string pings;
      for (int i = 0; i < 20000; ++i) pings += "PING\n";
      auto until = Clock::now() + std::chrono::seconds(3);
      while (Clock::now() < until && sendAll(fd.get(), pings)) {
      }
    }
  }
}

}  // namespace

TEST_SUITE("Hostile") {
  TEST_CASE("hostile clients do not disturb good ones, and memory stays bounded") {
    Daemon d({"--threads", "2", "--max-connections", std::to_string(kMaxConnections),
              "--stall-timeout-ms", std::to_string(kStallMs), "--writeback-interval-ms", "50"});
    d.ctlOk({"users", "create", "good"});
    const std::string valid = d.ctlOk({"tokens", "create", "--user", "good", "--name", "v"});
    const std::string revoked = d.ctlOk({"tokens", "create", "--user", "good", "--name", "r"});
    d.ctlOk({"tokens", "remove", "r", "--user", "good"});
    const bool sanitizer = sanitized(d.pid());
    std::mt19937 rng(std::random_device{}());

    GoodClients good(d.socket(), valid, revoked);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const long rssStart = rssKiB(d.pid());
    attack(d.socket(), rng);  // warms every pool and buffer the attacks reach
    const long rss0 = rssKiB(d.pid());

    // Slowloris: one byte at a time, slower than the stall timeout allows.
    std::vector<UniqueFd> slow;
    for (int i = 0; i < 16; ++i) slow.push_back(connectUnix(d.socket()));
    const std::string req = "GET /v1/verify HTTP/1.1\r\nHost: x\r\n";
    auto slowStart = Clock::now();
    int closedBy = 0;
    for (size_t b = 0; b < req.size() && closedBy < static_cast<int>(slow.size()); ++b) {
      closedBy = 0;
      for (auto& fd : slow) {
        char c = req[b];
        if (!fd || ::send(fd.get(), &c, 1, MSG_NOSIGNAL) != 1) {
          ++closedBy;
          continue;
        }
        char buf[256];
        ssize_t n = ::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) ++closedBy;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    auto slowFor = Clock::now() - slowStart;
    CHECK(closedBy == static_cast<int>(slow.size()));
    CHECK(slowFor < std::chrono::milliseconds(kStallMs * 5));
    slow.clear();

    // Past the connection limit: the excess are closed at once, the good clients go on.
    {
      std::vector<UniqueFd> flood;
      for (int i = 0; i < kMaxConnections * 3; ++i) flood.push_back(connectUnix(d.socket()));
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      int open = 0;
      for (auto& fd : flood) {
        if (!fd) continue;
        if (!sendAll(fd.get(), "PING\n")) continue;
        if (readLines(fd.get(), 1, 300) == "PONG\n") ++open;
      }
      CHECK(open <= kMaxConnections);
      CHECK(open > 0);
    }

    // Every place taken by peers that sent random bytes and closed at once: a correct client
    // connecting right after them is answered, not refused for places the worker has not yet
    // reaped.
    {
      int refused = 0;
      for (int round = 0; round < 20; ++round) {
        std::vector<UniqueFd> noise;
        for (int i = 0; i < kMaxConnections - 3; ++i) {
          noise.push_back(connectUnix(d.socket()));
          if (noise.back()) sendAll(noise.back().get(), "VERIFY " + randomBytes(rng, 256));
        }
        noise.clear();
        UniqueFd fd = connectUnix(d.socket());
        if (!fd || !sendAll(fd.get(), "PING\n") || readLines(fd.get(), 1, 2000) != "PONG\n")
          ++refused;
      }
      CHECK(refused == 0);
    }

    // More rounds of everything: memory must not grow with them.
    for (int round = 0; round < 3; ++round) attack(d.socket(), rng);
    std::this_thread::sleep_for(std::chrono::milliseconds(kStallMs * 2));
    const long rss1 = rssKiB(d.pid());
    const long peak = statusKiB(d.pid(), "VmHWM");
    good.halt();

    INFO("good answers ", good.answered.load(), ", wrong ", good.wrong.load(), ", late ",
         good.late.load(), ", worst ", good.worstMs.load(), " ms (", good.worstRawMs.load(),
         " ms with the client's own starvation); RSS ", rssStart, " -> ", rss0, " -> ", rss1,
         " KiB, peak ", peak, " KiB");
    MESSAGE("good answers ", good.answered.load(), ", wrong ", good.wrong.load(), ", late ",
            good.late.load(), ", worst ", good.worstMs.load(), " ms (", good.worstRawMs.load(),
            " ms with the client's own starvation); RSS ", rssStart, " -> ", rss0, " -> ", rss1,
            " KiB, peak ", peak, " KiB");
    CHECK(good.wrong == 0);
    CHECK(good.late == 0);
    CHECK(good.lost == 0);
    CHECK(good.answered > 100);
    CHECK(good.worstMs < 2000);
    REQUIRE(rss0 > 0);
    REQUIRE(rss1 > 0);
    // Connection buffers are pooled per slot, so the warm-up round sized them; three more rounds
    // may add a little (allocator fragmentation), not a per-request amount.
    CHECK(rss1 - rss0 < (sanitizer ? 256 * 1024 : 16 * 1024));
    // And at its worst moment, no attack held more than a few connections' worth of buffers
    // (--max-pending-output and --max-pending-input, 256 KiB and 80 KiB each by default).
    CHECK(peak - rssStart < (sanitizer ? 512 * 1024 : 96 * 1024));
    // Still serving, and it shuts down cleanly.
    CHECK(d.text("PING") == "PONG");
    CHECK(d.stop() == 0);
  }
}
