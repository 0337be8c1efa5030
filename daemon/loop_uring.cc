// The io_uring backend: multishot accept and receive, provided buffers, one send per batch.
#include "daemon/loop_uring.h"

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "base/log.h"
#include "daemon/worker.h"

namespace tokend::daemon {

namespace {

// user_data packing, defined here and nowhere else:
//
//   63     56 55                  32 31                                0
//   [  op   ] [ generation, 24 bits ] [          connection slot         ]
//
// `op` says what completed. Recv and Send name their connection by slot and generation (the low
// 24 bits of Connection::generation()): a slot is only reused once its operations have ended,
// but a cancel aimed at a recv must not hit the next connection in that slot. Accept carries its
// listener's index in the slot bits; Wake, Tick and Cancel carry nothing.
enum class Op : uint8_t { Accept = 1, Wake, Tick, Recv, Send, Cancel };

constexpr uint64_t pack(Op op, uint32_t slot = 0, uint32_t generation = 0) {
  return uint64_t{static_cast<uint8_t>(op)} << 56 | uint64_t{generation & 0xffffff} << 32 | slot;
}
constexpr Op opOf(uint64_t data) {
  return static_cast<Op>(data >> 56);
}
constexpr uint32_t slotOf(uint64_t data) {
  return static_cast<uint32_t>(data);
}
constexpr uint32_t generationOf(uint64_t data) {
  return static_cast<uint32_t>(data >> 32) & 0xffffff;
}

constexpr unsigned kSqEntries = 256;
// Multishot operations post many completions per submission; a large CQ keeps the kernel off
// its overflow list.
constexpr unsigned kCqEntries = 4096;
// Provided receive buffers per worker. They are handed back as soon as a completion is copied
// out, so they only need to cover one batch of completions.
constexpr unsigned kBufCount = 256;  // a power of two, as buffer rings require
constexpr unsigned kBufSize = 4096;
constexpr uint16_t kBufGroup = 0;
// send(2) lengths travel as 32 bits in an SQE; longer answers go out as short sends.
constexpr size_t kMaxSend = size_t{1} << 30;
// After the stop deadline cuts every connection, how long to wait for their operations to end.
constexpr int kStopGraceMs = 1000;

class UringWorker final : public Worker {
 public:
  static Result<std::unique_ptr<Worker>> create(LoopShared& shared, int index);
  ~UringWorker() override;
  Result<void> init() override;
  void run() override;

 private:
  UringWorker(LoopShared& shared, int index, UniqueFd wakeFd)
      : Worker(shared, index, std::move(wakeFd)) {}
  void teardown();

  io_uring_sqe* sqe();
  void armAccept(size_t listener);
  void armAccepts();  // every listener whose accept is not armed
  void armWake();
  void armTick();
  void armRecv(uint32_t slot, Connection& c);
  void cancelRecv(uint32_t slot, Connection& c);
  void submitSend(uint32_t slot, Connection& c);
  void recycle(unsigned bid);

  void handle(const io_uring_cqe& cqe);
  void onAccept(uint64_t data, int res, unsigned flags);
  void onRecv(uint64_t data, int res, unsigned flags);
  void onSend(uint64_t data, int res);
  void onTick();
  void settle(uint32_t slot);
  void abort(uint32_t slot, Connection& c);
  void beginStop();

  io_uring ring_{};
  bool ringReady_ = false;
  void* bufMem_ = MAP_FAILED;
  size_t bufMemSize_ = 0;
  io_uring_buf_ring* bufRing_ = nullptr;
  char* bufBase_ = nullptr;
  bool leakBuffers_ = false;
  uint64_t wakeValue_ = 0;  // the eventfd read lands here
  __kernel_timespec tick_{0, int64_t{kTickMs} * 1000000};
  std::vector<uint8_t> acceptArmed_;  // per listener
  bool anyAcceptArmed() const {
    return std::find(acceptArmed_.begin(), acceptArmed_.end(), 1) != acceptArmed_.end();
  }
  bool acceptRetry_ = false;  // re-arm accept at the next tick (after EMFILE and the like)
};

Result<std::unique_ptr<Worker>> UringWorker::create(LoopShared& shared, int index) {
  // Blocking on purpose: a read on an O_NONBLOCK file in io_uring fails with EAGAIN instead of
  // waiting.
  UniqueFd wake(eventfd(0, EFD_CLOEXEC));
  if (!wake) return Error::fromErrno(errno, "eventfd");
  return std::unique_ptr<Worker>(new UringWorker(shared, index, std::move(wake)));
}

Result<void> UringWorker::init() {
  // Runs on the worker's thread: SINGLE_ISSUER makes the creating task the only submitter.
  io_uring_params p{};
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  p.cq_entries = kCqEntries;
  int rc = io_uring_queue_init_params(kSqEntries, &ring_, &p);
  if (rc == -EINVAL) {
    // Before Linux 6.1 (or with those flags refused): plain setup works the same, a little slower.
    p = io_uring_params{};
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = kCqEntries;
    rc = io_uring_queue_init_params(kSqEntries, &ring_, &p);
  }
  if (rc < 0) return Error::fromErrno(-rc, "io_uring_setup");
  ringReady_ = true;

  // Multishot receive came in Linux 6.0 with IORING_OP_SEND_ZC; there is no probe for the flag
  // itself, so the opcode stands in for it.
  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  const bool recent = probe && io_uring_opcode_supported(probe, IORING_OP_SEND_ZC);
  if (probe) io_uring_free_probe(probe);
  if (!recent)
    return makeError("io_uring: kernel lacks multishot receive (needs Linux 6.0)", -ENOSYS);

  // liburing 2.3 has no io_uring_setup_buf_ring: map the ring and the buffers ourselves, in one
  // page-aligned mapping, ring first.
  const size_t ringBytes =
      (kBufCount * sizeof(io_uring_buf) + size_t(getpagesize()) - 1) & ~(size_t(getpagesize()) - 1);
  bufMemSize_ = ringBytes + size_t{kBufCount} * kBufSize;
  bufMem_ = mmap(nullptr, bufMemSize_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (bufMem_ == MAP_FAILED) return Error::fromErrno(errno, "mmap(provided buffers)");
  // Received requests (tokens in them) pass through these buffers: keep them out of core dumps.
  // Best effort: a kernel without MADV_DONTDUMP still serves.
  (void)madvise(bufMem_, bufMemSize_, MADV_DONTDUMP);
  bufRing_ = static_cast<io_uring_buf_ring*>(bufMem_);
  bufBase_ = static_cast<char*>(bufMem_) + ringBytes;

  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<uint64_t>(bufRing_);
  reg.ring_entries = kBufCount;
  reg.bgid = kBufGroup;
  rc = io_uring_register_buf_ring(&ring_, &reg, 0);
  if (rc < 0) return Error::fromErrno(-rc, "io_uring_register_buf_ring");
  io_uring_buf_ring_init(bufRing_);
  const int mask = io_uring_buf_ring_mask(kBufCount);
  for (unsigned i = 0; i < kBufCount; ++i)
    io_uring_buf_ring_add(bufRing_, bufBase_ + size_t{i} * kBufSize, kBufSize,
                          static_cast<unsigned short>(i), mask, static_cast<int>(i));
  io_uring_buf_ring_advance(bufRing_, kBufCount);
  return {};
}

void UringWorker::teardown() {
  if (ringReady_) {
    io_uring_queue_exit(&ring_);
    ringReady_ = false;
  }
}

UringWorker::~UringWorker() {
  teardown();
  if (bufMem_ != MAP_FAILED && !leakBuffers_) munmap(bufMem_, bufMemSize_);
}

io_uring_sqe* UringWorker::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (s == nullptr) {
    // The submission queue is full: hand it to the kernel and take a fresh entry.
    io_uring_submit(&ring_);
    s = io_uring_get_sqe(&ring_);
  }
  return s;
}

void UringWorker::armAccept(size_t listener) {
  io_uring_sqe* s = sqe();
  io_uring_prep_multishot_accept(s, shared_.listeners[listener].fd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(s, pack(Op::Accept, static_cast<uint32_t>(listener)));
  acceptArmed_[listener] = 1;
}

void UringWorker::armAccepts() {
  acceptArmed_.resize(shared_.listeners.size(), 0);
  for (size_t i = 0; i < acceptArmed_.size(); ++i)
    if (!acceptArmed_[i]) armAccept(i);
}

void UringWorker::armWake() {
  io_uring_sqe* s = sqe();
  io_uring_prep_read(s, wakeFd_.get(), &wakeValue_, sizeof(wakeValue_), 0);
  io_uring_sqe_set_data64(s, pack(Op::Wake));
}

void UringWorker::armTick() {
  io_uring_sqe* s = sqe();
  io_uring_prep_timeout(s, &tick_, 0, 0);
  io_uring_sqe_set_data64(s, pack(Op::Tick));
}

void UringWorker::armRecv(uint32_t slot, Connection& c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_recv_multishot(s, c.fd(), nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = kBufGroup;
  io_uring_sqe_set_data64(s, pack(Op::Recv, slot, c.generation()));
  c.io.readArmed = true;
  c.io.readCancel = false;
}

void UringWorker::cancelRecv(uint32_t slot, Connection& c) {
  io_uring_sqe* s = sqe();
  io_uring_prep_cancel64(s, pack(Op::Recv, slot, c.generation()), 0);
  io_uring_sqe_set_data64(s, pack(Op::Cancel));
  c.io.readCancel = true;
}

void UringWorker::submitSend(uint32_t slot, Connection& c) {
  const SendChunk chunk = c.beginSend();
  io_uring_sqe* s = sqe();
  if (chunk.fd >= 0) {
    io_uring_prep_sendmsg(s, c.fd(), c.message(chunk), MSG_NOSIGNAL);
  } else {
    io_uring_prep_send(s, c.fd(), chunk.data, std::min(chunk.size, kMaxSend), MSG_NOSIGNAL);
  }
  io_uring_sqe_set_data64(s, pack(Op::Send, slot, c.generation()));
}

void UringWorker::recycle(unsigned bid) {
  io_uring_buf_ring_add(bufRing_, bufBase_ + size_t{bid} * kBufSize, kBufSize,
                        static_cast<unsigned short>(bid), io_uring_buf_ring_mask(kBufCount), 0);
  io_uring_buf_ring_advance(bufRing_, 1);
}

void UringWorker::run() {
  now_ = monotonicMs();
  armWake();
  armTick();
  if (stopRequested()) {
    beginStop();
  } else {
    armAccepts();
  }

  for (;;) {
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME) {
      log::error("Failed to wait on the io_uring ring of worker {}: {}", index_,
                 std::strerror(-rc));
      break;
    }
    now_ = monotonicMs();

    unsigned head;
    unsigned seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      handle(*cqe);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);

    // Every connection touched by this batch gets at most one send: the answers to all requests
    // its receives completed, together (pipelining).
    for (size_t i = 0; i < dirty_.size(); ++i) settle(dirty_[i]);
    dirty_.clear();
    // Connections retired above may have made places for those waiting to be admitted.
    admitWaiting([&](uint32_t slot) { markDirty(slot); });
    for (size_t i = 0; i < dirty_.size(); ++i) settle(dirty_[i]);
    dirty_.clear();

    if (stopping_) {
      if (table_.live() == 0 && !anyAcceptArmed()) break;
      if (now_ > stopDeadline_ + kStopGraceMs) {
        // Operations still in flight after their sockets were shut down: the kernel may yet
        // touch the buffers, so they are not unmapped.
        leakBuffers_ = true;
        break;
      }
    }
  }

  teardown();
  table_.forEachLive([&](uint32_t slot, Connection&) { retire(slot); });
}

void UringWorker::handle(const io_uring_cqe& cqe) {
  switch (opOf(cqe.user_data)) {
    case Op::Accept:
      onAccept(cqe.user_data, cqe.res, cqe.flags);
      break;
    case Op::Wake:
      resumeWaiting([&](uint32_t slot, Connection& c) { abort(slot, c); });
      if (stopRequested()) {
        if (!stopping_) beginStop();
      } else if (cqe.res != -ECANCELED) {
        armWake();
      }
      break;
    case Op::Tick:
      if (cqe.res != -ECANCELED) armTick();
      onTick();
      break;
    case Op::Recv:
      onRecv(cqe.user_data, cqe.res, cqe.flags);
      break;
    case Op::Send:
      onSend(cqe.user_data, cqe.res);
      break;
    case Op::Cancel:
      break;
  }
}

void UringWorker::onAccept(uint64_t data, int res, unsigned flags) {
  const size_t listener = slotOf(data);
  if (listener >= acceptArmed_.size()) return;
  if (!(flags & IORING_CQE_F_MORE)) acceptArmed_[listener] = 0;
  if (res >= 0) {
    const int64_t slot = adopt(res, shared_.listeners[listener].kind);
    if (slot >= 0) markDirty(static_cast<uint32_t>(slot));  // settle arms its receive
  }
  if (acceptArmed_[listener] || stopping_) return;
  if (res >= 0 || res == -EINTR || res == -ECONNABORTED) {
    armAccept(listener);
  } else if (res != -ECANCELED) {
    // EMFILE, ENFILE, ENOMEM: re-arming now would spin; try again at the next tick.
    acceptRetry_ = true;
  }
}

void UringWorker::onRecv(uint64_t data, int res, unsigned flags) {
  const uint32_t slot = slotOf(data);
  const bool mine =
      table_.valid(slot) && (table_.at(slot).generation() & 0xffffff) == generationOf(data);
  if (flags & IORING_CQE_F_BUFFER) {
    const unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
    if (mine && res > 0) {
      Connection& c = table_.at(slot);
      countIn(static_cast<size_t>(res));
      if (!c.io.closing &&
          !c.onReceived({bufBase_ + size_t{bid} * kBufSize, static_cast<size_t>(res)}, now_))
        abort(slot, c);
    }
    recycle(bid);
  }
  if (!mine) return;  // cannot happen: a slot is only reused once its receive has ended
  Connection& c = table_.at(slot);
  if (!(flags & IORING_CQE_F_MORE)) {
    // The kernel ended the multishot receive (EOF, error, cancel, or ENOBUFS when every buffer
    // was in use); settle re-arms it if reading is still wanted.
    c.io.readArmed = false;
    c.io.readCancel = false;
  }
  if (res == 0) {
    c.onReadEnd();
  } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
    c.onReadEnd();
    abort(slot, c);
  }
  markDirty(slot);
}

void UringWorker::onSend(uint64_t data, int res) {
  const uint32_t slot = slotOf(data);
  if (!table_.valid(slot)) return;  // cannot happen: a send in flight keeps its slot
  Connection& c = table_.at(slot);
  if (res >= 0) {
    countOut(static_cast<size_t>(res));
    if (!c.endSend(static_cast<size_t>(res), now_)) abort(slot, c);
  } else {
    const bool ok = c.endSend(0, now_);
    if (!ok || (res != -EINTR && res != -EAGAIN)) abort(slot, c);
  }
  markDirty(slot);
}

void UringWorker::onTick() {
  if (acceptRetry_ && !stopping_) {
    acceptRetry_ = false;
    armAccepts();
  }
  sweep([&](uint32_t slot, Connection& c) { abort(slot, c); });
  shedLargest([&](uint32_t slot, Connection& c) { abort(slot, c); });
  if (stopping_ && now_ >= stopDeadline_) {
    table_.forEachLive([&](uint32_t slot, Connection& c) { abort(slot, c); });
  }
}

void UringWorker::abort(uint32_t slot, Connection& c) {
  if (c.io.closing) return;
  c.io.closing = true;
  c.abandon();
  // Wakes the receive (it ends with 0) and any blocked send (EPIPE); the socket is closed once
  // both have completed, as the kernel may still be using their buffers.
  ::shutdown(c.fd(), SHUT_RDWR);
  markDirty(slot);
}

void UringWorker::settle(uint32_t slot) {
  Connection& c = table_.at(slot);
  if (!c.inUse()) return;
  c.io.dirty = false;
  if (c.io.closing) {
    if (!c.io.readArmed && !c.sendInFlight()) retire(slot);
    return;
  }
  if (c.canSend()) submitSend(slot, c);
  if (c.done()) {
    if (!c.io.readArmed) {
      retire(slot);
    } else {
      // Everything owed is sent; shutting down ends the receive, then the socket closes.
      c.io.closing = true;
      ::shutdown(c.fd(), SHUT_RDWR);
    }
    return;
  }
  if (!c.io.readArmed && c.wantsRead()) {
    armRecv(slot, c);
  } else if (c.io.readArmed && c.paused() && !c.io.readCancel) {
    // Backpressure: stop reading while the peer is not taking its answers (or the Session
    // waits for one); re-armed above once output drains.
    cancelRecv(slot, c);
  }
}

void UringWorker::beginStop() {
  stopping_ = true;
  stopDeadline_ = now_ + kStopFlushMs;
  acceptRetry_ = false;
  for (size_t i = 0; i < acceptArmed_.size(); ++i) {
    if (!acceptArmed_[i]) continue;
    io_uring_sqe* s = sqe();
    io_uring_prep_cancel64(s, pack(Op::Accept, static_cast<uint32_t>(i)), 0);
    io_uring_sqe_set_data64(s, pack(Op::Cancel));
  }
  // Shutting the read side lets the receive drain what the peer already sent, then end with 0:
  // those requests are answered, and the connection closes once its output is flushed.
  table_.forEachLive([&](uint32_t slot, Connection& c) {
    if (c.io.closing) return;
    ::shutdown(c.fd(), SHUT_RD);
    markDirty(slot);
  });
}

}  // namespace

Result<std::unique_ptr<Server>> createUringServer(const std::vector<Listener>& listeners,
                                                  const LoopConfig& config,
                                                  SessionFactory& factory) {
  auto shared = std::make_unique<LoopShared>(listeners, config, factory);
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < config.threads; ++i) {
    auto w = UringWorker::create(*shared, i);
    if (!w) return w.error();
    workers.push_back(std::move(*w));
  }
  return WorkerServer::launch(std::move(shared), std::move(workers), "io_uring");
}

}  // namespace tokend::daemon
