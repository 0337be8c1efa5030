// Channel: one blocking binary-protocol connection to tokend, with timeouts and SCM_RIGHTS.
//
// Library code: no logging, no exceptions escaping, errors as negative errno with a message that
// never holds request bytes (a request carries a token).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/result.h"
#include "base/unique_fd.h"
#include "daemon/binary_protocol.h"

namespace tokend::client {

// What the daemon said in its HELLO answer.
struct HelloInfo {
  uint32_t features = 0;
  std::string software;
};

class Channel {
 public:
  // Connects to the Unix socket at `path`; every later send and wait is bounded by `timeoutMs`.
  // Errors: -EINVAL (path too long), the errno of socket(2)/connect(2) (-ETIMEDOUT when the
  // daemon's backlog stays full for the timeout).
  static Result<Channel> open(const std::string& path, int timeoutMs);

  Channel(Channel&&) noexcept = default;
  Channel& operator=(Channel&&) noexcept = default;
  ~Channel() = default;

  int fd() const { return fd_.get(); }
  Result<void> setTimeout(int timeoutMs);
  uint64_t nextRequestId() { return ++lastId_; }

  // Sends all of `bytes`. Errors: -ETIMEDOUT, -EPIPE/-ECONNRESET (the daemon is gone).
  Result<void> send(std::string_view bytes);

  // The next whole frame from the daemon; its payload stays valid until the next call. Errors:
  // -ETIMEDOUT, -ECONNRESET (closed by the daemon, also mid-frame), -EPROTO (broken framing).
  Result<daemon::Frame> next();

  // Whether bytes of a further frame are already buffered (then poll(2) would not say so).
  bool buffered() const { return end_ - begin_ > pending_; }

  // The descriptor that came with SCM_RIGHTS since the last call (invalid if none). Later
  // descriptors replace (and close) earlier ones: the protocol sends one per SHM_ATTACH.
  UniqueFd takePassedFd() { return std::move(passed_); }

  // HELLO: offers `features`, returns the daemon's answer. Errors as send()/next(), -EPROTO for
  // an answer that is not a HELLO.
  Result<HelloInfo> hello(uint32_t features);

  // SHM_ATTACH: the segment's read-only descriptor. Errors: -EACCES (the daemon refused this
  // process's credentials; the message is the daemon's), -EOPNOTSUPP (the daemon has no segment),
  // -EPROTO (a grant without a descriptor, or another answer), and those of send()/next().
  Result<UniqueFd> attachSegment();

 private:
  Channel(UniqueFd fd, int timeoutMs);
  Result<void> fill();

  static constexpr size_t kBufferSize = 2 * (daemon::kFrameHeaderSize + daemon::kMaxFramePayload);

  UniqueFd fd_;
  int timeoutMs_ = 0;
  std::unique_ptr<char[]> buf_;
  size_t begin_ = 0;    // first byte not yet handed out
  size_t end_ = 0;      // one past the last byte received
  size_t pending_ = 0;  // bytes of the frame last returned by next(), consumed on the next call
  UniqueFd passed_;
  uint64_t lastId_ = 0;
};

// The generation of the segment behind `fd` (read from its header, not mapped), or an error:
// -EPROTO when it is not a tokend segment, else the errno of pread(2).
Result<uint64_t> segmentGeneration(int fd);

// Maps the errno of a failed socket call for users: EAGAIN/EWOULDBLOCK (SO_RCVTIMEO) is a timeout.
int socketErrno(int err);

}  // namespace tokend::client
