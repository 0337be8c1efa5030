// Replica: keeps the local key database (LMDB) a copy of PostgreSQL's users and api_keys (SPEC
// 11). A new replica loads one consistent snapshot; then a thread polls tokend's change log with
// the previous poll's pg_snapshot as its watermark and applies every changed row to LMDB in one
// write transaction together with the new watermark. The daemon's changelog watcher sees those
// LMDB writes like any other and takes exactly the touched entries out of the cache, so the
// replica needs no hook into the daemon. docs/replication.md has the design and its proof.
//
// Threads: load() on the caller's thread before start(); then one thread of its own (start()
// to stop()). stats() may be read from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "base/result.h"
#include "verifier/keydb.h"

struct pg_result;  // libpq's PGresult, which this header does not include

namespace tokend::replica {

class PgConn;
struct PollRows;

struct ReplicaOptions {
  std::string conninfo;  // libpq conninfo or URI
  std::string name;      // this replica's row in tokend.replicas
  int pollIntervalMs = 20;
  int queryTimeoutMs = 10000;
  int reportIntervalMs = 1000;  // tokend.replicas is written at most this often
  // How often a pass compares the whole copy with PostgreSQL and repairs what differs, and the
  // change log is pruned (0: never). Each pass starts at a random point of the last quarter of
  // the interval, so that a fleet started together does not reconcile in step.
  int64_t reconcileIntervalMs = 600'000;
  // A replica that has not recorded its position in tokend.replicas for this long no longer
  // holds the pruning back (when it comes back it loads a full snapshot).
  int64_t pruneAbsentAfterSeconds = 86'400;
};

// What the replica has done; all counters since start.
struct ReplicaStats {
  std::atomic<bool> connected{false};
  std::atomic<bool> current{false};         // connected, and the last poll applied
  std::atomic<int64_t> currentAtUs{0};      // wall clock of the last poll that applied
  std::atomic<uint64_t> changesApplied{0};  // rows written or removed
  std::atomic<uint64_t> reconnects{0};
  std::atomic<uint64_t> rowsRefused{0};  // rows that grant nothing (fail closed)
  std::atomic<uint64_t> polls{0};
  std::atomic<uint64_t> fullLoads{0};
  std::atomic<uint64_t> slowPolls{0};          // query plus apply took over 50 ms
  std::atomic<uint64_t> reconcilePasses{0};    // whole passes completed
  std::atomic<uint64_t> reconcileCompared{0};  // rows compared with PostgreSQL
  std::atomic<uint64_t> reconcileRepaired{0};  // rows that differed, and were repaired
  std::atomic<uint64_t> changelogPruned{0};    // change-log rows this replica deleted
};

class Replica {
 public:
  Replica(verifier::KeyDb& db, ReplicaOptions options);
  ~Replica();
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;

  // Whether the local copy was loaded from PostgreSQL before (it holds a watermark): then it may
  // serve at once and catch up in the background. Errors: the database could not be read, or it
  // holds users that did not come from PostgreSQL (a standalone data dir).
  Result<bool> loaded();
  // Connects, checks the schema and loads one consistent snapshot (blocking). The caller retries.
  Result<void> load();
  // Follows PostgreSQL on a thread of its own until stop().
  void start();
  void stop();

  const ReplicaStats& stats() const { return stats_; }

 private:
  void run();
  Result<void> connect();
  Result<void> fullLoad();
  Result<void> poll();
  Result<void> apply(const PollRows& rows);
  void report();
  // One page of the reconciliation pass when one is due; see "Reconciliation" in
  // docs/replication.md.
  Result<void> reconcileStep();
  Result<void> compare(const pg_result* rows, bool tokens, PollRows& diff);
  Result<void> prune();
  int64_t nextPassInUs();  // a random point of the last quarter of the interval
  void refuse(const std::string& what, const std::string& key, const std::string& why);
  bool sleepFor(int ms);  // false when stopping

  verifier::KeyDb& db_;
  ReplicaOptions options_;
  std::unique_ptr<PgConn> conn_;
  std::string snapshot_;        // the watermark: the pg_snapshot the local copy reflects
  std::string storedSnapshot_;  // the watermark as last stored in LMDB (a restart resumes there)
  std::string epoch_;           // tokend.schema_version.epoch it came from
  ReplicaStats stats_;
  std::unordered_set<std::string> logged_;  // keys whose refusal was logged (once each)
  int64_t reportedAtUs_ = 0;
  int64_t watermarkStoredAtUs_ = 0;  // when the watermark was last written to LMDB
  int64_t slowLoggedAtUs_ = 0;
  uint64_t reportedChanges_ = UINT64_MAX;

  // The reconciliation pass in progress: users, then tokens, each in pages in PostgreSQL's
  // index order; then the keys the copy holds that no page named.
  struct Pass {
    enum class Stage { Idle, Users, Tokens, Rest } stage = Stage::Idle;
    std::string after;           // the last key of the previous page
    std::vector<uint64_t> seen;  // hashes of the keys the pages named ('u' or 'k' prefixed)
    uint64_t compared = 0, repaired = 0;
    int64_t startedUs = 0;
  } pass_;
  int64_t passDueUs_ = 0;
  bool reconcileFailing_ = false;
  bool pruneRefusedLogged_ = false;
  std::mt19937_64 rng_{std::random_device{}()};

  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace tokend::replica
