// Monitor: the background thread's loop: watch the daemon, batch and send usage reports.
#include "client/monitor.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "client/channel.h"
#include "daemon/binary_protocol.h"

namespace tokend::client {

namespace {

constexpr int64_t kFlushIntervalMs = 1000;   // the daemon writes back at least once a second
constexpr int64_t kReportSpacingMs = 60000;  // at most one report per token per minute
constexpr int64_t kKeepaliveMs = 60000;      // well under the daemon's default idle timeout (5 min)
// Bounds each exchange of this thread (a local daemon answers in microseconds), and so what
// tokend_close() may spend reporting the last uses.
constexpr int kWatchTimeoutMs = 1000;
constexpr size_t kMaxPending = 1 << 16;  // distinct tokens held while the daemon is unreachable
constexpr int kMaxBackoffMs = 1000;

int64_t nowMs() {
  return monotonicNanos() / 1000000;
}

using IdKey = std::array<char, shm::kTokenIdLength>;
struct IdHash {
  size_t operator()(const IdKey& k) const {
    return std::hash<std::string_view>()(std::string_view(k.data(), k.size()));
  }
};

// The connection and everything only the thread touches.
struct WatchState {
  std::optional<Channel> chan;
  uint64_t watched = 0;  // the generation learnt on `chan`
  int backoffMs = 0;
  int64_t nextConnectMs = 0;
  int64_t lastSendMs = 0;
  std::unordered_map<IdKey, int64_t, IdHash> pending;  // token id -> latest use (Unix s)
  std::unordered_map<IdKey, int64_t, IdHash> sentAt;   // token id -> last report (monotonic ms)
};

Result<std::pair<Channel, uint64_t>> connectWatch(const std::string& path, int timeoutMs) {
  auto ch = Channel::open(path, timeoutMs);
  if (!ch) return ch.error();
  auto h = ch->hello(daemon::kFeatureShm | daemon::kFeatureUsageReport);
  if (!h) return h.error();
  auto fd = ch->attachSegment();
  if (!fd) return fd.error();
  auto gen = segmentGeneration(fd->get());
  if (!gen) return gen.error();
  return std::pair<Channel, uint64_t>(std::move(*ch), *gen);
}

// Sends the due entries of `pending` as USAGE_REPORTs and waits for each USAGE_ACK.
int report(WatchState& s, int64_t nowMsValue) {
  std::vector<daemon::UsageEntry> batch;
  std::vector<IdKey> keys;
  for (const auto& [id, at] : s.pending) {
    auto sent = s.sentAt.find(id);
    if (sent != s.sentAt.end() && nowMsValue - sent->second < kReportSpacingMs) continue;
    keys.push_back(id);
  }
  if (keys.empty()) return 0;
  if (!s.chan) return -ECONNREFUSED;
  std::string out;
  size_t done = 0;
  while (done < keys.size()) {
    const size_t n = std::min(keys.size() - done, daemon::kMaxUsageEntries);
    batch.clear();
    for (size_t i = done; i < done + n; ++i) {
      batch.push_back(
          daemon::UsageEntry{std::string_view(keys[i].data(), keys[i].size()), s.pending[keys[i]]});
    }
    out.clear();
    const uint64_t id = s.chan->nextRequestId();
    if (auto e = daemon::encodeUsageReport(out, id, batch); !e) return -EINVAL;
    if (auto r = s.chan->send(out); !r) return r.error().code;
    auto f = s.chan->next();
    if (!f) return f.error().code;
    if (f->header.requestId != id || f->header.opcode != daemon::Opcode::UsageAck) return -EPROTO;
    for (size_t i = done; i < done + n; ++i) {
      s.pending.erase(keys[i]);
      s.sentAt[keys[i]] = nowMsValue;
    }
    done += n;
    s.lastSendMs = nowMsValue;
  }
  std::erase_if(s.sentAt,
                [&](const auto& kv) { return nowMsValue - kv.second >= kReportSpacingMs; });
  return 0;
}

}  // namespace

Monitor::Monitor(std::string socketPath, int timeoutMs)
    : path_(std::move(socketPath)), timeoutMs_(timeoutMs) {}

Monitor::~Monitor() {
  stop();
}

Result<void> Monitor::start() {
  wakeFd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wakeFd_) return Error::fromErrno(errno, "Failed to create an eventfd");
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    return makeError(std::string("Failed to start the background thread: ") + e.what(),
                     -e.code().value());
  }
  return {};
}

void Monitor::wake() {
  const uint64_t one = 1;
  // A failed write means the counter is saturated: the thread is already due to wake.
  [[maybe_unused]] ssize_t n = ::write(wakeFd_.get(), &one, sizeof one);
}

void Monitor::confirm(uint64_t gen) {
  live_.store(gen, std::memory_order_release);
  kick_.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) wake();
}

void Monitor::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake();
  thread_.join();
}

int Monitor::flush(int timeoutMs) {
  if (!thread_.joinable()) return 0;
  std::unique_lock lock(mu_);
  const uint64_t ticket = ++flushWanted_;
  lock.unlock();
  wake();
  lock.lock();
  if (!cv_.wait_for(lock, std::chrono::milliseconds(timeoutMs),
                    [&] { return flushDone_ >= ticket; })) {
    return -ETIMEDOUT;
  }
  return flushResult_;
}

void Monitor::run() {
  // A name the application's operators can tell apart in top -H (the process keeps its own).
  pthread_setname_np(pthread_self(), "libtokend");
  WatchState s;
  int64_t nextFlushMs = nowMs() + kFlushIntervalMs;
  for (;;) {
    bool stopping = false;
    uint64_t wanted = 0;
    uint64_t done = 0;
    {
      std::lock_guard lock(mu_);
      stopping = stopping_;
      wanted = flushWanted_;
      done = flushDone_;
    }
    ring_.drain([&](const UseRecord& r) {
      auto it = s.pending.find(r.id);
      if (it != s.pending.end()) {
        it->second = std::max(it->second, r.at);
      } else if (s.pending.size() < kMaxPending) {
        s.pending.emplace(r.id, r.at);
      }
    });

    if (kick_.exchange(false, std::memory_order_relaxed)) {
      s.nextConnectMs = 0;
      // Watching another daemon than the one the foreground just mapped: that one is gone
      // (two daemons never serve one socket), so watch the new one instead.
      if (s.chan && s.watched != live_.load(std::memory_order_acquire)) {
        s.chan.reset();
        s.watched = 0;
      }
    }
    int64_t now = nowMs();
    if (!s.chan && (now >= s.nextConnectMs || stopping)) {
      auto c = connectWatch(path_, std::min(timeoutMs_, kWatchTimeoutMs));
      if (c) {
        s.chan.emplace(std::move(c->first));
        s.watched = c->second;
        s.backoffMs = 0;
        s.lastSendMs = now;
        live_.store(s.watched, std::memory_order_release);
      } else {
        // No daemon answers: whatever segment the foreground holds is no longer updated.
        live_.store(0, std::memory_order_release);
        s.backoffMs = std::clamp(s.backoffMs * 2, 10, kMaxBackoffMs);
        s.nextConnectMs = nowMs() + s.backoffMs;
      }
      now = nowMs();
    }
    const bool flushing = stopping || wanted > done || now >= nextFlushMs;
    if (flushing) {
      int rc = report(s, now);
      if (rc != 0 && rc != -ECONNREFUSED) {
        // The connection broke mid-report: the entries stay pending for the next one.
        uint64_t expected = s.watched;
        live_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
        s.chan.reset();
      }
      nextFlushMs = now + kFlushIntervalMs;
      if (wanted > done) {
        std::lock_guard lock(mu_);
        flushDone_ = wanted;
        flushResult_ = rc;
        cv_.notify_all();
      }
      if (stopping) break;
    }
    if (s.chan && now - s.lastSendMs >= kKeepaliveMs) {
      std::string ping;
      daemon::encodePing(ping, s.chan->nextRequestId());
      s.lastSendMs = now;
      if (!s.chan->send(ping)) {
        uint64_t expected = s.watched;
        live_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
        s.chan.reset();
        continue;
      }
    }

    int64_t until = nextFlushMs;
    if (!s.chan) until = std::min(until, s.nextConnectMs);
    const int timeout = static_cast<int>(std::clamp<int64_t>(until - nowMs(), 0, kFlushIntervalMs));
    pollfd fds[2] = {{wakeFd_.get(), POLLIN, 0},
                     {s.chan ? s.chan->fd() : -1, POLLIN | POLLRDHUP, 0}};
    if (::poll(fds, 2, timeout) < 0) continue;  // EINTR: go round again
    if (fds[0].revents & POLLIN) {
      uint64_t v = 0;
      [[maybe_unused]] ssize_t n = ::read(wakeFd_.get(), &v, sizeof v);
    }
    if (s.chan && fds[1].revents != 0) {
      // Nothing is owed to us but PONGs: read them, and learn of a closed connection.
      bool lost = (fds[1].revents & (POLLHUP | POLLERR | POLLRDHUP)) != 0;
      if (!lost) {
        do {
          if (!s.chan->next()) {
            lost = true;
            break;
          }
        } while (s.chan->buffered());
      }
      if (lost) {
        // Only clear the generation this connection vouched for: the foreground may already have
        // mapped a newer daemon's segment.
        uint64_t expected = s.watched;
        live_.compare_exchange_strong(expected, 0, std::memory_order_acq_rel);
        s.chan.reset();
        s.watched = 0;
        s.nextConnectMs = 0;  // reconnect at once: a restarted daemon is usually already up
      }
    }
  }
}

}  // namespace tokend::client
