// The io_uring backend of the event loop: one ring per worker thread.
#pragma once

#include <memory>

#include "base/result.h"
#include "daemon/loop.h"

namespace tokend::daemon {

// Builds a Server with `config.threads` workers, each with its own ring, provided-buffer ring and
// multishot accept on each listener. Fails with a negative errno when the kernel or a sandbox
// refuses io_uring (io_uring_disabled, seccomp) or lacks what the backend needs (Linux 6.0:
// multishot receive, provided-buffer rings).
Result<std::unique_ptr<Server>> createUringServer(const std::vector<Listener>& listeners,
                                                  const LoopConfig& config,
                                                  SessionFactory& factory);

}  // namespace tokend::daemon
