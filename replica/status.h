// The replica's state for /metrics (tokend_replica_*) and /readyz.
#pragma once

#include <string>

#include "replica/replica.h"

namespace tokend::replica {

// Prometheus text: tokend_replica_connected, _current, _lag_seconds (since the last poll that
// applied), _changes_applied_total, _reconnects_total, _rows_refused_total, _polls_total,
// _full_loads_total.
std::string renderMetrics(const ReplicaStats& stats);
// Why the replica cannot answer as current ("" when it can).
std::string notReady(const ReplicaStats& stats);
// Seconds since the replica was last current (0 while it is).
double lagSeconds(const ReplicaStats& stats);

}  // namespace tokend::replica
