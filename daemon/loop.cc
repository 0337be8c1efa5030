// Server::create: picks the event-loop backend.
#include "daemon/loop.h"

#include "base/log.h"
#include "daemon/loop_epoll.h"
#include "daemon/loop_uring.h"

namespace tokend::daemon {

Result<std::unique_ptr<Server>> Server::create(int listenFd, const LoopConfig& config,
                                               SessionFactory& factory) {
  return create(std::vector<Listener>{{listenFd, ListenerKind::Unix}}, config, factory);
}

Result<std::unique_ptr<Server>> Server::create(std::vector<Listener> listeners,
                                               const LoopConfig& config, SessionFactory& factory) {
  if (config.threads < 1) return makeError("event loop: threads must be at least 1");
  if (listeners.empty()) return makeError("event loop: no listening socket");
  switch (config.backend) {
    case Backend::Uring:
      return createUringServer(listeners, config, factory);
    case Backend::Epoll:
      return createEpollServer(listeners, config, factory);
    case Backend::Auto:
      break;
  }
  auto uring = createUringServer(listeners, config, factory);
  if (uring) return uring;
  // The one place this is logged: the daemon still serves, only slower.
  log::warn("io_uring unavailable, falling back to epoll: {}", uring.error().message);
  return createEpollServer(listeners, config, factory);
}

}  // namespace tokend::daemon
