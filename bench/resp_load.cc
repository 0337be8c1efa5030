// resp_load: an open-loop (or closed-loop) Redis GET load generator over a Unix socket, with the
// same schedule and latency histogram as tokenload, so that bench/compare can draw tokend's and
// Redis's latency against offered load on the same axes (redis-benchmark has no rate option).
//
// Each connection sends GET <prefix><12-digit key> for keys drawn uniformly from [0, --keys), the
// shape redis-benchmark's -r __rand_int__ gives. Open loop (--rate): requests fall due on a fixed
// schedule, the rate split evenly over the connections; latency counts from the moment a request
// fell due, not from when it went out, so a stalled server cannot hide its queue
// (coordinated omission). At most --depth requests are in flight per connection; what falls due
// beyond that is counted as backlog. Closed loop (no --rate): each connection keeps --depth
// requests in flight. One thread, one epoll loop. Prints one JSON object.
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/unique_fd.h"
#include "tools/load_histogram.h"

namespace {

using tokend::monotonicNanos;
using tokend::UniqueFd;
using tokend::tools::LatencyHistogram;

constexpr int64_t kNanos = 1'000'000'000;
constexpr int64_t kDrainNanos = 2 * kNanos;
constexpr size_t kKeyDigits = 12;

struct Options {
  std::string socket;
  size_t connections = 1;
  size_t depth = 1;
  double rate = 0;
  double duration = 5;
  double warmup = 0;
  uint64_t keys = 1;
  std::string prefix = "tok:";
  uint64_t seed = 1;
};

struct Stats {
  uint64_t sent = 0, answered = 0, measured = 0, nil = 0, errors = 0, backlog = 0;
  LatencyHistogram latency;
};

class Conn {
 public:
  UniqueFd fd;
  std::deque<int64_t> due;  // when each request in flight fell due (or was sent, closed loop)
  std::deque<bool> counted;
  std::string out, in;
  size_t inPos = 0;
  int64_t nextDue = 0;
  bool dead = false;

  // Appends one GET for key `k`.
  void add(uint64_t k, const std::string& prefix, int64_t dueAt, bool measured) {
    char digits[kKeyDigits + 1];
    std::snprintf(digits, sizeof digits, "%012llu", static_cast<unsigned long long>(k));
    out += fmt::format("*2\r\n$3\r\nGET\r\n${}\r\n{}{}\r\n", prefix.size() + kKeyDigits, prefix,
                       std::string_view(digits, kKeyDigits));
    due.push_back(dueAt);
    counted.push_back(measured);
  }
  bool flush() {
    while (!out.empty()) {
      ssize_t n = ::send(fd.get(), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN) return true;
        if (errno == EINTR) continue;
        dead = true;
        return false;
      }
      out.erase(0, static_cast<size_t>(n));
    }
    return true;
  }
  // Parses the answers read so far; calls done(ok, nil) for each.
  template <class Fn>
  void parse(Fn&& done) {
    for (;;) {
      std::string_view rest = std::string_view(in).substr(inPos);
      size_t eol = rest.find("\r\n");
      if (eol == std::string_view::npos) break;
      if (rest[0] == '$') {
        long len = std::strtol(std::string(rest.substr(1, eol - 1)).c_str(), nullptr, 10);
        if (len < 0) {
          inPos += eol + 2;
          done(true, true);
          continue;
        }
        size_t need = eol + 2 + static_cast<size_t>(len) + 2;
        if (rest.size() < need) break;
        inPos += need;
        done(true, false);
      } else {
        inPos += eol + 2;  // an error or an unexpected simple reply
        done(false, false);
      }
    }
    if (inPos > 0 && inPos == in.size()) {
      in.clear();
      inPos = 0;
    } else if (inPos > (1 << 16)) {
      in.erase(0, inPos);
      inPos = 0;
    }
  }
};

int run(const Options& o) {
  std::vector<Conn> conns(o.connections);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (o.socket.size() >= sizeof addr.sun_path) {
    fmt::print(stderr, "resp_load: socket path too long\n");
    return 2;
  }
  std::memcpy(addr.sun_path, o.socket.c_str(), o.socket.size() + 1);
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  for (Conn& c : conns) {
    c.fd = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(c.fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      fmt::print(stderr, "resp_load: connect {}: {}\n", o.socket, std::strerror(errno));
      return 3;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &c;
    ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, c.fd.get(), &ev);
  }
  const bool open = o.rate > 0;
  if (open) ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  const int64_t interval =
      open ? std::max<int64_t>(1, static_cast<int64_t>(1e9 * o.connections / o.rate)) : 0;
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<uint64_t> pick(0, o.keys - 1);
  Stats s;
  const int64_t start = monotonicNanos();
  const int64_t measureFrom = start + static_cast<int64_t>(o.warmup * 1e9);
  const int64_t end = measureFrom + static_cast<int64_t>(o.duration * 1e9);
  for (size_t i = 0; i < conns.size(); ++i) {
    Conn& c = conns[i];
    c.nextDue =
        start +
        (open ? interval * static_cast<int64_t>(i) / static_cast<int64_t>(conns.size()) : 0);
  }
  std::vector<epoll_event> events(conns.size());
  for (;;) {
    int64_t now = monotonicNanos();
    if (now >= end + kDrainNanos) break;
    int64_t wake = end + kDrainNanos;
    bool busy = false;
    for (Conn& c : conns) {
      if (c.dead) continue;
      if (now < end) {
        if (open) {
          while (c.nextDue <= now && c.due.size() < o.depth && c.nextDue < end) {
            c.add(pick(rng), o.prefix, c.nextDue, c.nextDue >= measureFrom);
            c.nextDue += interval;
            ++s.sent;
          }
          if (c.due.size() < o.depth && c.nextDue < end) wake = std::min(wake, c.nextDue);
        } else if (c.due.empty()) {
          for (size_t k = 0; k < o.depth; ++k) {
            c.add(pick(rng), o.prefix, now, now >= measureFrom);
            ++s.sent;
          }
        }
        c.flush();
      }
      if (!c.due.empty() || (now < end && (open ? c.nextDue < end : true))) busy = true;
    }
    if (!busy) break;
    int64_t waitNs = std::clamp<int64_t>(wake - now, 0, kNanos);
    timespec ts{waitNs / kNanos, waitNs % kNanos};
    int n =
        ::epoll_pwait2(epoll.get(), events.data(), static_cast<int>(events.size()), &ts, nullptr);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; ++i) {
      Conn& c = *static_cast<Conn*>(events[i].data.ptr);
      char buf[65536];
      for (;;) {
        ssize_t r = ::recv(c.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) {
          c.in.append(buf, static_cast<size_t>(r));
          if (static_cast<size_t>(r) < sizeof buf) break;
          continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR)) c.dead = true;
        break;
      }
      const int64_t at = monotonicNanos();
      c.parse([&](bool ok, bool nil) {
        if (c.due.empty()) return;
        int64_t dueAt = c.due.front();
        bool measured = c.counted.front();
        c.due.pop_front();
        c.counted.pop_front();
        ++s.answered;
        if (!ok) ++s.errors;
        if (nil) ++s.nil;
        if (measured && dueAt < end) {
          ++s.measured;
          s.latency.record(static_cast<uint64_t>(std::max<int64_t>(0, at - dueAt)));
        }
      });
    }
  }
  uint64_t lost = 0;
  for (Conn& c : conns) {
    if (open && c.nextDue < end) {
      s.backlog += static_cast<uint64_t>((end - c.nextDue + interval - 1) / interval);
    }
    lost += c.due.size();
  }
  const double seconds = o.duration;
  auto us = [&](double q) { return static_cast<double>(s.latency.percentile(q)) / 1e3; };
  nlohmann::json j = {{"config",
                       {{"socket", o.socket},
                        {"connections", o.connections},
                        {"depth", o.depth},
                        {"rate", o.rate},
                        {"mode", open ? "open" : "closed"},
                        {"duration_s", o.duration},
                        {"warmup_s", o.warmup},
                        {"keys", o.keys}}},
                      {"requests", s.measured},
                      {"sent", s.sent},
                      {"answered", s.answered},
                      {"errors",
                       {{"nil", s.nil},
                        {"error_replies", s.errors},
                        {"lost", lost},
                        {"open_loop_backlog", s.backlog}}},
                      {"throughput_rps", static_cast<double>(s.measured) / seconds},
                      {"latency_us",
                       {{"min", static_cast<double>(s.latency.min()) / 1e3},
                        {"mean", s.latency.mean() / 1e3},
                        {"p50", us(50)},
                        {"p90", us(90)},
                        {"p99", us(99)},
                        {"p999", us(99.9)},
                        {"max", static_cast<double>(s.latency.max()) / 1e3}}},
                      {"ok", s.nil == 0 && s.errors == 0 && lost == 0}};
  fmt::print("{}\n", j.dump(2));
  return j["ok"].get<bool>() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"resp_load: open- or closed-loop Redis GET load over a Unix socket (bench/compare)",
               "resp_load"};
  Options o;
  app.add_option("--socket", o.socket, "Redis's Unix socket")->required();
  app.add_option("-c,--connections", o.connections, "Connections")->check(CLI::Range(1, 10000));
  app.add_option("-P,--depth", o.depth, "Requests in flight per connection at most")
      ->check(CLI::Range(1, 4096));
  app.add_option("--rate", o.rate, "Open loop: total requests per second (default: closed loop)");
  app.add_option("-d,--duration", o.duration, "Measured seconds (default 5)");
  app.add_option("--warmup", o.warmup, "Seconds of load before measuring (default 0)");
  app.add_option("--keys", o.keys, "Keys are <prefix><12 digits> for 0 .. keys-1")
      ->check(CLI::Range(uint64_t{1}, uint64_t{999'999'999'999}));
  app.add_option("--prefix", o.prefix, "Key prefix (default tok:)");
  app.add_option("--seed", o.seed, "Seed of the key choice");
  CLI11_PARSE(app, argc, argv);
  return run(o);
}
