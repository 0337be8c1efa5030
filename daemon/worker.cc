// Worker: admission, retirement and the thread-per-worker Server shared by both backends.
#include "daemon/worker.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

namespace tokend::daemon {

void Worker::wake() const {
  const uint64_t one = 1;
  // Only write(2): this runs in signal handlers. A full counter (2^64 - 2 wakes) cannot happen.
  [[maybe_unused]] ssize_t n = ::write(wakeFd_.get(), &one, sizeof(one));
}

void Resume::operator()() const {
  if (!box_) return;
  std::lock_guard lock(box_->mu);
  if (box_->wakeFd < 0) return;
  box_->pending.emplace_back(slot_, generation_);
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(box_->wakeFd, &one, sizeof(one));
}

Worker::~Worker() {
  // A Resume called from another thread after this must not write to a closed descriptor.
  std::lock_guard lock(resumeBox_->mu);
  resumeBox_->wakeFd = -1;
  resumeBox_->pending.clear();
}

bool Worker::reserved(uid_t uid) const {
  for (uid_t u : config_.reservedUids)
    if (u == uid) return true;
  return false;
}

int64_t Worker::adopt(int fd, ListenerKind kind) {
  UniqueFd sock(fd);
  // TCP has no peer credentials: nobody's uid, so that no uid check can match it by accident
  // (and every TCP peer shares that uid's per-uid cap).
  auto peer = kind == ListenerKind::Unix
                  ? readPeerCred(fd)
                  : Result<PeerCred>(PeerCred{0, static_cast<uid_t>(-1), static_cast<gid_t>(-1)});
  if (stopping_ || !peer) {
    stats_.refused.fetch_add(1, std::memory_order_relaxed);
    return -1;
  }
  peer->listener = kind;
  peer->fd = fd;
  return admit(std::move(sock), *peer, now_);
}

int64_t Worker::admit(UniqueFd sock, const PeerCred& peer, int64_t since) {
  auto refuse = [&](bool perUid) {
    stats_.refused.fetch_add(1, std::memory_order_relaxed);
    if (perUid) stats_.refusedPerUid.fetch_add(1, std::memory_order_relaxed);
    return int64_t{-1};
  };
  if (stopping_) return refuse(false);
  // Every admission takes the lock, so the limits are exact across workers (retirements only
  // lower the counts, without it for the global one).
  {
    std::lock_guard lock(shared_.uidMu);
    const bool privileged = reserved(peer.uid);
    auto it = shared_.perUid.find(peer.uid);
    const size_t mine = it == shared_.perUid.end() ? 0 : it->second;
    const size_t open = stats_.open.load(std::memory_order_relaxed);
    // With no uid to keep places for, none are kept.
    const size_t reserve = config_.reservedUids.empty()
                               ? 0
                               : std::min(config_.reservedConnections, config_.maxConnections - 1);
    const size_t limit = privileged ? config_.maxConnections : config_.maxConnections - reserve;
    const bool overUid =
        !privileged && config_.maxConnectionsPerUid > 0 && mine >= config_.maxConnectionsPerUid;
    if (overUid || open >= limit) {
      // Perhaps only connections whose peers already closed hold the places: wait a little for
      // this worker (or another) to reap them.
      if (now_ - since < kAdmitWaitMs && waitingAdmit_.size() < kAdmitQueue) {
        waitingAdmit_.push_back(Waiting{std::move(sock), peer, since});
        return -1;
      }
      return refuse(overUid || open < config_.maxConnections);
    }
    ++shared_.perUid[peer.uid];
    stats_.open.fetch_add(1, std::memory_order_relaxed);
  }
  const uint32_t slot = table_.acquire();
  Connection& c = table_.at(slot);
  std::unique_ptr<Session> session =
      shared_.factory.open(index_, peer, Resume(resumeBox_, slot, c.generation() + 1));
  if (!session) {
    table_.release(slot);
    forget(peer.uid);
    return refuse(false);
  }
  stats_.accepted.fetch_add(1, std::memory_order_relaxed);
  c.open(std::move(sock), std::move(session), peer.uid, now_);
  return slot;
}

void Worker::forget(uid_t uid) {
  {
    std::lock_guard lock(shared_.uidMu);
    auto it = shared_.perUid.find(uid);
    if (it != shared_.perUid.end() && --it->second == 0) shared_.perUid.erase(it);
  }
  stats_.open.fetch_sub(1, std::memory_order_relaxed);
}

void Worker::retire(uint32_t slot) {
  const uid_t uid = table_.at(slot).uid();
  table_.release(slot);
  stats_.closed.fetch_add(1, std::memory_order_relaxed);
  forget(uid);
}

Result<std::unique_ptr<Server>> WorkerServer::launch(std::unique_ptr<LoopShared> shared,
                                                     std::vector<std::unique_ptr<Worker>> workers,
                                                     std::string_view name) {
  std::unique_ptr<WorkerServer> server(
      new WorkerServer(std::move(shared), std::move(workers), name));
  server->threads_.reserve(server->workers_.size());
  for (const auto& w : server->workers_)
    server->threads_.emplace_back([s = server.get(), w = w.get()] { s->body(*w); });
  std::unique_lock lock(server->mutex_);
  server->changed_.wait(lock, [&] { return server->reported_ == server->workers_.size(); });
  if (server->initError_) {
    Error error = *server->initError_;
    lock.unlock();
    return error;  // the destructor lets the threads go and joins them
  }
  return std::unique_ptr<Server>(std::move(server));
}

void WorkerServer::body(Worker& worker) {
  pthread_setname_np(pthread_self(), "tokend-worker");
  auto init = worker.init();
  std::unique_lock lock(mutex_);
  if (!init && !initError_) initError_ = init.error();
  ++reported_;
  changed_.notify_all();
  changed_.wait(lock, [&] { return gate_ != Gate::Closed; });
  if (gate_ != Gate::Run) return;
  lock.unlock();
  worker.run();
}

void WorkerServer::open(Gate gate) {
  std::lock_guard lock(mutex_);
  if (gate_ == Gate::Closed) gate_ = gate;
  changed_.notify_all();
}

WorkerServer::~WorkerServer() {
  open(Gate::Quit);
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void WorkerServer::run() {
  open(Gate::Run);
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

void WorkerServer::stop() {
  shared_->stopping.store(true, std::memory_order_release);
  for (const auto& w : workers_) w->wake();
}

}  // namespace tokend::daemon
