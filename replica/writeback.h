// Write-back to PostgreSQL (SPEC 11): last_used and the sliding refresh of many tokens in one
// conditional UPDATE, so that a change committed meanwhile (a revocation, a delete, a suspended
// user) is never undone, from whichever replica saw the uses.
//
// Threads: write() from one thread at a time (the daemon's write-back thread); stats() from any.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "base/result.h"
#include "verifier/records.h"

namespace tokend::replica {

class PgConn;

// One token's use as the daemon's write-back decided it from the local copy (verifier's
// usageUpdate): PostgreSQL applies the same rules again to its own row, so that a replica whose
// copy is a moment old (or whose last_used is: last_used-only updates are not followed) writes
// nothing another replica wrote within the hour, and nothing that was revoked meanwhile.
struct TokenUse {
  std::array<char, verifier::kTokenIdLength> id{};
  int64_t at = 0;        // Unix seconds of the (latest) use
  bool refresh = false;  // the sliding refresh is due by the local copy (and enabled)
  // The expiry (Unix seconds) the use was verified against: a PostgreSQL expiry lower than this
  // was lowered after the use (a revocation to a time still ahead, say) and is never raised.
  int64_t seenExpiresAt = 0;
  bool refreshed = false;  // set by write(): PostgreSQL's expiry slid to at + lifetime
  bool locked = false;     // set by write(): another transaction held the row, nothing written
};

struct WritebackOptions {
  std::string conninfo;
  int timeoutMs = 10000;     // per statement; past it the connection is dropped
  size_t maxBatch = 10000;   // tokens per statement
  int minBackoffMs = 500;    // after a failure, no connect before this (doubling) ...
  int maxBackoffMs = 10000;  // ... up to this
};

struct WritebackStats {
  std::atomic<bool> connected{false};
  std::atomic<uint64_t> statements{0};  // UPDATE statements committed
  std::atomic<uint64_t> uses{0};        // token uses sent in them
  std::atomic<uint64_t> rows{0};        // api_keys rows they changed
  std::atomic<uint64_t> locked{0};      // uses skipped: the row was locked by another transaction
  std::atomic<uint64_t> failures{0};    // rounds that failed (the daemon keeps their uses)
  std::atomic<uint64_t> reconnects{0};  // connections made after the first
};

class PgWriteback {
 public:
  explicit PgWriteback(WritebackOptions options);
  ~PgWriteback();
  PgWriteback(const PgWriteback&) = delete;
  PgWriteback& operator=(const PgWriteback&) = delete;

  // Writes `uses` (one per token) in as few statements as maxBatch allows, each one UPDATE ...
  // FROM unnest(...) in its own transaction, and marks each use whose refresh was written, and
  // each whose row another transaction held locked (never waited for: nothing written);
  // connects first when there is no connection (its own, not the follower's; a connection found
  // lost at the first statement, idle for long, is made again once at once). Returns how many
  // rows PostgreSQL changed. Errors: "Failed to
  // connect to PostgreSQL: ..." (a connect is tried at most once per backoff; before that, at
  // once: "no connection to PostgreSQL (retrying in N ms)"), or the statement's failure (the
  // connection is then dropped). Statements before a failed one are committed; writing them
  // again is harmless: each condition holds once (a written last_used is no longer an hour old,
  // a slid expiry is no longer due).
  Result<size_t> write(std::span<TokenUse> uses);

  const WritebackStats& stats() const { return stats_; }

 private:
  Result<void> connect();
  Result<size_t> writeChunk(std::span<TokenUse* const> chunk);

  WritebackOptions options_;
  std::unique_ptr<PgConn> conn_;
  WritebackStats stats_;
  bool everConnected_ = false;
  int backoffMs_ = 0;
  int64_t retryAtMs_ = 0;  // steady clock: no connect before this
};

// Prometheus text: tokend_replica_writeback_connected, _statements_total, _uses_total,
// _rows_total, _locked_total, _failures_total, _reconnects_total.
std::string renderWritebackMetrics(const WritebackStats& stats);

}  // namespace tokend::replica
