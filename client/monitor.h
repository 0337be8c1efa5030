// Monitor: a handle's background thread. It keeps its own connection to tokend to learn at once
// when the daemon goes away (so that a segment nobody updates any more stops deciding), and it
// reports the uses the fast path queued (SPEC 9) in batches.
//
// Why a connection of its own: the fast path makes no system call, so without one nothing would
// notice a daemon that stopped, and its last segment would keep answering from a cache that no
// longer hears of revocations. The kernel wakes the thread (POLLHUP) when the daemon's end
// closes; the thread then clears the live generation, which the fast path checks on every call
// with one atomic load.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "base/result.h"
#include "base/unique_fd.h"
#include "shm/cache.h"

namespace tokend::client {

// One use decided in shared memory.
struct UseRecord {
  std::array<char, shm::kTokenIdLength> id{};
  int64_t at = 0;  // Unix seconds
};

// A single-producer single-consumer ring: the verifying thread pushes (never blocks: a full ring
// drops the use, which costs at most a late last_used), the monitor drains.
class UseRing {
 public:
  static constexpr size_t kCapacity = 4096;

  // Producer only. False when full.
  bool push(const UseRecord& r) {
    // Relaxed: only the producer writes head_ (the caller serialises calls on a handle).
    const uint64_t h = head_.load(std::memory_order_relaxed);
    // Acquire: pairs with drain()'s release, so the consumer is done reading the slot reused here.
    if (h - tail_.load(std::memory_order_acquire) == kCapacity) return false;
    buf_[h % kCapacity] = r;
    // Release: publishes the record written above to drain()'s acquire load.
    head_.store(h + 1, std::memory_order_release);
    return true;
  }

  // Consumer only. Calls fn(const UseRecord&) for each record, oldest first.
  template <class Fn>
  size_t drain(Fn&& fn) {
    // Relaxed: only the consumer writes tail_.
    uint64_t t = tail_.load(std::memory_order_relaxed);
    // Acquire: pairs with push()'s release, so the records up to h are fully written.
    const uint64_t h = head_.load(std::memory_order_acquire);
    const size_t n = h - t;
    for (; t != h; ++t) fn(buf_[t % kCapacity]);
    // Release: the slots read above may now be reused by push().
    tail_.store(t, std::memory_order_release);
    return n;
  }

 private:
  UseRecord buf_[kCapacity];
  alignas(64) std::atomic<uint64_t> head_{0};
  alignas(64) std::atomic<uint64_t> tail_{0};
};

class Monitor {
 public:
  // The thread starts in start(); `socketPath` and `timeoutMs` as for the foreground connection.
  Monitor(std::string socketPath, int timeoutMs);
  ~Monitor();  // stop(), if not done yet
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Starts the thread. Errors: -ENOMEM/-EAGAIN when no thread or eventfd can be had.
  Result<void> start();
  // Reports what is queued (waiting at most ~1 s for the daemon) and joins the thread.
  void stop();

  // The generation of the segment a live daemon serves, as last seen by this thread or
  // confirmed by the foreground; 0 while no daemon is known to be up.
  uint64_t liveGeneration() const {
    // Acquire: pairs with the release stores below; what it orders is only the generation
    // itself (the mapping belongs to the foreground thread), so a stale read is at worst a
    // few microseconds late, the time the kernel takes to wake this thread.
    return live_.load(std::memory_order_acquire);
  }
  // The foreground mapped the segment of generation `gen`, just handed over by a live daemon.
  // The thread is woken to vouch for it with a connection of its own at once: until then
  // nothing would notice that daemon going away.
  void confirm(uint64_t gen);

  // Producer side (the verifying thread). False when the ring is full.
  bool queueUse(const UseRecord& r) { return ring_.push(r); }

  // Asks the thread to report everything queued now and waits until it has, at most
  // timeoutMs. Returns 0, -ETIMEDOUT, or the error of the report (-ECONNREFUSED...).
  int flush(int timeoutMs);

 private:
  void run();
  void wake();

  const std::string path_;
  const int timeoutMs_;
  std::atomic<uint64_t> live_{0};
  // Set by confirm(): (re)connect now. Relaxed: the eventfd write and read order it.
  std::atomic<bool> kick_{false};
  UseRing ring_;
  UniqueFd wakeFd_;  // eventfd: flush and stop requests
  std::thread thread_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;     // guarded by mu_
  uint64_t flushWanted_ = 0;  // guarded by mu_
  uint64_t flushDone_ = 0;    // guarded by mu_
  int flushResult_ = 0;       // guarded by mu_
};

}  // namespace tokend::client
