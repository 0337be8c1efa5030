// The epoll backend: edge-triggered readiness with non-blocking recv, send and sendmsg.
#include "daemon/loop_epoll.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "base/log.h"
#include "daemon/worker.h"

namespace tokend::daemon {

namespace {

// epoll_event.data.u64: the connection's slot in the low 32 bits, its generation in the high 32
// (an event for a connection closed earlier in the same batch must not reach the next one in
// that slot). The eventfd and the listening sockets take reserved slots at the top: listener i is
// kListenSlot - i.
constexpr uint32_t kWakeSlot = std::numeric_limits<uint32_t>::max();
constexpr uint32_t kListenSlot = kWakeSlot - 1;
constexpr uint32_t kMaxListeners = 16;
constexpr uint64_t pack(uint32_t slot, uint32_t generation = 0) {
  return uint64_t{generation} << 32 | slot;
}

constexpr int kMaxEvents = 256;
constexpr size_t kReadSize = 64 * 1024;
// Reads per connection per batch before others get their turn; the rest is read next batch.
constexpr int kReadBudget = 16;
constexpr int kAcceptBudget = 64;

class EpollWorker final : public Worker {
 public:
  static Result<std::unique_ptr<Worker>> create(LoopShared& shared, int index);
  Result<void> init() override;
  void run() override;

 private:
  EpollWorker(LoopShared& shared, int index, UniqueFd wakeFd)
      : Worker(shared, index, std::move(wakeFd)), scratch_(kReadSize) {
    events_.resize(kMaxEvents);
    again_.reserve(64);
    againNow_.reserve(64);
  }
  bool listen();
  void unlisten();
  void acceptSome(size_t listener);
  void registerConnection(uint32_t slot);
  void onEvent(const epoll_event& ev);
  void onTick();
  void settle(uint32_t slot);
  void readSome(uint32_t slot, Connection& c, int& budget);
  void sendSome(uint32_t slot, Connection& c);
  void abort(uint32_t slot, Connection& c);
  void beginStop();

  UniqueFd epoll_;
  std::vector<epoll_event> events_;
  std::vector<char> scratch_;    // every connection reads through it, then keeps what's left
  std::vector<uint32_t> again_;  // connections whose reads were cut short by the budget
  std::vector<uint32_t> againNow_;
  bool listening_ = false;
  bool listenRetry_ = false;  // re-register the listening socket at the next tick
  int64_t nextTick_ = 0;
};

Result<std::unique_ptr<Worker>> EpollWorker::create(LoopShared& shared, int index) {
  UniqueFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return Error::fromErrno(errno, "eventfd");
  return std::unique_ptr<Worker>(new EpollWorker(shared, index, std::move(wake)));
}

Result<void> EpollWorker::init() {
  epoll_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return Error::fromErrno(errno, "epoll_create1");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = pack(kWakeSlot);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wakeFd_.get(), &ev) < 0)
    return Error::fromErrno(errno, "epoll_ctl(eventfd)");
  if (!listen()) return Error::fromErrno(errno, "epoll_ctl(listening socket)");
  return {};
}

bool EpollWorker::listen() {
  // EPOLLEXCLUSIVE: a new connection wakes one worker, not all of them.
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  listening_ = true;
  for (size_t i = 0; i < shared_.listeners.size(); ++i) {
    ev.data.u64 = pack(kListenSlot - static_cast<uint32_t>(i));
    const int rc = epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, shared_.listeners[i].fd, &ev);
    if (rc != 0 && errno != EEXIST) listening_ = false;
  }
  return listening_;
}

void EpollWorker::unlisten() {
  if (listening_) {
    for (const Listener& l : shared_.listeners)
      epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, l.fd, nullptr);
  }
  listening_ = false;
}

void EpollWorker::run() {
  now_ = monotonicMs();
  nextTick_ = now_ + kTickMs;
  if (stopRequested()) beginStop();

  for (;;) {
    const int timeout =
        again_.empty() ? static_cast<int>(std::max<int64_t>(0, nextTick_ - now_)) : 0;
    const int n = epoll_wait(epoll_.get(), events_.data(), kMaxEvents, timeout);
    if (n < 0 && errno != EINTR) {
      log::error("Failed to wait on the epoll instance of worker {}: {}", index_,
                 std::strerror(errno));
      break;
    }
    now_ = monotonicMs();
    for (int i = 0; i < n; ++i) onEvent(events_[i]);

    againNow_.swap(again_);
    for (uint32_t slot : againNow_)
      if (table_.valid(slot)) markDirty(slot);
    againNow_.clear();

    if (now_ >= nextTick_) {
      nextTick_ = now_ + kTickMs;
      onTick();
    }

    for (size_t i = 0; i < dirty_.size(); ++i) settle(dirty_[i]);
    dirty_.clear();
    // Connections retired above may have made places for those waiting to be admitted.
    admitWaiting([&](uint32_t slot) { registerConnection(slot); });
    for (size_t i = 0; i < dirty_.size(); ++i) settle(dirty_[i]);
    dirty_.clear();

    if (stopping_ && table_.live() == 0) break;
  }
  table_.forEachLive([&](uint32_t slot, Connection&) { retire(slot); });
}

void EpollWorker::onEvent(const epoll_event& ev) {
  const auto slot = static_cast<uint32_t>(ev.data.u64);
  if (slot == kWakeSlot) {
    uint64_t value;
    [[maybe_unused]] ssize_t r = ::read(wakeFd_.get(), &value, sizeof(value));
    resumeWaiting([&](uint32_t s, Connection& c) { abort(s, c); });
    if (stopRequested() && !stopping_) beginStop();
    return;
  }
  if (slot <= kListenSlot && slot > kListenSlot - kMaxListeners) {
    if (!stopping_) acceptSome(kListenSlot - slot);
    return;
  }
  if (!table_.valid(slot) || table_.at(slot).generation() != ev.data.u64 >> 32) return;
  Connection& c = table_.at(slot);
  if (ev.events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c.io.readArmed = true;
  if (ev.events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c.io.writable = true;
  markDirty(slot);
}

void EpollWorker::acceptSome(size_t listener) {
  const Listener& l = shared_.listeners.at(listener);
  for (int i = 0; i < kAcceptBudget; ++i) {
    const int fd = accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Level-triggered, the listening socket would wake us again at once: step back until
        // the next tick.
        unlisten();
        listenRetry_ = true;
      }
      return;
    }
    const int64_t adopted = adopt(fd, l.kind);
    if (adopted >= 0) registerConnection(static_cast<uint32_t>(adopted));
  }
}

void EpollWorker::registerConnection(uint32_t slot) {
  Connection& c = table_.at(slot);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = pack(slot, c.generation());
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.fd(), &ev) < 0) abort(slot, c);
  // Edge-triggered: whatever arrived before registration raised no edge, so try reading.
  c.io.readArmed = true;
  c.io.writable = true;
  markDirty(slot);
}

void EpollWorker::onTick() {
  if (listenRetry_ && !stopping_) listenRetry_ = !listen();
  sweep([&](uint32_t slot, Connection& c) { abort(slot, c); });
  shedLargest([&](uint32_t slot, Connection& c) { abort(slot, c); });
  if (stopping_ && now_ >= stopDeadline_) {
    table_.forEachLive([&](uint32_t slot, Connection& c) { abort(slot, c); });
  }
}

void EpollWorker::abort(uint32_t slot, Connection& c) {
  if (c.io.closing) return;
  c.io.closing = true;
  c.abandon();
  markDirty(slot);  // nothing is in flight with epoll: settle closes it
}

void EpollWorker::settle(uint32_t slot) {
  Connection& c = table_.at(slot);
  if (!c.inUse()) return;
  c.io.dirty = false;
  int budget = kReadBudget;
  while (!c.io.closing) {
    // Read first, so that every request in what arrived is answered by one send.
    readSome(slot, c, budget);
    sendSome(slot, c);
    // Draining output may have lifted backpressure: read on while the socket has data.
    if (c.io.closing || !c.io.readArmed || !c.wantsRead()) break;
    if (budget == 0) {
      again_.push_back(slot);
      break;
    }
  }
  if (c.io.closing || c.done()) retire(slot);
}

void EpollWorker::readSome(uint32_t slot, Connection& c, int& budget) {
  while (c.io.readArmed && c.wantsRead() && budget > 0) {
    --budget;
    const ssize_t n = ::recv(c.fd(), scratch_.data(), scratch_.size(), MSG_DONTWAIT);
    if (n > 0) {
      countIn(static_cast<size_t>(n));
      if (!c.onReceived({scratch_.data(), static_cast<size_t>(n)}, now_)) {
        abort(slot, c);
        return;
      }
    } else if (n == 0) {
      c.onReadEnd();
    } else if (errno == EAGAIN) {
      c.io.readArmed = false;
    } else if (errno != EINTR) {
      c.onReadEnd();
      abort(slot, c);
      return;
    }
  }
}

void EpollWorker::sendSome(uint32_t slot, Connection& c) {
  while (c.io.writable && c.canSend()) {
    const SendChunk chunk = c.beginSend();
    const ssize_t n = chunk.fd >= 0
                          ? ::sendmsg(c.fd(), c.message(chunk), MSG_NOSIGNAL | MSG_DONTWAIT)
                          : ::send(c.fd(), chunk.data, chunk.size, MSG_NOSIGNAL | MSG_DONTWAIT);
    const int err = errno;
    if (n >= 0) countOut(static_cast<size_t>(n));
    if (!c.endSend(n > 0 ? static_cast<size_t>(n) : 0, now_)) {
      abort(slot, c);
      return;
    }
    if (n >= 0) continue;
    if (err == EAGAIN) {
      c.io.writable = false;  // EPOLLOUT's edge says when the peer has read
    } else if (err != EINTR) {
      abort(slot, c);
      return;
    }
  }
}

void EpollWorker::beginStop() {
  stopping_ = true;
  stopDeadline_ = now_ + kStopFlushMs;
  unlisten();
  listenRetry_ = false;
  // Shutting the read side lets what the peer already sent be read and answered; then recv
  // returns 0, and the connection closes once its output is flushed.
  table_.forEachLive([&](uint32_t slot, Connection& c) {
    if (c.io.closing) return;
    ::shutdown(c.fd(), SHUT_RD);
    c.io.readArmed = true;
    markDirty(slot);
  });
}

}  // namespace

Result<std::unique_ptr<Server>> createEpollServer(const std::vector<Listener>& listeners,
                                                  const LoopConfig& config,
                                                  SessionFactory& factory) {
  if (listeners.size() > kMaxListeners) return makeError("event loop: too many listeners");
  auto shared = std::make_unique<LoopShared>(listeners, config, factory);
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < config.threads; ++i) {
    auto w = EpollWorker::create(*shared, i);
    if (!w) return w.error();
    workers.push_back(std::move(*w));
  }
  return WorkerServer::launch(std::move(shared), std::move(workers), "epoll");
}

}  // namespace tokend::daemon
