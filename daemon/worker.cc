// Worker: admission, retirement and the thread-per-worker Server shared by both backends.
#include "daemon/worker.h"

#include <pthread.h>
#include <unistd.h>

#include <cstdint>

namespace tokend::daemon {

void Worker::wake() const {
  const uint64_t one = 1;
  // Only write(2): this runs in signal handlers. A full counter (2^64 - 2 wakes) cannot happen.
  [[maybe_unused]] ssize_t n = ::write(wakeFd_.get(), &one, sizeof(one));
}

int64_t Worker::adopt(int fd, ListenerKind kind) {
  UniqueFd sock(fd);
  if (stopping_) return -1;
  // The limit is global across workers; the counter doubles as the gate so two workers cannot
  // both take the last place.
  if (stats_.open.fetch_add(1, std::memory_order_relaxed) >= config_.maxConnections) {
    stats_.open.fetch_sub(1, std::memory_order_relaxed);
    stats_.refused.fetch_add(1, std::memory_order_relaxed);
    return -1;
  }
  // TCP has no peer credentials: nobody's uid, so that no uid check can match it by accident.
  auto peer = kind == ListenerKind::Unix
                  ? readPeerCred(fd)
                  : Result<PeerCred>(PeerCred{0, static_cast<uid_t>(-1), static_cast<gid_t>(-1)});
  if (peer) peer->listener = kind;
  std::unique_ptr<Session> session;
  if (peer) session = shared_.factory.open(index_, *peer);
  if (!session) {
    stats_.open.fetch_sub(1, std::memory_order_relaxed);
    stats_.refused.fetch_add(1, std::memory_order_relaxed);
    return -1;
  }
  stats_.accepted.fetch_add(1, std::memory_order_relaxed);
  const uint32_t slot = table_.acquire();
  table_.at(slot).open(std::move(sock), std::move(session), now_);
  return slot;
}

void Worker::retire(uint32_t slot) {
  table_.release(slot);
  stats_.closed.fetch_add(1, std::memory_order_relaxed);
  stats_.open.fetch_sub(1, std::memory_order_relaxed);
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
