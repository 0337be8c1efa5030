// The write-back to PostgreSQL: one conditional UPDATE ... FROM unnest(...) per batch of tokens.
#include "replica/writeback.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "replica/pg.h"

namespace tokend::replica {

namespace {

constexpr const char* kStatement = "tokend_writeback";

// SPEC 3's rules (verifier's usageUpdate), applied by PostgreSQL to its own row, so that the
// statement is right whatever the replica's copy said: last_used when the use is more than an
// hour after it; the sliding refresh when the replica found it due and, on PostgreSQL's row,
// the kind is a session's, the expiry is at most lifetime - 1h after the use, the token was not
// expired at the use, is not expired now (PostgreSQL's clock: `expires_at = now()` is a
// revocation), was not lowered since the use was verified (below `seen`), and its user is
// active (dormant counts) and not deleted. A row that no condition selects is not written at
// all; a deleted row matches nothing.
//
// Locks first, and never a wait: the tokens' rows (`l`, FOR NO KEY UPDATE SKIP LOCKED), then
// their users' rows (`a`, FOR SHARE SKIP LOCKED). Waiting would be wrong twice over:
//  - A statement waiting for one row's lock (a long transaction) holds the locks of the rows it
//    already updated, so a revocation of those would wait for it (seen in a test: a 4 s
//    transaction held a revocation up).
//  - After such a wait PostgreSQL re-checks the updated row's new version, but a subquery
//    inside that re-check reads the statement's old snapshot: a user suspended meanwhile
//    still read as active, and the token slid (seen by hand).
// A row lock in a CTE returns the row's latest committed version, re-checked (READ COMMITTED),
// and nothing can change it until this statement commits: the conditions below read what is
// true at the commit. A skipped token row is answered 'locked' (the daemon keeps its use for the
// next round); a skipped user row only means no slide this time (the daemon drops the slid
// cache entry, and the next use slides). The conditions on the token read `k`, the row
// updated, which is the locked version.
constexpr const char* kUpdateSql = R"sql(
WITH v AS (
  SELECT i.id, to_timestamp(i.at) AS at, to_timestamp(i.seen) AS seen, i.refresh
  FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bool[]) AS i(id, at, seen, refresh)),
l AS (
  SELECT k.id, k.user_id FROM api_keys k WHERE k.id = ANY ($1::text[])
  ORDER BY k.id FOR NO KEY UPDATE SKIP LOCKED),
a AS (
  SELECT u.id FROM users u WHERE u.id IN (SELECT l.user_id FROM l) AND NOT u.deleted
    AND u.status::text IN ('active', 'dormant')
  FOR SHARE SKIP LOCKED),
w AS (
  UPDATE api_keys k SET
    last_used = CASE WHEN k.last_used < v.at - interval '1 hour' THEN v.at ELSE k.last_used END,
    expires_at = CASE WHEN %SLIDE% THEN v.at + k.lifetime_seconds * interval '1 second'
                      ELSE k.expires_at END
  FROM v JOIN l ON l.id = v.id
  WHERE k.id = v.id AND (k.last_used < v.at - interval '1 hour' OR %SLIDE%)
  RETURNING k.id, k.expires_at = v.at + k.lifetime_seconds * interval '1 second' AS slid)
SELECT w.id, CASE WHEN w.slid THEN 'slid' ELSE 'written' END FROM w
UNION ALL
SELECT v.id, 'locked' FROM v
WHERE NOT EXISTS (SELECT 1 FROM l WHERE l.id = v.id)
  AND EXISTS (SELECT 1 FROM api_keys k WHERE k.id = v.id)
)sql";

constexpr const char* kSlide = R"sql((v.refresh
      AND k.login_type::text IN ('password', 'github', 'oidc')
      AND k.expires_at <= v.at + (k.lifetime_seconds - 3600) * interval '1 second'
      AND k.expires_at >= v.at AND k.expires_at > clock_timestamp() AND k.expires_at >= v.seen
      AND EXISTS (SELECT 1 FROM a WHERE a.id = k.user_id)))sql";

std::string updateSql() {
  std::string sql = kUpdateSql;
  for (size_t p; (p = sql.find("%SLIDE%")) != std::string::npos;) sql.replace(p, 7, kSlide);
  return sql;
}

int64_t steadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

PgWriteback::PgWriteback(WritebackOptions options)
    : options_(std::move(options)), conn_(std::make_unique<PgConn>()) {}

PgWriteback::~PgWriteback() = default;

Result<void> PgWriteback::connect() {
  auto c = PgConn::connect(options_.conninfo);
  if (!c) return c.error();
  (void)c->exec("SET application_name = 'tokend writeback'", options_.timeoutMs);
  static const std::string sql = updateSql();
  if (auto p = c->prepare(kStatement, sql, options_.timeoutMs); !p) return p.error();
  *conn_ = std::move(*c);
  if (everConnected_) stats_.reconnects.fetch_add(1, std::memory_order_relaxed);
  everConnected_ = true;
  stats_.connected.store(true, std::memory_order_relaxed);
  return {};
}

Result<size_t> PgWriteback::writeChunk(std::span<TokenUse* const> chunk) {
  std::string ids = "{", ats = "{", seens = "{", refreshes = "{";
  for (size_t i = 0; i < chunk.size(); ++i) {
    const TokenUse& u = *chunk[i];
    const char* sep = i == 0 ? "" : ",";
    // Ids are [0-9A-Za-z] (the daemon queues only uses of tokens it holds): no quoting.
    ids += sep;
    ids.append(u.id.data(), u.id.size());
    ats += fmt::format("{}{}", sep, u.at);
    seens += fmt::format("{}{}", sep, u.seenExpiresAt);
    refreshes += sep;
    refreshes += u.refresh ? 't' : 'f';
  }
  ids += '}', ats += '}', seens += '}', refreshes += '}';
  auto r = conn_->execPrepared(kStatement, {ids, ats, seens, refreshes}, options_.timeoutMs);
  if (!r) return r.error();
  const PGresult* p = r->get();
  size_t rows = 0, locked = 0;
  for (int i = 0; i < PQntuples(p); ++i) {
    const std::string_view id = pgText(p, i, 0), what = pgText(p, i, 1);
    auto it = std::lower_bound(chunk.begin(), chunk.end(), id, [](const TokenUse* u, auto want) {
      return std::string_view(u->id.data(), u->id.size()) < want;
    });
    if (it == chunk.end() || std::string_view((*it)->id.data(), (*it)->id.size()) != id) continue;
    if (what == "locked") {
      (*it)->locked = true;
      ++locked;
      continue;
    }
    ++rows;
    if (what == "slid") (*it)->refreshed = true;
  }
  stats_.statements.fetch_add(1, std::memory_order_relaxed);
  stats_.uses.fetch_add(chunk.size(), std::memory_order_relaxed);
  stats_.rows.fetch_add(rows, std::memory_order_relaxed);
  stats_.locked.fetch_add(locked, std::memory_order_relaxed);
  return rows;
}

Result<size_t> PgWriteback::write(std::span<TokenUse> uses) {
  auto failed = [&](const Error& e) -> Result<size_t> {
    conn_->close();
    stats_.connected.store(false, std::memory_order_relaxed);
    stats_.failures.fetch_add(1, std::memory_order_relaxed);
    backoffMs_ = std::clamp(backoffMs_ * 2, options_.minBackoffMs, options_.maxBackoffMs);
    retryAtMs_ = steadyMs() + backoffMs_;
    return makeError("Failed to update api_keys in PostgreSQL: " + e.message, e.code);
  };
  if (uses.empty()) return size_t{0};
  bool wasOpen = conn_->ok();
  if (!wasOpen) {
    // A PostgreSQL that is down (or black-holed, where a connect waits for connect_timeout)
    // must not hold the write-back thread every round: one try per backoff.
    if (const int64_t wait = retryAtMs_ - steadyMs(); wait > 0) {
      stats_.failures.fetch_add(1, std::memory_order_relaxed);
      return makeError(fmt::format("no connection to PostgreSQL (retrying in {} ms)", wait),
                       -ENOTCONN);
    }
    if (auto c = connect(); !c) return failed(c.error());
  }
  // Sorted by id: the answer's ids are found by binary search. (The locks are taken in id
  // order too, and never waited for: no deadlock with another replica's write-back.)
  std::vector<TokenUse*> sorted;
  sorted.reserve(uses.size());
  for (TokenUse& u : uses) {
    u.refreshed = false;
    u.locked = false;
    sorted.push_back(&u);
  }
  std::sort(sorted.begin(), sorted.end(), [](const TokenUse* a, const TokenUse* b) {
    return std::string_view(a->id.data(), a->id.size()) <
           std::string_view(b->id.data(), b->id.size());
  });
  size_t changed = 0;
  for (size_t from = 0; from < sorted.size(); from += options_.maxBatch) {
    const size_t n = std::min(sorted.size() - from, options_.maxBatch);
    auto r = writeChunk(std::span<TokenUse* const>(sorted).subspan(from, n));
    if (!r && wasOpen && !conn_->ok()) {
      // The connection died while idle (a server restart, an idle timeout on the way): the
      // statement is sent again on a new connection, once (harmless if the first one did
      // commit: each of its conditions holds once).
      wasOpen = false;
      if (auto c = connect(); !c) return failed(c.error());
      r = writeChunk(std::span<TokenUse* const>(sorted).subspan(from, n));
    }
    if (!r) return failed(r.error());
    wasOpen = false;
    changed += *r;
  }
  backoffMs_ = 0;
  return changed;
}

std::string renderWritebackMetrics(const WritebackStats& s) {
  std::string o;
  auto one = [&](const char* name, const char* type, const char* help, auto value) {
    o += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
  };
  one("tokend_replica_writeback_connected", "gauge",
      "1 while the write-back's own connection to PostgreSQL is open.",
      s.connected.load(std::memory_order_relaxed) ? 1 : 0);
  one("tokend_replica_writeback_statements_total", "counter",
      "Write-back UPDATE statements committed in PostgreSQL (one per batch of tokens).",
      s.statements.load(std::memory_order_relaxed));
  one("tokend_replica_writeback_uses_total", "counter",
      "Token uses sent to PostgreSQL (one per token per round).",
      s.uses.load(std::memory_order_relaxed));
  one("tokend_replica_writeback_rows_total", "counter",
      "api_keys rows the write-back changed (last_used, the sliding refresh).",
      s.rows.load(std::memory_order_relaxed));
  one("tokend_replica_writeback_locked_total", "counter",
      "Token uses not written because another transaction held the row's lock (kept for the "
      "next round).",
      s.locked.load(std::memory_order_relaxed));
  one("tokend_replica_writeback_failures_total", "counter",
      "Write-back rounds that failed (their uses are kept for the next round).",
      s.failures.load(std::memory_order_relaxed));
  one("tokend_replica_writeback_reconnects_total", "counter",
      "Write-back connections to PostgreSQL made again.",
      s.reconnects.load(std::memory_order_relaxed));
  return o;
}

}  // namespace tokend::replica
