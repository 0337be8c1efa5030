// Worker: what the io_uring and epoll workers share (pool, admission, timers, stop), and the
// Server that runs one worker per thread.
//
// Stop protocol, the same for both backends: stop() sets LoopShared::stopping and writes to
// every worker's eventfd. A worker that sees it stops accepting, shuts the read side of each
// connection (so queued requests are still read and answered, then EOF), lets output flush for
// up to kStopFlushMs, aborts what is left, and returns from run().
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/unique_fd.h"
#include "daemon/connection.h"
#include "daemon/loop.h"

namespace tokend::daemon {

// How often each worker looks at its connections' timers (and the stop deadline).
inline constexpr int kTickMs = 100;
// How long stop() lets connections flush what they owe before they are cut.
inline constexpr int kStopFlushMs = 2000;
// A connection accepted over maxConnections waits this long for a place (connections whose
// peers closed but whose ends the worker has not reaped yet) before it is refused.
inline constexpr int kAdmitWaitMs = 300;
// At most this many such connections wait per worker; more are refused at once.
inline constexpr size_t kAdmitQueue = 64;

// State every worker of one Server sees.
struct LoopShared {
  LoopShared(std::vector<Listener> listeners, const LoopConfig& config, SessionFactory& factory)
      : listeners(std::move(listeners)), config(config), factory(factory) {}

  const std::vector<Listener> listeners;  // every worker accepts on each
  const LoopConfig config;
  SessionFactory& factory;
  LoopStats stats;
  // Set once by stop(); read by workers after their eventfd wakes them. Release/acquire so a
  // worker that sees it also sees whatever the stopping thread wrote before.
  std::atomic<bool> stopping{false};
  // Connections per uid, every worker's (admission and retirement only).
  std::mutex uidMu;
  std::unordered_map<uid_t, size_t> perUid;  // guarded by uidMu
};

class Worker {
 public:
  // `wakeFd` is the eventfd stop() writes to.
  Worker(LoopShared& shared, int index, UniqueFd wakeFd)
      : shared_(shared),
        config_(shared.config),
        stats_(shared.stats),
        index_(index),
        table_(shared.config, shared.stats),
        wakeFd_(std::move(wakeFd)),
        resumeBox_(std::make_shared<Resume::Box>()) {
    dirty_.reserve(256);
    resumeBox_->wakeFd = wakeFd_.get();
  }
  virtual ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Sets up what must belong to the worker's own thread (an io_uring ring: the kernel ties a
  // ring to the tasks that create and use it, and signals each of them when it is torn down).
  // Called on that thread, before run().
  virtual Result<void> init() = 0;
  // Serves until stop() and the drain that follows. Called once, on the worker's thread.
  virtual void run() = 0;
  // Async-signal-safe: wakes run() so it notices LoopShared::stopping.
  void wake() const;

 protected:
  // Takes a freshly accepted socket: reads SO_PEERCRED (Unix listeners only; a TCP peer is uid
  // -1), applies the per-uid cap and the reserve, then maxConnections, and opens a Session tagged
  // with the listener's kind. Returns the slot, or -1 when the socket was refused (and closed) or
  // waits for a place (see kAdmitWaitMs; admitWaiting()).
  int64_t adopt(int fd, ListenerKind kind = ListenerKind::Unix);
  // Retries the connections waiting for a place: calls admitted(slot) for each one adopted now;
  // refuses those that waited kAdmitWaitMs.
  template <class F>
  void admitWaiting(F&& admitted) {
    if (waitingAdmit_.empty()) return;
    std::vector<Waiting> queue;
    queue.swap(waitingAdmit_);
    for (Waiting& w : queue) {
      const int64_t slot = admit(std::move(w.fd), w.peer, w.since);
      if (slot >= 0) admitted(static_cast<uint32_t>(slot));
    }
  }
  // Resumes the connections whose Resume was called; abort(slot, conn) for one that must close.
  template <class F>
  void resumeWaiting(F&& abort) {
    std::vector<std::pair<uint32_t, uint32_t>> list;
    {
      std::lock_guard lock(resumeBox_->mu);
      list.swap(resumeBox_->pending);
    }
    for (auto [slot, generation] : list) {
      if (!table_.valid(slot)) continue;
      Connection& c = table_.at(slot);
      if (c.generation() != generation || c.io.closing) continue;
      if (!c.resume(now_)) abort(slot, c);
      markDirty(slot);
    }
  }
  // Over maxBufferedOutput: calls shed(slot, conn) for this worker's largest backlogs, largest
  // first, until what they hold covers the excess (every worker sheds its own, so a tick may
  // shed more than needed; the budget is a ceiling, not a target).
  template <class F>
  void shedLargest(F&& shed) {
    if (config_.maxBufferedOutput == 0) return;
    int64_t excess = stats_.bufferedOutput.load(std::memory_order_relaxed) -
                     static_cast<int64_t>(config_.maxBufferedOutput);
    if (excess <= 0) return;
    std::vector<std::pair<size_t, uint32_t>> backlogs;
    table_.forEachLive([&](uint32_t slot, Connection& c) {
      if (!c.io.closing && c.unsent() > 0) backlogs.emplace_back(c.unsent(), slot);
    });
    std::sort(backlogs.begin(), backlogs.end(), std::greater<>());
    for (auto [owed, slot] : backlogs) {
      if (excess <= 0) break;
      excess -= static_cast<int64_t>(owed);
      stats_.shed.fetch_add(1, std::memory_order_relaxed);
      shed(slot, table_.at(slot));
    }
  }
  // Closes the socket and returns its Connection to the pool.
  void retire(uint32_t slot);
  void markDirty(uint32_t slot) {
    Connection& c = table_.at(slot);
    if (!c.io.dirty) {
      c.io.dirty = true;
      dirty_.push_back(slot);
    }
  }
  // Calls expire(slot, conn) for each connection whose stall or idle timer ran out.
  template <class F>
  void sweep(F&& expire) {
    table_.forEachLive([&](uint32_t slot, Connection& c) {
      if (c.io.closing) return;
      const Connection::Expiry e = c.expiry(now_);
      if (e == Connection::Expiry::None) return;
      stats_.timedOut.fetch_add(1, std::memory_order_relaxed);
      if (e == Connection::Expiry::SlowDrain)
        stats_.slowDrain.fetch_add(1, std::memory_order_relaxed);
      expire(slot, c);
    });
  }
  bool stopRequested() const { return shared_.stopping.load(std::memory_order_acquire); }
  void countIn(size_t n) { stats_.bytesIn.fetch_add(n, std::memory_order_relaxed); }
  void countOut(size_t n) { stats_.bytesOut.fetch_add(n, std::memory_order_relaxed); }

  struct Waiting {
    UniqueFd fd;
    PeerCred peer;
    int64_t since = 0;
  };
  int64_t admit(UniqueFd sock, const PeerCred& peer, int64_t since);
  bool reserved(uid_t uid) const;
  // Drops a connection of `uid` from the counts.
  void forget(uid_t uid);

  LoopShared& shared_;
  const LoopConfig& config_;
  LoopStats& stats_;
  const int index_;
  ConnectionTable table_;
  std::vector<uint32_t> dirty_;  // connections touched in this batch, settled at its end
  UniqueFd wakeFd_;
  std::shared_ptr<Resume::Box> resumeBox_;
  std::vector<Waiting> waitingAdmit_;
  int64_t now_ = 0;
  bool stopping_ = false;  // this worker has begun its stop
  int64_t stopDeadline_ = 0;
};

// A Server running each Worker on a thread of its own, started by launch() so that each worker's
// init() runs on the thread that will use what it sets up; the threads wait for run().
class WorkerServer final : public Server {
 public:
  // Starts the threads and waits for every init(). Returns the first failure (the threads are
  // then gone).
  static Result<std::unique_ptr<Server>> launch(std::unique_ptr<LoopShared> shared,
                                                std::vector<std::unique_ptr<Worker>> workers,
                                                std::string_view name);
  ~WorkerServer() override;

  void run() override;
  void stop() override;
  std::string_view backendName() const override { return name_; }
  const LoopStats& stats() const override { return shared_->stats; }

 private:
  enum class Gate { Closed, Run, Quit };

  WorkerServer(std::unique_ptr<LoopShared> shared, std::vector<std::unique_ptr<Worker>> workers,
               std::string_view name)
      : shared_(std::move(shared)), workers_(std::move(workers)), name_(name) {}
  void body(Worker& worker);
  void open(Gate gate);

  std::unique_ptr<LoopShared> shared_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::string_view name_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable changed_;
  size_t reported_ = 0;             // guarded by mutex_
  std::optional<Error> initError_;  // guarded by mutex_
  Gate gate_ = Gate::Closed;        // guarded by mutex_
};

}  // namespace tokend::daemon
