// tokend_replica_* metrics and readiness.
#include "replica/status.h"

#include <fmt/format.h>

#include <chrono>

namespace tokend::replica {

double lagSeconds(const ReplicaStats& s) {
  const int64_t at = s.currentAtUs.load(std::memory_order_relaxed);
  if (at == 0) return -1;
  const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  return static_cast<double>(now - at) / 1e6;
}

bool olderThan(const ReplicaStats& s, int64_t maxSeconds) {
  const double lag = lagSeconds(s);
  return lag < 0 || lag > static_cast<double>(maxSeconds);
}

std::string renderMetrics(const ReplicaStats& s) {
  std::string o;
  auto one = [&](const char* name, const char* type, const char* help, auto value) {
    o += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
  };
  one("tokend_replica_connected", "gauge", "1 while connected to PostgreSQL.",
      s.connected.load(std::memory_order_relaxed) ? 1 : 0);
  one("tokend_replica_current", "gauge",
      "1 while the last poll of PostgreSQL's change log applied (the copy is current).",
      s.current.load(std::memory_order_relaxed) ? 1 : 0);
  one("tokend_replica_lag_seconds", "gauge",
      "Seconds since the local copy was last known current (-1: never since start).",
      lagSeconds(s));
  one("tokend_replica_changes_applied_total", "counter",
      "Rows written to or removed from the local copy.",
      s.changesApplied.load(std::memory_order_relaxed));
  one("tokend_replica_reconnects_total", "counter", "Connections to PostgreSQL made again.",
      s.reconnects.load(std::memory_order_relaxed));
  one("tokend_replica_rows_refused_total", "counter",
      "Rows that grant nothing (fail closed): bad hash, unknown scope, user deleted, ...",
      s.rowsRefused.load(std::memory_order_relaxed));
  one("tokend_replica_polls_total", "counter", "Polls of the change log.",
      s.polls.load(std::memory_order_relaxed));
  one("tokend_replica_full_loads_total", "counter", "Full snapshots loaded.",
      s.fullLoads.load(std::memory_order_relaxed));
  one("tokend_replica_slow_polls_total", "counter",
      "Polls whose query and apply took over 50 ms (each logs its parts, at most every 10 s).",
      s.slowPolls.load(std::memory_order_relaxed));
  one("tokend_replica_reconcile_passes_total", "counter",
      "Whole passes comparing the copy with PostgreSQL (--reconcile-interval).",
      s.reconcilePasses.load(std::memory_order_relaxed));
  one("tokend_replica_reconcile_compared_total", "counter",
      "Rows compared with PostgreSQL by reconciliation.",
      s.reconcileCompared.load(std::memory_order_relaxed));
  one("tokend_replica_reconcile_repaired_total", "counter",
      "Rows that differed from PostgreSQL without a change-log entry, and were repaired.",
      s.reconcileRepaired.load(std::memory_order_relaxed));
  one("tokend_replica_changelog_pruned_total", "counter",
      "Rows of PostgreSQL's change log this replica deleted (no replica needed them).",
      s.changelogPruned.load(std::memory_order_relaxed));
  return o;
}

std::string notReady(const ReplicaStats& s) {
  if (!s.connected.load(std::memory_order_relaxed)) {
    return fmt::format("replica: not connected to PostgreSQL (last current {:.1f} s ago)",
                       lagSeconds(s));
  }
  if (!s.current.load(std::memory_order_relaxed)) return "replica: catching up with PostgreSQL";
  return "";
}

}  // namespace tokend::replica
