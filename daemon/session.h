// Sessions: one per connection. Tells the protocol apart by the first bytes, then parses every
// complete request in the received bytes, verifies, and appends the answers in order.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/introspect.h"
#include "daemon/loop.h"
#include "daemon/management.h"
#include "daemon/metrics.h"
#include "daemon/route_rules.h"
#include "daemon/service.h"

namespace tokend::daemon {

struct SessionConfig {
  std::vector<uid_t> shmAllowUids;  // besides the daemon's own uid
  std::vector<gid_t> shmAllowGids;
  RouteRules routeRules;  // --route-rules; empty: forwarded requests are not mapped
};

class SessionFactoryImpl final : public SessionFactory {
 public:
  SessionFactoryImpl(Service& service, Management& management, SessionConfig config, int threads);
  std::unique_ptr<Session> open(int worker, const PeerCred& peer, Resume resume) override;
  // Set once the server exists, for /metrics.
  void setLoopStats(const LoopStats* stats) { loopStats_ = stats; }
  // Set once before the server runs, for POST /v1/introspect (absent: 404).
  void setIntrospector(Introspector* introspector) { introspector_ = introspector; }
  Introspector* introspector() const { return introspector_; }
  // Hooks for a part the daemon runs beside the service (the PostgreSQL replica, SPEC 11): more
  // /metrics text, and why /readyz answers 503 (empty: ready). Set before the server starts.
  void setExtraMetrics(std::function<std::string()> f) { extraMetrics_ = std::move(f); }
  void setNotReady(std::function<std::string()> f) { notReady_ = std::move(f); }

  Service& service() { return service_; }
  Management& management() { return management_; }
  // The Service worker of the writer thread, where management writes run (Service::post).
  Service::Worker& writerWorker() { return *writerWorker_; }
  bool shmAllowed(const PeerCred& peer) const;
  const RouteRules& routeRules() const { return config_.routeRules; }
  const LoopStats* loopStats() const { return loopStats_; }
  std::string renderMetrics() const;
  // Empty when the daemon can answer correctly (GET /readyz), else why not.
  std::string notReady() const;
  // The read-only segment descriptor handed to allowed clients (opened once, kept).
  int shmFd() const { return shmFd_.get(); }

 private:
  Service& service_;
  Management& management_;
  SessionConfig config_;
  std::vector<std::unique_ptr<Service::Worker>> workers_;
  std::unique_ptr<Service::Worker> writerWorker_;
  const LoopStats* loopStats_ = nullptr;
  Introspector* introspector_ = nullptr;
  std::function<std::string()> extraMetrics_;
  std::function<std::string()> notReady_;
  UniqueFd shmFd_;
};

}  // namespace tokend::daemon
