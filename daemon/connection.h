// Connection: one client socket's buffers and the driving of its Session, shared by both backends.
//
// The backends only move bytes: they hand received bytes to onReceived(), ask beginSend() what to
// send next and report the result to endSend(). Everything about when the Session runs, how
// output is batched, where a passed descriptor travels, backpressure, limits and timers is here,
// so the io_uring and epoll backends cannot drift apart.
//
// Thread rules: a Connection belongs to one worker; nothing here is thread-safe.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "daemon/loop.h"

namespace tokend::daemon {

// Milliseconds on the monotonic clock: the unit of every loop timer.
int64_t monotonicMs();

// Reads SO_PEERCRED. Returns a negative errno on failure.
Result<PeerCred> readPeerCred(int fd);

// The next bytes to hand to send(2) or sendmsg(2), with the descriptor to attach (or -1).
struct SendChunk {
  const char* data = nullptr;
  size_t size = 0;
  int fd = -1;
};

class Connection {
 public:
  enum class Expiry { None, Stall, SlowDrain, Idle };

  Connection(const LoopConfig& config, LoopStats& stats) : config_(config), stats_(stats) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Starts serving `fd` (taken) with `session`, for a peer of `uid`.
  void open(UniqueFd fd, std::unique_ptr<Session> session, uid_t uid, int64_t now);
  uid_t uid() const { return uid_; }
  // Closes the socket and drops the Session; buffers keep their capacity for the next
  // connection unless a large answer inflated them.
  void release();

  bool inUse() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }
  // Bumped on every open(), so that a completion or cancel aimed at an earlier connection in
  // the same slot can be recognised.
  uint32_t generation() const { return generation_; }

  // --- Input --------------------------------------------------------------------------------
  // Hands bytes read from the socket to the Session (in place when nothing is held back, the
  // usual case of whole requests in one read). Returns false when the connection must be closed
  // at once: unconsumed input over maxPendingInput, or a passFd with no bytes to carry it.
  [[nodiscard]] bool onReceived(std::string_view data, int64_t now);
  // The peer will send no more (EOF, or the read side was shut down for stop()).
  void onReadEnd() { readEnded_ = true; }
  // The connection is being torn down: the Session is not called again, input is dropped.
  void abandon() {
    closeRequested_ = readEnded_ = true;
    in_.clear();
  }
  // Whether reading more is useful now: the read side is open, the Session has not asked to
  // close, is not waiting for an answer (After::Wait), and output is not blocked.
  bool wantsRead() const { return !readEnded_ && !closeRequested_ && !paused(); }
  // Backpressure: unsent output over maxPendingOutput, or any backlog while every connection's
  // together is over maxBufferedOutput.
  bool outputBlocked() const {
    const size_t owed = unsent();
    return owed > config_.maxPendingOutput || (owed > 0 && overBudget());
  }
  bool overBudget() const {
    return config_.maxBufferedOutput > 0 && stats_.bufferedOutput.load(std::memory_order_relaxed) >
                                                static_cast<int64_t>(config_.maxBufferedOutput);
  }
  // Reading stops: output is blocked or the Session waits for an answer.
  bool paused() const { return waiting_ || outputBlocked(); }
  bool waiting() const { return waiting_; }
  bool readEnded() const { return readEnded_; }
  // The Session's Resume was called: it appends its answer, then held-back input is handed to
  // it. Same return as onReceived.
  [[nodiscard]] bool resume(int64_t now);

  // --- Output -------------------------------------------------------------------------------
  // Whether there is something to send and no send is in flight (never two on one socket).
  bool canSend() const { return !sendInFlight_ && unsent() > 0; }
  bool sendInFlight() const { return sendInFlight_; }
  // Marks a send in flight and returns what it carries. A chunk stops short of the byte a
  // passed descriptor belongs to, so that the descriptor arrives with its own answer.
  SendChunk beginSend();
  // For a chunk with fd >= 0: a msghdr with the SCM_RIGHTS control message, valid until the
  // next beginSend() (it lives in the Connection, as IORING_OP_SENDMSG needs).
  msghdr* message(const SendChunk& chunk);
  // Reports how many bytes of the chunk went out (0 on a failed or interrupted send). Runs the
  // Session on input held back by backpressure once output drains. Same return as onReceived.
  [[nodiscard]] bool endSend(size_t sent, int64_t now);
  size_t unsent() const { return sending_.size() - sendOffset_ + out_.bytes.size(); }

  // --- Lifecycle ----------------------------------------------------------------------------
  // Nothing more will be read or answered and everything owed has been sent: close it.
  bool done() const {
    return (readEnded_ || closeRequested_) && !waiting_ && !sendInFlight_ && unsent() == 0;
  }
  // Stall: input or output pending with no progress for stallTimeoutMs. SlowDrain: output owed
  // for a whole stall window of which under minDrainBytes went out. Idle: nothing pending and
  // no traffic for idleTimeoutMs. A timeout <= 0 is off. Never while the Session waits (the
  // daemon is working, not the peer). Starts the next drain window when this one passed.
  Expiry expiry(int64_t now);

  // Backend-owned state, kept here so that a pooled connection is a single object.
  struct Io {
    bool readArmed = false;   // uring: multishot recv in flight. epoll: socket may be readable.
    bool readCancel = false;  // uring: cancel of the recv submitted, its end not yet seen.
    bool writable = true;     // epoll: the last send did not hit EAGAIN.
    bool dirty = false;       // on the worker's list of connections to settle.
    bool closing = false;     // being torn down; waiting for operations in flight to end.
  } io;

 private:
  bool sessionMayRun() const {
    return !closeRequested_ && !waiting_ && pendingFd_ < 0 && !outputBlocked() && session_;
  }
  bool pump(std::string_view fresh, int64_t now);
  // Takes what one Session call did (its answer's descriptor, Close, Wait); false when a
  // descriptor came with no byte to carry it.
  bool took(After after, size_t before);
  // Brings LoopStats::bufferedOutput and the drain window up to date with unsent().
  void account(int64_t now);

  const LoopConfig& config_;
  LoopStats& stats_;
  uid_t uid_ = 0;
  size_t accounted_ = 0;   // this connection's share of LoopStats::bufferedOutput
  int64_t windowAt_ = 0;   // start of the drain window; 0 while nothing is owed
  size_t windowSent_ = 0;  // bytes sent in it
  bool waiting_ = false;   // the Session returned After::Wait and was not resumed yet
  UniqueFd fd_;
  uint32_t generation_ = 0;
  std::unique_ptr<Session> session_;

  std::string in_;       // received, not yet consumed
  Output out_;           // answers not yet handed to the kernel; the Session appends here
  std::string sending_;  // the buffer a send is working through (swapped with out_.bytes)
  size_t sendOffset_ = 0;
  int pendingFd_ = -1;  // descriptor owed with out_.bytes[pendingFdAt_]
  size_t pendingFdAt_ = 0;
  int sendFd_ = -1;  // descriptor owed with sending_[sendFdAt_]
  size_t sendFdAt_ = 0;
  SendChunk inFlight_;
  bool sendInFlight_ = false;
  bool readEnded_ = false;
  bool closeRequested_ = false;

  int64_t progressAt_ = 0;  // last consume or send, or input arriving after none was held
  int64_t activeAt_ = 0;    // last byte in or out

  iovec iov_{};
  msghdr msg_{};
  alignas(cmsghdr) char control_[CMSG_SPACE(sizeof(int))] = {};
};

// A pool of Connections addressed by slot number. Slots are reused most recently freed first
// and never move, so a slot number can travel through the kernel in user_data.
class ConnectionTable {
 public:
  ConnectionTable(const LoopConfig& config, LoopStats& stats) : config_(config), stats_(stats) {}

  uint32_t acquire();
  void release(uint32_t slot);
  Connection& at(uint32_t slot) { return *slots_[slot]; }
  bool valid(uint32_t slot) const { return slot < slots_.size() && slots_[slot]->inUse(); }
  size_t live() const { return live_; }

  template <class F>
  void forEachLive(F&& f) {
    for (uint32_t i = 0; i < slots_.size(); ++i)
      if (slots_[i]->inUse()) f(i, *slots_[i]);
  }

 private:
  const LoopConfig& config_;
  LoopStats& stats_;
  std::vector<std::unique_ptr<Connection>> slots_;
  std::vector<uint32_t> free_;
  size_t live_ = 0;
};

}  // namespace tokend::daemon
