// Connection: per-connection buffers, Session driving, limits and timers for both backends.
#include "daemon/connection.h"

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "base/clock.h"

namespace tokend::daemon {

namespace {
// A buffer grown past this by one large answer is given back when the connection closes, so
// that the pool does not pin the peak of every slot.
constexpr size_t kKeepCapacity = 64 * 1024;

void trim(std::string& s) {
  s.clear();
  if (s.capacity() > kKeepCapacity) std::string().swap(s);
}
}  // namespace

int64_t monotonicMs() {
  return monotonicNanos() / 1000000;
}

Result<PeerCred> readPeerCred(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    return Error::fromErrno(errno, "getsockopt(SO_PEERCRED)");
  PeerCred peer{cred.pid, cred.uid, cred.gid};
  peer.fd = fd;
  return peer;
}

void Connection::open(UniqueFd fd, std::unique_ptr<Session> session, uid_t uid, int64_t now) {
  fd_ = std::move(fd);
  session_ = std::move(session);
  uid_ = uid;
  ++generation_;
  progressAt_ = activeAt_ = now;
  io = Io{};
}

void Connection::release() {
  fd_.reset();
  session_.reset();
  trim(in_);
  trim(out_.bytes);
  trim(sending_);
  out_.passFd = -1;
  sendOffset_ = 0;
  pendingFd_ = sendFd_ = -1;
  pendingFdAt_ = sendFdAt_ = 0;
  inFlight_ = SendChunk{};
  sendInFlight_ = readEnded_ = closeRequested_ = waiting_ = false;
  account(0);
  io = Io{};
}

void Connection::account(int64_t now) {
  const size_t owed = unsent();
  if (owed != accounted_) {
    stats_.bufferedOutput.fetch_add(static_cast<int64_t>(owed) - static_cast<int64_t>(accounted_),
                                    std::memory_order_relaxed);
    accounted_ = owed;
  }
  if (owed == 0) {
    windowAt_ = 0;
  } else if (windowAt_ == 0) {
    windowAt_ = now;
    windowSent_ = 0;
  }
}

bool Connection::took(After after, size_t before) {
  bool ok = true;
  if (out_.passFd >= 0) {
    // The descriptor belongs to the answer written by this call; SCM_RIGHTS needs at least
    // one byte to travel with.
    if (out_.bytes.size() == before) ok = false;
    pendingFd_ = std::exchange(out_.passFd, -1);
    pendingFdAt_ = before;
  }
  if (after == After::Close) closeRequested_ = true;
  if (after == After::Wait) waiting_ = true;
  return ok;
}

bool Connection::resume(int64_t now) {
  if (!waiting_ || !session_) return true;
  waiting_ = false;
  progressAt_ = activeAt_ = now;
  const size_t before = out_.bytes.size();
  bool ok = took(session_->onResume(out_), before);
  if (ok && !closeRequested_ && !waiting_ && !in_.empty()) ok = pump({}, now);
  if (closeRequested_) in_.clear();
  account(now);
  return ok;
}

bool Connection::onReceived(std::string_view data, int64_t now) {
  activeAt_ = now;
  // Once the Session asked to close, what the peer still sends has no one to read it.
  if (closeRequested_) return true;
  return pump(data, now);
}

bool Connection::pump(std::string_view fresh, int64_t now) {
  const bool wasEmpty = in_.empty();
  // Parse in place when nothing is held back, so that the common case (whole requests in one
  // read) copies only a partial tail, if any.
  std::string_view src;
  if (wasEmpty) {
    src = fresh;
  } else {
    in_.append(fresh);
    src = in_;
  }

  size_t offset = 0;
  bool ok = true;
  // The Session may consume fewer than all whole requests per call (one carrying a descriptor,
  // say), so call it until it makes no progress.
  while (offset < src.size() && sessionMayRun()) {
    size_t consumed = 0;
    const size_t before = out_.bytes.size();
    const After after = session_->onInput(src.substr(offset), consumed, out_);
    offset += std::min(consumed, src.size() - offset);
    if (consumed > 0) progressAt_ = now;
    ok = took(after, before);
    if (consumed == 0 || !ok) break;
  }

  if (closeRequested_) {
    in_.clear();
    account(now);
    return ok;
  }
  if (wasEmpty) {
    in_.append(src.substr(offset));
  } else {
    in_.erase(0, offset);
  }
  // A partial request starts its stall clock when it first appears.
  if (wasEmpty && !in_.empty()) progressAt_ = now;
  account(now);
  // Held-back input is only over the limit if the Session had its chance to consume it; while
  // output is blocked or the Session waits the backends stop reading, which bounds it.
  if (sessionMayRun() && in_.size() > config_.maxPendingInput) return false;
  return ok;
}

SendChunk Connection::beginSend() {
  if (sendOffset_ == sending_.size()) {
    // The previous buffer is through: the pending answers become the next one. Swapping keeps
    // both capacities, so steady state allocates nothing.
    sending_.clear();
    sendOffset_ = 0;
    std::swap(sending_, out_.bytes);
    sendFd_ = std::exchange(pendingFd_, -1);
    sendFdAt_ = pendingFdAt_;
  }
  SendChunk chunk{sending_.data() + sendOffset_, sending_.size() - sendOffset_, -1};
  if (sendFd_ >= 0) {
    if (sendOffset_ < sendFdAt_) {
      chunk.size = sendFdAt_ - sendOffset_;
    } else {
      chunk.fd = sendFd_;
    }
  }
  inFlight_ = chunk;
  sendInFlight_ = true;
  return chunk;
}

msghdr* Connection::message(const SendChunk& chunk) {
  iov_.iov_base = const_cast<char*>(chunk.data);
  iov_.iov_len = chunk.size;
  msg_ = msghdr{};
  msg_.msg_iov = &iov_;
  msg_.msg_iovlen = 1;
  msg_.msg_control = control_;
  msg_.msg_controllen = sizeof(control_);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg_);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &chunk.fd, sizeof(int));
  return &msg_;
}

bool Connection::endSend(size_t sent, int64_t now) {
  sendInFlight_ = false;
  sent = std::min(sent, inFlight_.size);
  if (sent > 0) {
    // The descriptor went with the first byte of its chunk.
    if (inFlight_.fd >= 0) sendFd_ = -1;
    sendOffset_ += sent;
    windowSent_ += sent;
    progressAt_ = activeAt_ = now;
  }
  if (sendOffset_ == sending_.size()) {
    sending_.clear();
    sendOffset_ = 0;
  }
  inFlight_ = SendChunk{};
  if (!in_.empty() && sessionMayRun()) return pump({}, now);
  account(now);
  return true;
}

Connection::Expiry Connection::expiry(int64_t now) {
  if (waiting_) return Expiry::None;
  if (!in_.empty() || unsent() > 0) {
    if (config_.stallTimeoutMs > 0 && now - progressAt_ > config_.stallTimeoutMs)
      return Expiry::Stall;
    // The window opened when output became owed and it has been owed since (else account()
    // would have closed it): too little of it went out in a whole window.
    if (config_.stallTimeoutMs > 0 && config_.minDrainBytes > 0 && windowAt_ > 0 &&
        now - windowAt_ >= config_.stallTimeoutMs) {
      if (windowSent_ < config_.minDrainBytes) return Expiry::SlowDrain;
      windowAt_ = now;
      windowSent_ = 0;
    }
    return Expiry::None;
  }
  if (config_.idleTimeoutMs > 0 && now - activeAt_ > config_.idleTimeoutMs) return Expiry::Idle;
  return Expiry::None;
}

uint32_t ConnectionTable::acquire() {
  ++live_;
  if (!free_.empty()) {
    const uint32_t slot = free_.back();
    free_.pop_back();
    return slot;
  }
  slots_.push_back(std::make_unique<Connection>(config_, stats_));
  return static_cast<uint32_t>(slots_.size() - 1);
}

void ConnectionTable::release(uint32_t slot) {
  slots_[slot]->release();
  free_.push_back(slot);
  --live_;
}

}  // namespace tokend::daemon
