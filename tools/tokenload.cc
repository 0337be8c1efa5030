// tokenload: tokend's load generator and latency meter (SPEC 1): closed- or open-loop VERIFY
// load over the binary, text or HTTP protocol on one Unix socket, with a token mix whose every
// answer is checked, and latency percentiles from a log-linear histogram.
//
// Shape of a run: each client thread owns some connections and one epoll loop (or, when it owns a
// single closed-loop connection, blocking send/recv, one syscall fewer per round trip). Requests
// are pre-encoded templates with the token patched in, a whole pipeline batch goes out in one
// send(), and answers are parsed incrementally from one read buffer per connection. Which token
// each request uses is drawn before the run into a per-thread ring, so the hot loop draws no
// random numbers. Every answer is compared with the reason its request must get (the mix says
// which), so a wrong verdict under load shows up as a counter rather than as a fast benchmark.
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <latch>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/unique_fd.h"
#include "tools/load_histogram.h"
#include "tools/load_tokens.h"
#include "tools/load_wire.h"
#include "verifier/token.h"
#include "verifier/verify.h"

#ifdef TOKENLOAD_HAVE_LIBTOKEND
#include <tokend/client.h>
#endif

namespace tokend::tools {
namespace {

using verifier::kTokenIdLength;
using verifier::kTokenLength;
using verifier::Reason;

constexpr int kExitWrong = 1;  // the run finished but saw wrong answers, errors or no answers
constexpr int kExitUsage = 2;
constexpr int kExitSetup = 3;  // tokens or connections could not be set up

constexpr int64_t kNanos = 1'000'000'000;
// After the end of the run, answers still in flight get this long to arrive before they are
// counted as lost: a run stays bounded even when the daemon stops answering.
constexpr int64_t kDrainNanos = 2 * kNanos;
constexpr size_t kUnknownPool = 4096;
constexpr size_t kReadBuffer = 64 * 1024;

// What a request is meant to test, and so which verdict it must get.
enum class Kind : uint8_t { Valid, Unknown, BadSecret, Expired, Scope };
constexpr size_t kKinds = 5;
constexpr std::string_view kKindNames[kKinds] = {"valid", "unknown", "bad_secret", "expired",
                                                 "scope"};
constexpr Reason kExpected[kKinds] = {Reason::Ok, Reason::Unknown, Reason::BadSecret,
                                      Reason::Expired, Reason::Scope};

// A pick is one planned request: its kind in the top 3 bits, the token's index in its pool below.
constexpr int kPickKindShift = 29;
constexpr uint32_t kPickIndexMask = (1u << kPickKindShift) - 1;
constexpr uint32_t makePick(Kind k, uint32_t index) {
  return static_cast<uint32_t>(k) << kPickKindShift | index;
}
constexpr Kind pickKind(uint32_t p) {
  return static_cast<Kind>(p >> kPickKindShift);
}
constexpr uint32_t pickIndex(uint32_t p) {
  return p & kPickIndexMask;
}

struct Options {
  std::string socket;
  std::string protocol = "binary";
  std::string mode = "socket";
  size_t connections = 1;
  size_t depth = 1;
  size_t threads = 1;
  std::string duration = "10s";
  std::string warmup = "0s";
  uint64_t requests = 0;  // 0: bounded by the duration only
  double rate = 0;        // total requests/s; 0: closed loop
  std::string db;
  size_t tokens = 1000;  // with --db; with --token-file alone, all of the file unless given
  std::string tokenFile;
  std::string mix = "valid=90,unknown=5,bad_secret=2,expired=1,scope=2";
  std::string dist = "uniform";
  double zipfS = 1.0;
  std::string permission;
  std::string deniedPermission = "template:delete";
  uint64_t seed = 0;
  bool json = false;
};

// "10s", "500ms", "1m30s", "2.5s": a sum of <number><unit>, unit ns, us, ms, s, m or h.
Result<int64_t> parseNanos(std::string_view text) {
  if (text == "0") return int64_t{0};
  if (text.empty()) return makeError("empty duration");
  double total = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    while (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) ++i;
    if (start == i) return makeError(fmt::format("bad duration \"{}\"", text));
    double number = std::strtod(std::string(text.substr(start, i - start)).c_str(), nullptr);
    size_t unitStart = i;
    while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
    std::string_view unit = text.substr(unitStart, i - unitStart);
    double scale = unit == "ns"   ? 1
                   : unit == "us" ? 1e3
                   : unit == "ms" ? 1e6
                   : unit == "s"  ? 1e9
                   : unit == "m"  ? 60e9
                   : unit == "h"  ? 3600e9
                                  : -1;
    if (scale < 0) {
      return makeError(fmt::format("bad duration \"{}\": want units ns, us, ms, s, m or h", text));
    }
    total += number * scale;
  }
  if (total > 1e18) return makeError(fmt::format("duration \"{}\" is too long", text));
  return static_cast<int64_t>(total);
}

// "valid=90,unknown=5,...": weights of the request kinds, normalised to shares summing to 1.
Result<std::array<double, kKinds>> parseMix(std::string_view text) {
  std::array<double, kKinds> w{};
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = text.substr(pos, comma - pos);
    pos = comma + 1;
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string_view::npos)
      return makeError(fmt::format("mix item \"{}\": want kind=weight", item));
    std::string_view name = item.substr(0, eq);
    auto it = std::find(std::begin(kKindNames), std::end(kKindNames), name);
    if (it == std::end(kKindNames)) {
      return makeError(fmt::format(
          "mix kind \"{}\" unknown: want valid, unknown, bad_secret, expired or scope", name));
    }
    std::string number(item.substr(eq + 1));
    char* end = nullptr;
    double v = std::strtod(number.c_str(), &end);
    if (number.empty() || *end != '\0' || !(v >= 0) || !std::isfinite(v)) {
      return makeError(fmt::format("mix weight \"{}\" is not a non-negative number", item));
    }
    w[static_cast<size_t>(it - std::begin(kKindNames))] = v;
  }
  double sum = 0;
  for (double v : w) sum += v;
  if (sum <= 0) return makeError("the mix has no weight");
  for (double& v : w) v /= sum;
  return w;
}

// --- The plan: everything the threads read and nothing they write ---------------------------

struct Plan {
  Wire wire = Wire::Binary;
  RequestTemplate asked;   // VERIFY for --permission
  RequestTemplate denied;  // VERIFY for --deny-permission (the scope kind)
  // The pools, kTokenLength bytes per token, back to back.
  std::string valid, expired, unknown;
  size_t validCount = 0, expiredCount = 0, unknownCount = 0;
  std::array<double, kKinds> mix{};  // shares, summing to 1
  std::vector<double> zipfCdf;       // empty: uniform over the valid pool
  size_t depth = 1;
  bool openLoop = false;
  int64_t intervalNanos = 0;  // open loop: between two requests of one connection
  uint64_t seed = 0;
  std::atomic<int64_t>* budget = nullptr;  // measured requests still to send; null: no limit

  // Set by the main thread before the threads are released.
  int64_t startNs = 0;
  int64_t measureNs = 0;  // end of warmup
  int64_t endNs = 0;

  const char* token(uint32_t pick) const {
    uint32_t i = pickIndex(pick);
    switch (pickKind(pick)) {
      case Kind::Unknown:
        return unknown.data() + size_t{i} * kTokenLength;
      case Kind::Expired:
        return expired.data() + size_t{i} * kTokenLength;
      default:
        return valid.data() + size_t{i} * kTokenLength;
    }
  }
};

// The planned requests of one thread, drawn once: a power-of-two ring so the index wraps with a
// mask. Four draws per valid token (at least 64k) keep the uniform case covering the whole pool
// and the Zipf case close to its distribution.
std::vector<uint32_t> drawPicks(const Plan& plan, uint64_t seed) {
  size_t want = std::clamp<size_t>(plan.validCount * 4, size_t{1} << 16, size_t{1} << 22);
  size_t n = std::bit_ceil(want);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<uint32_t> picks(n);
  std::array<double, kKinds> cumulative{};
  double acc = 0;
  for (size_t k = 0; k < kKinds; ++k) cumulative[k] = acc += plan.mix[k];
  auto uniform = [&](size_t count) { return static_cast<uint32_t>(rng() % count); };
  for (uint32_t& p : picks) {
    double u = unit(rng);
    size_t k = 0;
    while (k + 1 < kKinds && (u >= cumulative[k] || plan.mix[k] == 0)) ++k;
    // Rounding can leave u past the last cumulative share: take the last kind with a weight.
    while (plan.mix[k] == 0) --k;
    auto kind = static_cast<Kind>(k);
    uint32_t index = 0;
    switch (kind) {
      case Kind::Unknown:
        index = uniform(plan.unknownCount);
        break;
      case Kind::Expired:
        index = uniform(plan.expiredCount);
        break;
      default:
        if (plan.zipfCdf.empty()) {
          index = uniform(plan.validCount);
        } else {
          double v = unit(rng) * plan.zipfCdf.back();
          index = static_cast<uint32_t>(
              std::upper_bound(plan.zipfCdf.begin(), plan.zipfCdf.end(), v) - plan.zipfCdf.begin());
          index = std::min<uint32_t>(index, static_cast<uint32_t>(plan.validCount - 1));
        }
    }
    p = makePick(kind, index);
  }
  return picks;
}

// --- Per-thread results ------------------------------------------------------------------------

struct Stats {
  LatencyHistogram latency;  // measured answers, nanoseconds
  uint64_t sent = 0;         // measured requests sent
  uint64_t answered = 0;     // measured answers
  uint64_t answeredAll = 0;  // answers of the whole run, warmup included (server CPU per request)
  std::array<uint64_t, verifier::kReasonCount> outcomes{};  // measured verdicts by reason
  // Errors over the whole run, warmup included:
  uint64_t wrong = 0;       // a verdict other than the one its request must get
  uint64_t refused = 0;     // an answer that is not a verdict (ERR, ERROR frame, a bad answer)
  uint64_t idMismatch = 0;  // binary: an answer whose request id is not the next one expected
  uint64_t broken = 0;      // connections whose byte stream could not be followed
  uint64_t closed = 0;      // connections the daemon closed or reset before the end
  uint64_t lost = 0;        // requests never answered (in flight at a close, or after the drain)
  uint64_t backlog = 0;     // open loop: requests due by the end that a full window held back
  int64_t lastAnswerNs = 0;

  void merge(const Stats& o) {
    latency.merge(o.latency);
    sent += o.sent;
    answered += o.answered;
    answeredAll += o.answeredAll;
    for (size_t i = 0; i < outcomes.size(); ++i) outcomes[i] += o.outcomes[i];
    wrong += o.wrong;
    refused += o.refused;
    idMismatch += o.idMismatch;
    broken += o.broken;
    closed += o.closed;
    lost += o.lost;
    backlog += o.backlog;
    lastAnswerNs = std::max(lastAnswerNs, o.lastAnswerNs);
  }
};

// --- Connections -------------------------------------------------------------------------------

struct InFlight {
  int64_t startNs = 0;  // closed loop: when its batch was sent; open loop: its scheduled time
  uint64_t id = 0;
  uint32_t pick = 0;
  bool measured = false;
};

class Connection {
 public:
  UniqueFd fd;
  bool dead = false;
  bool done = false;  // sends nothing more: the run's end or the request budget
  bool wantWrite = false;
  int64_t nextDue = 0;  // open loop

  Connection(const Plan& plan, const std::vector<uint32_t>& picks, size_t firstPick, Stats& stats)
      : plan_(plan), picks_(picks), pickPos_(firstPick), stats_(stats) {
    fifo_.resize(plan.depth);
    in_.resize(kReadBuffer);
    out_.reserve(plan.depth * (plan.asked.bytes.size() + plan.denied.bytes.size()));
  }

  size_t inFlight() const { return fifoCount_; }
  bool outPending() const { return outOff_ < out_.size(); }

  // Appends one request to the output. `startNs` is when its latency starts.
  void add(int64_t startNs, bool measured) {
    uint32_t pick = picks_[pickPos_++ & (picks_.size() - 1)];
    Kind kind = pickKind(pick);
    const RequestTemplate& t = kind == Kind::Scope ? plan_.denied : plan_.asked;
    size_t at = out_.size();
    uint64_t id = nextId_++;
    appendRequest(out_, t, plan_.token(pick), id);
    if (kind == Kind::BadSecret) {
      // The last secret character changed to another alphanumeric: the id still matches.
      char& c = out_[at + t.tokenOffset + kTokenLength - 1];
      c = c == 'a' ? 'b' : 'a';
    }
    InFlight& f = fifo_[(fifoHead_ + fifoCount_) % fifo_.size()];
    f = InFlight{startNs, id, pick, measured};
    ++fifoCount_;
    if (measured) ++stats_.sent;
  }

  // Closed loop: sets the start time of the last `n` requests added (a batch is timed from just
  // before its send, after it was built).
  void stampLast(size_t n, int64_t startNs) {
    for (size_t i = fifoCount_ - n; i < fifoCount_; ++i)
      fifo_[(fifoHead_ + i) % fifo_.size()].startNs = startNs;
  }

  // Sends what is pending. False when the connection failed (it is then dead).
  bool flush(bool blocking) {
    while (outOff_ < out_.size()) {
      ssize_t n = ::send(fd.get(), out_.data() + outOff_, out_.size() - outOff_,
                         MSG_NOSIGNAL | (blocking ? 0 : MSG_DONTWAIT));
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN && !blocking) return true;  // the caller waits for EPOLLOUT
        // Blocking sockets have a send timeout so that a daemon that stops reading cannot hold
        // the run past its end.
        if (errno == EAGAIN && monotonicNanos() < plan_.endNs + kDrainNanos) continue;
        fail();
        return false;
      }
      outOff_ += static_cast<size_t>(n);
    }
    out_.clear();
    outOff_ = 0;
    return true;
  }

  // Reads once and handles every whole answer. False when the connection ended.
  bool readAnswers() {
    if (inTail_ == in_.size()) {
      // A partial answer fills the buffer: move it to the front, or grow for a huge one.
      if (inHead_ > 0) {
        std::memmove(in_.data(), in_.data() + inHead_, inTail_ - inHead_);
        inTail_ -= inHead_;
        inHead_ = 0;
      } else {
        in_.resize(in_.size() * 2);
      }
    }
    ssize_t n = ::recv(fd.get(), in_.data() + inTail_, in_.size() - inTail_, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) return true;
      fail();
      return false;
    }
    if (n == 0) {
      fail();
      return false;
    }
    inTail_ += static_cast<size_t>(n);
    int64_t now = monotonicNanos();
    while (inHead_ < inTail_) {
      Answer a = parseAnswer(plan_.wire, std::string_view(in_.data() + inHead_, inTail_ - inHead_));
      if (a.status == AnswerStatus::NeedMore) break;
      if (a.status == AnswerStatus::Broken || fifoCount_ == 0) {
        // Bytes that are no answer, or an answer to nothing: the stream cannot be followed.
        ++stats_.broken;
        fail();
        return false;
      }
      inHead_ += a.consumed;
      InFlight f = fifo_[fifoHead_];
      fifoHead_ = (fifoHead_ + 1) % fifo_.size();
      --fifoCount_;
      check(a, f);
      ++stats_.answeredAll;
      if (f.measured) {
        stats_.latency.record(static_cast<uint64_t>(std::max<int64_t>(0, now - f.startNs)));
        ++stats_.answered;
        if (a.status == AnswerStatus::Verdict) ++stats_.outcomes[static_cast<size_t>(a.reason)];
        stats_.lastAnswerNs = now;
      }
      if (a.closes) {
        // The daemon said it closes after this answer: whatever else is in flight is lost.
        fail();
        return false;
      }
    }
    if (inHead_ == inTail_)
      inHead_ = inTail_ = 0;
    else if (in_.size() - inTail_ < 4096) {
      std::memmove(in_.data(), in_.data() + inHead_, inTail_ - inHead_);
      inTail_ -= inHead_;
      inHead_ = 0;
    }
    return true;
  }

  // The end of the run: what is still in flight will not be answered.
  void abandon() {
    stats_.lost += fifoCount_;
    fifoCount_ = 0;
  }

 private:
  void check(const Answer& a, const InFlight& f) {
    if (plan_.wire == Wire::Binary && a.requestId != f.id) ++stats_.idMismatch;
    if (a.status != AnswerStatus::Verdict) {
      ++stats_.refused;
      return;
    }
    Kind kind = pickKind(f.pick);
    if (a.reason != kExpected[static_cast<size_t>(kind)]) {
      ++stats_.wrong;
      return;
    }
    // An ok must be for the token asked about (a cache that mixed entries up would pass the
    // reason check).
    if (a.reason == Reason::Ok &&
        a.tokenId != std::string_view(plan_.token(f.pick), kTokenIdLength)) {
      ++stats_.wrong;
    }
  }

  void fail() {
    if (!dead) {
      if (!done || fifoCount_ > 0) ++stats_.closed;
      dead = true;
      done = true;
      abandon();
      fd.reset();
    }
  }

  const Plan& plan_;
  const std::vector<uint32_t>& picks_;
  size_t pickPos_;
  Stats& stats_;
  std::vector<InFlight> fifo_;  // ring of `depth` entries
  size_t fifoHead_ = 0, fifoCount_ = 0;
  uint64_t nextId_ = 1;
  std::string out_;
  size_t outOff_ = 0;
  std::vector<char> in_;
  size_t inHead_ = 0, inTail_ = 0;
};

Result<UniqueFd> connectUnix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return makeError("socket path is too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::fromErrno(errno, "Failed to create a socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Error::fromErrno(errno, "Failed to connect to " + path);
  }
  return fd;
}

// Takes up to `want` requests from the run's budget; all of them when there is no budget.
size_t takeBudget(const Plan& plan, size_t want) {
  if (plan.budget == nullptr) return want;
  int64_t left = plan.budget->fetch_sub(static_cast<int64_t>(want), std::memory_order_relaxed);
  if (left <= 0) return 0;
  return std::min<size_t>(want, static_cast<size_t>(left));
}

// --- One client thread -------------------------------------------------------------------------

// A client thread's work: prepare() connects and draws the picks before the common start;
// run() is the measured run.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual Result<void> prepare(const std::string& socket) = 0;
  virtual void run() = 0;
  Stats& stats() { return stats_; }

 protected:
  Stats stats_;
};

// The socket modes: the wire protocols over the daemon's Unix socket.
class Worker final : public Runner {
 public:
  Worker(const Plan& plan, size_t index, size_t connections)
      : plan_(plan), index_(index), connectionCount_(connections) {}

  Result<void> prepare(const std::string& socket) override {
    picks_ = drawPicks(plan_, plan_.seed + 0x9E3779B97F4A7C15ull * (index_ + 1));
    std::mt19937_64 rng(plan_.seed ^ (index_ + 77));
    conns_.reserve(connectionCount_);
    for (size_t i = 0; i < connectionCount_; ++i) {
      auto fd = connectUnix(socket);
      if (!fd) return fd.error();
      // Each connection starts at its own place in the ring, so they do not ask in lockstep.
      conns_.emplace_back(plan_, picks_, static_cast<size_t>(rng()), stats_);
      conns_.back().fd = std::move(*fd);
    }
    return {};
  }

  void run() override {
    // A batch sent blocking must fit the socket buffer: while send() blocks nobody reads the
    // answers, and a daemon whose answers back up may stop reading too.
    size_t batchBytes = plan_.depth * std::max(plan_.asked.bytes.size(), plan_.denied.bytes.size());
    if (!plan_.openLoop && conns_.size() == 1 && batchBytes <= 64 * 1024) {
      runBlocking();
    } else {
      runEpoll();
    }
  }

 private:
  // Closed loop: the next batch of `depth` requests, timed from its send.
  void sendBatch(Connection& c, int64_t now, bool blocking) {
    if (c.done) return;
    if (now >= plan_.endNs) {
      c.done = true;
      return;
    }
    bool measured = now >= plan_.measureNs;
    size_t n = measured ? takeBudget(plan_, plan_.depth) : plan_.depth;
    if (n == 0) {
      c.done = true;
      return;
    }
    for (size_t i = 0; i < n; ++i) c.add(now, measured);
    c.stampLast(n, monotonicNanos());
    if (c.flush(blocking) && c.outPending()) want(c, true);
  }

  // One closed-loop connection: blocking send and recv, with a receive timeout so that a daemon
  // that stops answering cannot hold the run past its end.
  void runBlocking() {
    Connection& c = conns_.front();
    timeval tv{0, 100000};
    ::setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(c.fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    while (!c.dead) {
      if (c.inFlight() == 0) {
        sendBatch(c, monotonicNanos(), true);
        if (c.inFlight() == 0) break;  // done
      }
      if (!c.readAnswers()) break;
      if (c.inFlight() > 0 && monotonicNanos() >= plan_.endNs + kDrainNanos) {
        c.abandon();
        break;
      }
    }
  }

  void want(Connection& c, bool write) {
    if (c.wantWrite == write || c.dead) return;
    c.wantWrite = write;
    epoll_event ev{};
    ev.events = write ? uint32_t{EPOLLIN | EPOLLOUT} : uint32_t{EPOLLIN};
    ev.data.ptr = &c;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
  }

  // Open loop: sends every request whose time has come, as far as the window allows. Each is
  // timed from its scheduled time, not from when it went out, so that a slow daemon's queueing
  // is counted (no coordinated omission).
  void sendDue(Connection& c, int64_t now) {
    if (c.done) return;
    if (now >= plan_.endNs) {
      // What fell due but never went out is counted as backlog at the end, not sent late.
      c.done = true;
      return;
    }
    size_t added = 0;
    while (c.nextDue <= now && c.inFlight() < plan_.depth) {
      if (c.nextDue >= plan_.endNs) {
        c.done = true;
        break;
      }
      bool measured = c.nextDue >= plan_.measureNs;
      if (measured && takeBudget(plan_, 1) == 0) {
        c.done = true;
        c.nextDue = INT64_MAX;  // ended by the budget: nothing is held back
        break;
      }
      c.add(c.nextDue, measured);
      c.nextDue += plan_.intervalNanos;
      ++added;
    }
    if (c.nextDue >= plan_.endNs) c.done = true;
    if (added > 0 && c.flush(false) && c.outPending()) want(c, true);
  }

  void runEpoll() {
    epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
    if (plan_.openLoop) {
      // The default 50 us timer slack would blur the schedule of a fast open-loop run.
      ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    }
    for (size_t i = 0; i < conns_.size(); ++i) {
      Connection& c = conns_[i];
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = &c;
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd.get(), &ev);
      if (plan_.openLoop) {
        // Connections of all threads spread evenly over one interval.
        c.nextDue = plan_.startNs +
                    static_cast<int64_t>((index_ + i * 7919) % 1024 * plan_.intervalNanos / 1024);
      } else {
        sendBatch(c, monotonicNanos(), false);
      }
    }
    std::vector<epoll_event> events(std::max<size_t>(conns_.size(), 1));
    for (;;) {
      int64_t now = monotonicNanos();
      int64_t wake = plan_.endNs + kDrainNanos;
      bool busy = false;
      for (Connection& c : conns_) {
        if (c.dead) continue;
        if (plan_.openLoop) {
          sendDue(c, now);
          if (!c.done && c.inFlight() < plan_.depth) wake = std::min(wake, c.nextDue);
        } else if (c.inFlight() == 0) {
          sendBatch(c, now, false);
        }
        if (!c.done || c.inFlight() > 0) busy = true;
      }
      if (!busy) break;
      if (now >= plan_.endNs + kDrainNanos) break;
      int64_t waitNs = std::max<int64_t>(0, wake - now);
      timespec ts{waitNs / kNanos, waitNs % kNanos};
      int n = ::epoll_pwait2(epoll_.get(), events.data(), static_cast<int>(events.size()), &ts,
                             nullptr);
      if (n < 0) {
        if (errno == EINTR) continue;
        break;
      }
      for (int i = 0; i < n; ++i) {
        auto& c = *static_cast<Connection*>(events[i].data.ptr);
        if (c.dead) continue;
        if (events[i].events & EPOLLOUT) {
          if (c.flush(false) && !c.outPending()) want(c, false);
        }
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) c.readAnswers();
        if (!plan_.openLoop && !c.dead && c.inFlight() == 0) sendBatch(c, monotonicNanos(), false);
      }
    }
    for (Connection& c : conns_) {
      if (plan_.openLoop && c.nextDue < plan_.endNs) {
        // Requests that fell due while the window was full and never went out.
        stats_.backlog += static_cast<uint64_t>(
            (plan_.endNs - c.nextDue + plan_.intervalNanos - 1) / plan_.intervalNanos);
      }
      c.abandon();
    }
  }

  const Plan& plan_;
  size_t index_;
  size_t connectionCount_;
  std::vector<uint32_t> picks_;
  std::vector<Connection> conns_;
  UniqueFd epoll_;
};

#ifdef TOKENLOAD_HAVE_LIBTOKEND
// --mode shm: libtokend's tokend_verify_batch() (tokend_verify() at depth 1), which decides cached
// tokens in this process from the shared-memory segment and asks the daemon over the socket for
// the rest. One client handle per connection; a thread takes its handles in turn, a batch each,
// closed loop. Answers are checked as in the socket modes (reason, and the token id of an ok).
class ShmWorker final : public Runner {
 public:
  ShmWorker(const Plan& plan, size_t index, size_t connections, const Options& o)
      : plan_(plan),
        index_(index),
        handleCount_(connections),
        permission_(o.permission),
        denied_(o.deniedPermission) {}
  ~ShmWorker() override {
    for (tokend_client* c : clients_) tokend_close(c);
  }

  Result<void> prepare(const std::string& socket) override {
    picks_ = drawPicks(plan_, plan_.seed + 0x9E3779B97F4A7C15ull * (index_ + 1));
    std::mt19937_64 rng(plan_.seed ^ (index_ + 77));
    pickPos_ = static_cast<size_t>(rng());
    for (size_t i = 0; i < handleCount_; ++i) {
      tokend_client* c = nullptr;
      if (int rc = tokend_open(socket.c_str(), &c); rc < 0) {
        return Error::fromErrno(-rc, "Failed to open a libtokend client on " + socket);
      }
      clients_.push_back(c);
      if (tokend_shm_state(c) != TOKEND_SHM_MAPPED) unmapped_ = tokend_last_error(c);
    }
    tokens_.resize(plan_.depth * (kTokenLength + 1));
    requests_.resize(plan_.depth);
    results_.resize(plan_.depth);
    batch_.resize(plan_.depth);
    return {};
  }

  void run() override {
    for (size_t turn = 0;; ++turn) {
      tokend_client* c = clients_[turn % clients_.size()];
      int64_t now = monotonicNanos();
      if (now >= plan_.endNs) break;
      bool measured = now >= plan_.measureNs;
      size_t n = measured ? takeBudget(plan_, plan_.depth) : plan_.depth;
      if (n == 0) break;
      for (size_t i = 0; i < n; ++i) {
        uint32_t pick = picks_[pickPos_++ & (picks_.size() - 1)];
        char* t = tokens_.data() + i * (kTokenLength + 1);
        std::memcpy(t, plan_.token(pick), kTokenLength);
        t[kTokenLength] = '\0';
        if (pickKind(pick) == Kind::BadSecret) {
          t[kTokenLength - 1] = t[kTokenLength - 1] == 'a' ? 'b' : 'a';
        }
        const std::string& perm = pickKind(pick) == Kind::Scope ? denied_ : permission_;
        requests_[i] = tokend_request{t, perm.c_str(), nullptr, nullptr};
        batch_[i] = pick;
      }
      if (measured) stats_.sent += n;
      int64_t start = monotonicNanos();
      int rc = n == 1 ? tokend_verify(c, requests_[0].token, requests_[0].permission, nullptr,
                                      nullptr, results_.data())
                      : tokend_verify_batch(c, requests_.data(), n, results_.data());
      int64_t end = monotonicNanos();
      if (rc < 0) {
        // No answer could be had: the library has already tried to reconnect once.
        ++stats_.closed;
        stats_.lost += n;
        continue;
      }
      for (size_t i = 0; i < n; ++i) {
        const tokend_result& r = results_[i];
        auto reason = verifier::parseReason(r.reason ? r.reason : "");
        if (!reason) {
          ++stats_.refused;
        } else if (*reason != kExpected[static_cast<size_t>(pickKind(batch_[i]))] ||
                   (*reason == Reason::Ok &&
                    std::string_view(r.token_id) !=
                        std::string_view(plan_.token(batch_[i]), kTokenIdLength))) {
          ++stats_.wrong;
        }
        if (r.via_shm) ++viaShm_;
        ++stats_.answeredAll;
        if (measured) {
          stats_.latency.record(static_cast<uint64_t>(end - start));
          ++stats_.answered;
          if (reason) ++stats_.outcomes[static_cast<size_t>(*reason)];
          stats_.lastAnswerNs = end;
        }
      }
    }
  }

  uint64_t viaShm() const { return viaShm_; }
  const std::string& unmapped() const { return unmapped_; }

 private:
  const Plan& plan_;
  size_t index_;
  size_t handleCount_;
  std::string permission_, denied_;
  std::vector<tokend_client*> clients_;
  std::vector<uint32_t> picks_;
  size_t pickPos_ = 0;
  std::vector<char> tokens_;  // depth NUL-terminated tokens
  std::vector<tokend_request> requests_;
  std::vector<tokend_result> results_;
  std::vector<uint32_t> batch_;
  uint64_t viaShm_ = 0;
  std::string unmapped_;  // why a handle has no segment, if one has none
};
#endif

// --- Tokens ------------------------------------------------------------------------------------

bool fileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// The token pools for the run: read from --token-file, or created with --db (and remembered in
// the token file, which later runs reuse while it still fits the database).
Result<TokenSet> obtainTokens(const Options& o, const std::array<double, kKinds>& mix,
                              bool tokensGiven, bool quiet) {
  bool needScope = mix[static_cast<size_t>(Kind::Scope)] > 0;
  std::string denied = needScope ? o.deniedPermission : std::string();
  if (o.db.empty()) {
    auto set = readTokenFile(o.tokenFile);
    if (!set) return set.error();
    if (tokensGiven && set->valid.size() > o.tokens) set->valid.resize(o.tokens);
    return set;
  }
  if (!fileExists(o.db + "/data.mdb")) {
    return makeError(fmt::format("no key database in {} (want the daemon's --data-dir)", o.db));
  }
  std::string path = o.tokenFile.empty() ? o.db + "/tokenload.tokens" : o.tokenFile;
  if (fileExists(path)) {
    auto set = readTokenFile(path);
    if (!set) return set.error();
    std::string why;
    if (set->valid.size() < o.tokens) {
      why = fmt::format("it holds {} tokens, {} wanted", set->valid.size(), o.tokens);
    } else if (set->expired.empty()) {
      why = "it holds no expired tokens";
    } else {
      set->valid.resize(o.tokens);
      auto fits = tokensFit(o.db, *set, o.permission, denied, why);
      if (!fits) return fits.error();
      if (*fits) return set;
    }
    if (!quiet) fmt::print(stderr, "tokenload: not reusing {}: {}\n", path, why);
  }
  CreateTokensOptions c;
  c.dbDir = o.db;
  c.valid = o.tokens;
  c.expired = std::clamp<size_t>(o.tokens / 100, 1, 10000);
  c.scopes = {"workspace:read"};
  if (!o.permission.empty() && o.permission != "workspace:read") c.scopes.push_back(o.permission);
  int64_t t0 = monotonicNanos();
  auto created = createTokens(c);
  if (!created) return created.error();
  std::string scopes;
  for (const auto& s : c.scopes) scopes += (scopes.empty() ? "" : ",") + s;
  auto w = writeTokenFile(path, created->set,
                          fmt::format("# tokenload token file: user {}, scopes {}, created at {}\n",
                                      created->username, scopes, unixNow()));
  if (!w) return w.error();
  if (!quiet) {
    fmt::print(stderr, "tokenload: created {} tokens ({} expired) for user {} in {:.1f} s -> {}\n",
               c.valid + c.expired, c.expired, created->username,
               static_cast<double>(monotonicNanos() - t0) / kNanos, path);
  }
  return std::move(created->set);
}

std::string flatten(const std::vector<std::string>& tokens) {
  std::string flat;
  flat.reserve(tokens.size() * kTokenLength);
  for (const auto& t : tokens) flat += t;
  return flat;
}

// --- Report ------------------------------------------------------------------------------------

std::string humanNanos(uint64_t ns) {
  double us = static_cast<double>(ns) / 1e3;
  if (us < 1000) return fmt::format("{:.1f} us", us);
  if (us < 1e6) return fmt::format("{:.2f} ms", us / 1e3);
  return fmt::format("{:.2f} s", us / 1e6);
}

double micros(uint64_t ns) {
  return std::round(static_cast<double>(ns) / 10.0) / 100.0;  // two decimals
}

// --mode shm: how many answers the shared-memory fast path gave, and why a handle had no segment.
struct ShmFacts {
  uint64_t viaShm = 0;
  std::string unmapped;
};

int report(const Options& o, const Plan& plan, const Stats& s, const ShmFacts& shm,
           int64_t durationNs, int64_t warmupNs) {
  int64_t elapsedNs =
      (s.lastAnswerNs > plan.measureNs ? s.lastAnswerNs : plan.endNs) - plan.measureNs;
  if (elapsedNs <= 0) elapsedNs = 1;
  double elapsed = static_cast<double>(elapsedNs) / kNanos;
  double throughput = static_cast<double>(s.answered) / elapsed;
  uint64_t protocolErrors = s.refused + s.idMismatch + s.broken;
  bool healthy =
      s.answered > 0 && s.wrong == 0 && protocolErrors == 0 && s.lost == 0 && s.closed == 0;
  const auto& h = s.latency;

  if (o.json) {
    nlohmann::ordered_json j;
    nlohmann::ordered_json mix;
    for (size_t k = 0; k < kKinds; ++k) mix[std::string(kKindNames[k])] = plan.mix[k];
    j["config"] = {
        {"socket", o.socket},
        {"protocol", o.mode == "shm" ? std::string("shm") : o.protocol},
        {"mode", plan.openLoop ? "open" : "closed"},
        {"connections", o.connections},
        {"depth", o.depth},
        {"threads", std::min(o.threads, o.connections)},
        {"duration_s", static_cast<double>(durationNs) / kNanos},
        {"warmup_s", static_cast<double>(warmupNs) / kNanos},
        {"requests_limit", o.requests},
        {"rate", o.rate},
        {"tokens", plan.validCount},
        {"expired_tokens", plan.expiredCount},
        {"dist", o.dist},
        {"zipf_s", o.zipfS},
        {"permission", o.permission},
        {"deny_permission", o.deniedPermission},
        {"mix", mix},
    };
    j["requests"] = s.answered;
    j["sent"] = s.sent;
    j["answered_with_warmup"] = s.answeredAll;
    j["errors"] = {{"wrong_answers", s.wrong},
                   {"protocol", protocolErrors},
                   {"refused", s.refused},
                   {"id_mismatch", s.idMismatch},
                   {"broken_streams", s.broken},
                   {"closed_connections", s.closed},
                   {"lost", s.lost},
                   {"open_loop_backlog", s.backlog}};
    nlohmann::ordered_json outcomes = nlohmann::ordered_json::object();
    for (int r = 0; r < verifier::kReasonCount; ++r)
      if (s.outcomes[static_cast<size_t>(r)] > 0)
        outcomes[std::string(verifier::reasonName(static_cast<Reason>(r)))] =
            s.outcomes[static_cast<size_t>(r)];
    j["outcomes"] = outcomes;
    if (o.mode == "shm") {
      j["shm"] = {{"via_shm", shm.viaShm}, {"not_mapped", shm.unmapped}};
    }
    j["elapsed_s"] = elapsed;
    j["throughput_rps"] = std::round(throughput);
    j["latency_us"] = {
        {"min", micros(h.min())},          {"mean", micros(static_cast<uint64_t>(h.mean()))},
        {"p50", micros(h.percentile(50))}, {"p90", micros(h.percentile(90))},
        {"p99", micros(h.percentile(99))}, {"p999", micros(h.percentile(99.9))},
        {"max", micros(h.max())}};
    j["ok"] = healthy;
    fmt::print("{}\n", j.dump(2));
  } else {
    std::string rate = plan.openLoop ? fmt::format("open loop at {:.0f} req/s", o.rate)
                                     : std::string("closed loop");
    fmt::print("tokenload: {}, {} connection{} x depth {}, {} thread{}, {}, {:.2f} s\n",
               o.mode == "shm" ? std::string("libtokend (shm mode)") : o.protocol + " protocol",
               o.connections, o.connections == 1 ? "" : "s", o.depth,
               std::min(o.threads, o.connections),
               std::min(o.threads, o.connections) == 1 ? "" : "s", rate, elapsed);
    fmt::print("  requests   {} answered ({} sent), {:.0f} req/s\n", s.answered, s.sent,
               throughput);
    std::string outcomes;
    for (int r = 0; r < verifier::kReasonCount; ++r) {
      uint64_t n = s.outcomes[static_cast<size_t>(r)];
      if (n == 0) continue;
      outcomes += fmt::format("{}{} {}", outcomes.empty() ? "" : ", ",
                              verifier::reasonName(static_cast<Reason>(r)), n);
    }
    fmt::print("  outcomes   {}\n", outcomes.empty() ? "none" : outcomes);
    fmt::print("  errors     wrong answers {}, protocol {}, closed connections {}, lost {}{}\n",
               s.wrong, protocolErrors, s.closed, s.lost,
               plan.openLoop ? fmt::format(", open-loop backlog {}", s.backlog) : std::string());
    if (o.mode == "shm") {
      fmt::print("  shm        {} answers from shared memory{}\n", shm.viaShm,
                 shm.unmapped.empty()
                     ? std::string()
                     : fmt::format(" (a handle had no segment: {})", shm.unmapped));
    }
    fmt::print("  latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})\n",
               humanNanos(h.percentile(50)), humanNanos(h.percentile(90)),
               humanNanos(h.percentile(99)), humanNanos(h.percentile(99.9)), humanNanos(h.max()),
               humanNanos(static_cast<uint64_t>(h.mean())));
  }
  return healthy ? 0 : kExitWrong;
}

int run(int argc, char** argv) {
  Options o;
  CLI::App app{
      "tokenload: load generator and latency meter for tokend.\n\n"
      "Sends VERIFY requests over one Unix socket, checks every answer against the verdict its\n"
      "request must get, and prints throughput and latency percentiles. Without --rate each\n"
      "connection sends a batch of --depth requests at once and the next batch when all are\n"
      "answered (closed loop); with --rate requests go out on a fixed schedule and latency counts\n"
      "from the scheduled time (open loop). A run ends at --duration or after --requests measured\n"
      "requests, whichever comes first.\n\n"
      "Tokens: --db DIR creates --tokens N tokens for a fresh user in the daemon's key database\n"
      "(kept in --token-file, default DIR/tokenload.tokens, and reused while they still fit);\n"
      "or --token-file PATH alone reads tokens, one a line ('expired <token>' for expired ones).",
      "tokenload"};
  app.add_option("--socket", o.socket, "The daemon's Unix socket")->required();
  app.add_option("--protocol", o.protocol, "binary, text or http")
      ->check(CLI::IsMember({"binary", "text", "http"}));
  app.add_option(
         "--mode", o.mode,
         "socket, or shm (libtokend: shared memory first, the socket on a miss; closed loop)")
      ->check(CLI::IsMember({"socket", "shm"}));
  app.add_option("-c,--connections", o.connections, "Connections")->check(CLI::Range(1, 10000));
  app.add_option("-P,--depth", o.depth, "Pipeline depth: requests in flight per connection")
      ->check(CLI::Range(1, 4096));
  app.add_option("-t,--threads", o.threads, "Client threads; connections are spread over them")
      ->check(CLI::Range(1, 256));
  app.add_option("-d,--duration", o.duration, "Measured run time, e.g. 10s, 500ms (default 10s)");
  app.add_option("--warmup", o.warmup, "Load before measuring starts, not counted (default 0s)");
  app.add_option("-n,--requests", o.requests, "Stop after this many measured requests");
  app.add_option("--rate", o.rate, "Open loop: total requests per second on a fixed schedule")
      ->check(CLI::PositiveNumber);
  app.add_option("--db", o.db, "The daemon's data dir: create --tokens tokens there");
  auto* tokensOption =
      app.add_option(
             "--tokens", o.tokens,
             "Valid tokens to use (default: 1000 with --db, all of a --token-file without it)")
          ->check(CLI::Range(size_t{1}, size_t{kPickIndexMask}));
  app.add_option("--token-file", o.tokenFile,
                 "Tokens to use, one a line; with --db, where created tokens are kept");
  app.add_option("--mix", o.mix,
                 "Request kinds and weights: valid, unknown, bad_secret, expired, scope");
  app.add_option("--dist", o.dist, "How valid tokens are chosen: uniform or zipf")
      ->check(CLI::IsMember({"uniform", "zipf"}));
  app.add_option("--zipf-s", o.zipfS, "Zipf exponent (default 1.0)")->check(CLI::PositiveNumber);
  app.add_option("--permission", o.permission,
                 "resource:action asked with every request (default none: authentication only)");
  app.add_option("--deny-permission", o.deniedPermission,
                 "resource:action the tokens' scopes lack, asked by the scope kind "
                 "(default template:delete)");
  app.add_option("--seed", o.seed, "Seed of the token choice (default random)");
  app.add_flag("--json", o.json, "Print the result as JSON");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  auto usage = [](const std::string& m) {
    fmt::print(stderr, "tokenload: {}\n", m);
    return kExitUsage;
  };

#ifndef TOKENLOAD_HAVE_LIBTOKEND
  if (o.mode == "shm") {
    return usage("--mode shm needs libtokend, which this build of tokenload does not include");
  }
#endif
  if (o.mode == "shm" && o.rate > 0) return usage("--mode shm runs closed loop only: drop --rate");
  auto duration = parseNanos(o.duration);
  if (!duration) return usage(duration.error().message);
  auto warmup = parseNanos(o.warmup);
  if (!warmup) return usage(warmup.error().message);
  if (*duration <= 0) return usage("--duration must be positive: a run is bounded in time");
  auto mix = parseMix(o.mix);
  if (!mix) return usage(mix.error().message);
  if (o.db.empty() && o.tokenFile.empty()) {
    return usage("no tokens: give --db DIR (tokens are created there) or --token-file PATH");
  }
  if ((*mix)[static_cast<size_t>(Kind::Scope)] > 0 && o.deniedPermission == o.permission) {
    return usage("--deny-permission must differ from --permission");
  }
  for (const std::string* p : {&o.permission, &o.deniedPermission}) {
    // A permission outside the catalog makes every verdict bad_request: refuse it here.
    if (!p->empty() && verifier::parseQuery(*p, "", "").bad) {
      return usage(fmt::format("permission \"{}\" is not resource:action of the catalog", *p));
    }
  }

  auto tokens = obtainTokens(o, *mix, tokensOption->count() > 0, o.json);
  if (!tokens) {
    fmt::print(stderr, "tokenload: {}\n", tokens.error().message);
    return kExitSetup;
  }
  Plan plan;
  plan.wire = o.protocol == "text" ? Wire::Text : o.protocol == "http" ? Wire::Http : Wire::Binary;
  auto asked = makeVerifyTemplate(plan.wire, o.permission);
  auto denied = makeVerifyTemplate(plan.wire, o.deniedPermission);
  if (!asked) return usage(asked.error().message);
  if (!denied) return usage(denied.error().message);
  plan.asked = std::move(*asked);
  plan.denied = std::move(*denied);
  plan.mix = *mix;
  auto share = [&](Kind k) { return plan.mix[static_cast<size_t>(k)]; };
  if (tokens->valid.empty() &&
      (share(Kind::Valid) > 0 || share(Kind::BadSecret) > 0 || share(Kind::Scope) > 0)) {
    return usage("the mix needs valid tokens and there are none");
  }
  if (tokens->expired.empty() && share(Kind::Expired) > 0) {
    return usage(
        "the mix asks for expired tokens and the token file holds none "
        "(give --mix with expired=0, or use --db)");
  }
  plan.validCount = tokens->valid.size();
  plan.expiredCount = tokens->expired.size();
  plan.valid = flatten(tokens->valid);
  plan.expired = flatten(tokens->expired);
  // Unknown tokens: well-formed, random ids that no database holds (a collision needs 62^10 luck).
  std::vector<std::string> unknown;
  for (size_t i = 0; i < kUnknownPool; ++i) unknown.push_back(verifier::mintToken().text());
  plan.unknown = flatten(unknown);
  plan.unknownCount = kUnknownPool;
  if (o.dist == "zipf" && plan.validCount > 0) {
    plan.zipfCdf.resize(plan.validCount);
    double acc = 0;
    for (size_t i = 0; i < plan.validCount; ++i)
      plan.zipfCdf[i] = acc += 1.0 / std::pow(static_cast<double>(i + 1), o.zipfS);
  }
  plan.depth = o.depth;
  plan.openLoop = o.rate > 0;
  if (plan.openLoop) {
    double perConnection = o.rate / static_cast<double>(o.connections);
    plan.intervalNanos = std::max<int64_t>(1, static_cast<int64_t>(1e9 / perConnection));
  }
  plan.seed = o.seed != 0 ? o.seed : std::random_device{}() * 0x100000001ull + 1;
  std::atomic<int64_t> budget{static_cast<int64_t>(o.requests)};
  if (o.requests > 0) plan.budget = &budget;

  size_t threads = std::min(o.threads, o.connections);
  std::vector<std::unique_ptr<Runner>> workers;
  for (size_t t = 0; t < threads; ++t) {
    size_t n = o.connections / threads + (t < o.connections % threads ? 1 : 0);
#ifdef TOKENLOAD_HAVE_LIBTOKEND
    if (o.mode == "shm") {
      workers.push_back(std::make_unique<ShmWorker>(plan, t, n, o));
      continue;
    }
#endif
    workers.push_back(std::make_unique<Worker>(plan, t, n));
  }
  // Threads connect and draw their picks, then wait for one common start time.
  std::latch ready(static_cast<std::ptrdiff_t>(threads));
  std::latch go(1);
  std::vector<std::optional<Error>> errors(threads);
  std::atomic<bool> abort{false};
  std::vector<std::thread> pool;
  for (size_t t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      if (auto r = workers[t]->prepare(o.socket); !r) errors[t] = r.error();
      ready.count_down();
      go.wait();
      if (!abort.load() && !errors[t]) workers[t]->run();
    });
  }
  ready.wait();
  for (auto& e : errors) {
    if (e) {
      fmt::print(stderr, "tokenload: {}\n", e->message);
      abort = true;
    }
  }
  plan.startNs = monotonicNanos();
  plan.measureNs = plan.startNs + *warmup;
  plan.endNs = plan.measureNs + *duration;
  go.count_down();  // publishes the times above to the threads
  for (auto& th : pool) th.join();
  if (abort) return kExitSetup;

  Stats total;
  for (auto& w : workers) total.merge(w->stats());
  ShmFacts shm;
#ifdef TOKENLOAD_HAVE_LIBTOKEND
  for (auto& w : workers) {
    if (auto* s = dynamic_cast<ShmWorker*>(w.get())) {
      shm.viaShm += s->viaShm();
      if (shm.unmapped.empty()) shm.unmapped = s->unmapped();
    }
  }
#endif
  return report(o, plan, total, shm, *duration, *warmup);
}

}  // namespace
}  // namespace tokend::tools

int main(int argc, char** argv) {
  return tokend::tools::run(argc, argv);
}
