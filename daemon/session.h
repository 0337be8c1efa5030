// Sessions: one per connection. Tells the protocol apart by the first bytes, then parses every
// complete request in the received bytes, verifies, and appends the answers in order.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/loop.h"
#include "daemon/management.h"
#include "daemon/metrics.h"
#include "daemon/service.h"

namespace tokend::daemon {

struct SessionConfig {
  std::vector<uid_t> shmAllowUids;  // besides the daemon's own uid
  std::vector<gid_t> shmAllowGids;
};

class SessionFactoryImpl final : public SessionFactory {
 public:
  SessionFactoryImpl(Service& service, Management& management, SessionConfig config, int threads);
  std::unique_ptr<Session> open(int worker, const PeerCred& peer) override;
  // Set once the server exists, for /metrics.
  void setLoopStats(const LoopStats* stats) { loopStats_ = stats; }
  // Hooks for a part the daemon runs beside the service (the PostgreSQL replica, SPEC 11): more
  // /metrics text, and why /readyz answers 503 (empty: ready). Set before the server starts.
  void setExtraMetrics(std::function<std::string()> f) { extraMetrics_ = std::move(f); }
  void setNotReady(std::function<std::string()> f) { notReady_ = std::move(f); }
  std::string notReady() const { return notReady_ ? notReady_() : std::string(); }

  Service& service() { return service_; }
  Management& management() { return management_; }
  bool shmAllowed(const PeerCred& peer) const;
  const LoopStats* loopStats() const { return loopStats_; }
  std::string renderMetrics() const;
  // The read-only segment descriptor handed to allowed clients (opened once, kept).
  int shmFd() const { return shmFd_.get(); }

 private:
  Service& service_;
  Management& management_;
  SessionConfig config_;
  std::vector<std::unique_ptr<Service::Worker>> workers_;
  const LoopStats* loopStats_ = nullptr;
  std::function<std::string()> extraMetrics_;
  std::function<std::string()> notReady_;
  UniqueFd shmFd_;
};

}  // namespace tokend::daemon
