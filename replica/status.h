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
// Seconds since the replica was last current (about a poll interval while it is; -1: the copy's
// age is unknown, a data dir loaded before tokend recorded it).
double lagSeconds(const ReplicaStats& stats);
// SPEC 11 --max-staleness: whether the copy has not been current for over `maxSeconds` (or its
// age is unknown), so that verification must answer `unavailable`.
bool olderThan(const ReplicaStats& stats, int64_t maxSeconds);

}  // namespace tokend::replica
