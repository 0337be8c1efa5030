// The epoll backend of the event loop, for where io_uring is unavailable.
#pragma once

#include <memory>

#include "base/result.h"
#include "daemon/loop.h"

namespace tokend::daemon {

// Builds a Server with `config.threads` workers, each with its own edge-triggered epoll
// instance; each listening socket is shared with EPOLLEXCLUSIVE. Fails with a negative errno.
Result<std::unique_ptr<Server>> createEpollServer(const std::vector<Listener>& listeners,
                                                  const LoopConfig& config,
                                                  SessionFactory& factory);

}  // namespace tokend::daemon
