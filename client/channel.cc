// Channel: connecting, framed reads with descriptor passing, HELLO, the segment's generation.
#include "client/channel.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "shm/segment.h"

namespace tokend::client {

using daemon::Frame;
using daemon::FrameParse;
using daemon::Opcode;
using daemon::ParseStatus;

namespace {

constexpr std::string_view kSoftware = "libtokend/0.1.0";

Result<void> applyTimeout(int fd, int timeoutMs) {
  timeval tv{};
  tv.tv_sec = timeoutMs / 1000;
  tv.tv_usec = static_cast<suseconds_t>(timeoutMs % 1000) * 1000;
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
    return Error::fromErrno(errno, "Failed to set the socket timeout");
  }
  return {};
}

Error socketError(int err, const char* what) {
  const int e = socketErrno(err);
  return Error{-e, std::string(what) + ": " + std::strerror(e)};
}

}  // namespace

int socketErrno(int err) {
  return err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS ? ETIMEDOUT : err;
}

Channel::Channel(UniqueFd fd, int timeoutMs)
    : fd_(std::move(fd)), timeoutMs_(timeoutMs), buf_(new char[kBufferSize]) {}

Result<Channel> Channel::open(const std::string& path, int timeoutMs) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    return makeError("the socket path is empty or too long for a Unix socket", -EINVAL);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::fromErrno(errno, "Failed to create a socket");
  // Before connect: a Unix connect blocks while the daemon's backlog is full, for SO_SNDTIMEO.
  if (auto t = applyTimeout(fd.get(), timeoutMs); !t) return t.error();
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return socketError(errno, ("Failed to connect to " + path).c_str());
  return Channel(std::move(fd), timeoutMs);
}

Result<void> Channel::setTimeout(int timeoutMs) {
  if (timeoutMs == timeoutMs_) return {};
  if (auto t = applyTimeout(fd_.get(), timeoutMs); !t) return t;
  timeoutMs_ = timeoutMs;
  return {};
}

Result<void> Channel::send(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return socketError(errno, "Failed to send to tokend");
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Result<void> Channel::fill() {
  // Keep the unread tail at the front so that a whole frame always fits behind it.
  if (begin_ > 0 && kBufferSize - end_ < daemon::kFrameHeaderSize + daemon::kMaxFramePayload) {
    std::memmove(buf_.get(), buf_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  iovec iov{buf_.get() + end_, kBufferSize - end_};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return socketError(errno, "Failed to read from tokend");
  // Take every descriptor that came, even with n == 0, so that none leaks into this process.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      passed_.reset(fd);
    }
  }
  if (n == 0) return makeError("tokend closed the connection", -ECONNRESET);
  end_ += static_cast<size_t>(n);
  return {};
}

Result<Frame> Channel::next() {
  begin_ += pending_;
  pending_ = 0;
  if (begin_ == end_) begin_ = end_ = 0;
  for (;;) {
    FrameParse p = daemon::parseFrame(std::string_view(buf_.get() + begin_, end_ - begin_));
    if (p.status == ParseStatus::Complete) {
      pending_ = p.consumed;
      return p.frame;
    }
    if (p.status == ParseStatus::Error) {
      return makeError("tokend sent a broken frame: " + std::string(p.message), -EPROTO);
    }
    if (auto f = fill(); !f) return f.error();
  }
}

Result<HelloInfo> Channel::hello(uint32_t features) {
  std::string out;
  daemon::Hello h;
  h.features = features;
  h.software = kSoftware;
  const uint64_t id = nextRequestId();
  daemon::encodeHello(out, id, h);
  if (auto s = send(out); !s) return s.error();
  auto f = next();
  if (!f) return f.error();
  if (f->header.opcode != Opcode::Hello || f->header.requestId != id) {
    return makeError("tokend did not answer HELLO", -EPROTO);
  }
  auto d = daemon::decodeHello(f->payload);
  if (!d) return makeError("tokend's HELLO does not decode: " + d.error().message, -EPROTO);
  return HelloInfo{d->features, std::string(d->software)};
}

Result<UniqueFd> Channel::attachSegment() {
  std::string out;
  const uint64_t id = nextRequestId();
  daemon::encodeShmAttach(out, id);
  passed_.reset();
  if (auto s = send(out); !s) return s.error();
  auto f = next();
  if (!f) return f.error();
  if (f->header.requestId != id) return makeError("tokend answered another request", -EPROTO);
  if (f->header.opcode == Opcode::ShmGranted) {
    if (auto g = daemon::decodeShmGranted(f->payload); !g) {
      return makeError("tokend's SHM_GRANTED does not decode: " + g.error().message, -EPROTO);
    }
    UniqueFd fd = takePassedFd();
    if (!fd) return makeError("tokend granted the segment but passed no descriptor", -EPROTO);
    return fd;
  }
  if (f->header.opcode == Opcode::Error) {
    auto e = daemon::decodeError(f->payload);
    if (!e) return makeError("tokend's ERROR does not decode", -EPROTO);
    const std::string msg = "tokend refused the shared-memory segment: " + std::string(e->message);
    switch (e->code) {
      case daemon::ErrorCode::NotPermitted:
        return makeError(msg, -EACCES);
      case daemon::ErrorCode::Unavailable:
      case daemon::ErrorCode::UnknownOpcode:  // a daemon without the fast path
        return makeError(msg, -EOPNOTSUPP);
      default:
        return makeError(msg, -EPROTO);
    }
  }
  return makeError("tokend did not answer SHM_ATTACH", -EPROTO);
}

Result<uint64_t> segmentGeneration(int fd) {
  shm::SegmentHeader h;
  ssize_t n;
  do {
    n = ::pread(fd, &h, sizeof h, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Error::fromErrno(errno, "Failed to read the segment's header");
  if (static_cast<size_t>(n) != sizeof h || h.magic != shm::kSegmentMagic || h.generation == 0) {
    return makeError("the descriptor tokend passed is not a cache segment", -EPROTO);
  }
  return h.generation;
}

}  // namespace tokend::client
