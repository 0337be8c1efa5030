// Fault test: tokend restarted under load (SIGTERM and SIGKILL in turn) while clients keep
// verifying; tokens are revoked while it is down. Clients reconnect, every answer is right for
// the state of the database at the time, and each restart is serving again within seconds.
#include <doctest/doctest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
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

struct Expectations {
  std::mutex mu;
  std::map<std::string, std::string> reason;  // token -> "ok" or the deny reason

  std::string of(const std::string& t) {
    std::lock_guard l(mu);
    return reason.at(t);
  }
  void set(const std::string& t, const std::string& r) {
    std::lock_guard l(mu);
    reason[t] = r;
  }
};

// The answer line of the text protocol, or the binary result, as "ok" / a reason / "" (no answer).
std::string textVerify(int fd, const std::string& token) {
  if (!sendAll(fd, "VERIFY " + token + "\n")) return "";
  std::string a = readLines(fd, 1, 3000);
  if (a.empty() || a.back() != '\n') return "";
  if (a.rfind("OK ", 0) == 0) return "ok";
  if (a.rfind("DENY ", 0) == 0) return a.substr(5, a.find(' ', 5) - 5);
  return "bad answer: " + a;
}

std::string binaryVerify(int fd, const std::string& token, uint64_t id) {
  std::string req;
  if (!tokend::daemon::encodeVerify(req, id, {token, "", "", ""})) return "encode failed";
  if (!sendAll(fd, req)) return "";
  std::string in = readBytes(fd, tokend::daemon::kFrameHeaderSize, 3000);
  if (in.size() < tokend::daemon::kFrameHeaderSize) return "";
  size_t want = tokend::daemon::kFrameHeaderSize + (static_cast<uint8_t>(in[4]) |
                                                    (static_cast<uint8_t>(in[5]) << 8) |
                                                    (static_cast<uint8_t>(in[6]) << 16));
  in += readBytes(fd, want - in.size(), 3000);
  auto p = tokend::daemon::parseFrame(in);
  if (p.status != tokend::daemon::ParseStatus::Complete) return "";
  if (p.frame.header.requestId != id) return "bad answer: request id";
  auto r = tokend::daemon::decodeVerifyResult(p.frame.payload);
  if (!r) return "bad answer: " + r.error().message;
  return std::string(tokend::verifier::reasonName(r->answer.reason));
}

}  // namespace

TEST_SUITE("Restart") {
  TEST_CASE("clients reconnect across restarts under load and never get a wrong answer") {
    Daemon d({"--threads", "2", "--writeback-interval-ms", "50"});
    d.ctlOk({"users", "create", "load"});
    Expectations expect;
    std::vector<std::string> tokens;
    for (int i = 0; i < 12; ++i) {
      tokens.push_back(
          d.ctlOk({"tokens", "create", "--user", "load", "--name", "t" + std::to_string(i)}));
      expect.set(tokens.back(), "ok");
    }
    std::string expired = d.ctlOk({"tokens", "create", "--user", "load", "--name", "gone"});
    d.ctlOk({"tokens", "remove", "gone", "--user", "load"});
    tokens.push_back(expired);
    expect.set(expired, "expired");
    tokens.push_back("AAAAAAAAAA-0123456789012345678901");
    expect.set(tokens.back(), "unknown");

    std::atomic<bool> stop{false};
    std::atomic<int> wrong{0}, answered{0}, reconnects{0};
    std::mutex wrongMu;
    std::vector<std::string> wrongAnswers;
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c) {
      clients.emplace_back([&, c] {
        std::mt19937 rng(c);
        UniqueFd fd;
        uint64_t id = 0;
        while (!stop.load()) {
          if (!fd) {
            fd = connectUnix(d.socket());
            if (!fd) {
              std::this_thread::sleep_for(std::chrono::milliseconds(5));
              continue;
            }
            ++reconnects;
          }
          const std::string& t = tokens[rng() % tokens.size()];
          const std::string want = expect.of(t);
          std::string got = c % 2 ? binaryVerify(fd.get(), t, ++id) : textVerify(fd.get(), t);
          if (got.empty()) {  // the daemon went away mid-request: reconnect and go on
            fd.reset();
            continue;
          }
          ++answered;
          if (got != want) {
            ++wrong;
            std::lock_guard l(wrongMu);
            wrongAnswers.push_back(t.substr(0, 10) + ": want " + want + ", got " + got);
          }
        }
      });
    }

    for (int round = 0; round < 8; ++round) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      const int before = answered.load();
      if (round % 2 == 0) {
        CHECK(d.stop() == 0);  // graceful: answers what it read, commits, exits 0
      } else {
        d.kill(SIGKILL);
      }
      // While it is down, tokens change underneath.
      const std::string& victim = tokens[round];
      if (round % 3 == 0) {
        d.ctlOk({"tokens", "remove", victim.substr(0, 10), "--delete"});
        expect.set(victim, "unknown");
      } else {
        d.ctlOk({"tokens", "remove", victim.substr(0, 10)});
        expect.set(victim, "expired");
      }
      const int down = answered.load();
      d.restart();
      auto t0 = Clock::now();
      while (answered.load() < down + 50 && Clock::now() - t0 < std::chrono::seconds(10))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      CAPTURE(round);
      CHECK(answered.load() >= down + 50);  // serving again
      CHECK(down >= before);
    }
    stop = true;
    for (auto& t : clients) t.join();
    std::string all;
    for (const auto& w : wrongAnswers) all += w + "\n";
    INFO(all);
    CHECK(wrong == 0);
    CHECK(reconnects >= 8);
    CHECK(d.stop() == 0);
  }
}
