// The replica: snapshot load, the snapshot-diff poll, apply, reconnect.
#include "replica/replica.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <random>

#include "base/clock.h"
#include "base/log.h"
#include "base/uuid.h"
#include "replica/pg.h"
#include "replica/rows.h"
#include "replica/schema.h"

namespace tokend::replica {

using namespace tokend::verifier;

namespace {

constexpr const char* kMetaSnapshot = "ext.pg.snapshot";
// When the stored watermark was current (microseconds, wall clock): a replica started while
// PostgreSQL is down knows how old its copy is (--max-staleness, lag).
constexpr const char* kMetaCurrentAt = "ext.pg.current_at";
constexpr std::string_view kMetaEpoch = verifier::kReplicaEpochMeta;
constexpr size_t kMaxLogged = 100000;
constexpr int kFetchRows = 10000;
constexpr const char* kPollStatement = "tokend_poll";
// A poll with no change moves the watermark in memory only; it is stored with the next change,
// or after this long (a restart then re-reads at most this much of the change log, harmlessly:
// applying is idempotent). Writing it every poll cost an fsync and woke the daemon's changelog
// watcher 50 times a second per replica.
constexpr int64_t kIdleWatermarkStoreUs = 10'000'000;
// A poll (query plus apply) slower than this is counted and its parts logged.
constexpr int64_t kSlowPollUs = 50'000;
// Rows compared per reconciliation step (one transaction between two polls).
constexpr int kReconcilePage = 5000;
// Repairs logged one by one per pass; the rest are counted.
constexpr uint64_t kMaxRepairsLogged = 20;

uint64_t keyHash(char kind, std::string_view key) {
  return std::hash<std::string_view>{}(key)*31 + static_cast<uint64_t>(kind);
}

// The columns read, as text: 7 for users, 12 for api_keys (see PgUserRow, PgTokenRow).
constexpr const char* kUserCols =
    "u.id::text, u.username, array_to_json(u.rbac_roles::text[])::text, u.status::text, "
    "u.deleted::text, tokend.us(u.created_at)::text, tokend.us(u.updated_at)::text";
constexpr const char* kTokenCols =
    "k.id, encode(k.hashed_secret, 'hex'), k.user_id::text, k.login_type::text, k.token_name, "
    "array_to_json(k.scopes::text[])::text, array_to_json(k.allow_list::text[])::text, "
    "tokend.us(k.created_at)::text, tokend.us(k.expires_at)::text, k.lifetime_seconds::text, "
    "tokend.us(k.last_used)::text, tokend.us(k.updated_at)::text";

// One statement, so one snapshot (READ COMMITTED: the statement's): the new watermark
// (pg_current_snapshot() is that very snapshot) and the current rows of every key that a
// transaction committed after the previous watermark $1 touched: visible now, not visible in $1.
// Plus every token of a changed user, so that a user coming back (undeleted, a refused row
// fixed) brings their tokens with them. Columns: kind, key, present, then 12 data columns.
std::string pollSql() {
  const std::string n5 = "NULL, NULL, NULL, NULL, NULL";
  return std::string(R"sql(
WITH c AS MATERIALIZED (
  SELECT DISTINCT tbl, key FROM tokend.changelog
  WHERE xid >= pg_snapshot_xmin($1::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot))
SELECT 's'::text, pg_current_snapshot()::text, 'true'::text, v.epoch::text, v.pruned_below::text,
       v.version::text, )sql") +
         n5 + ", NULL, NULL, NULL, NULL FROM tokend.schema_version v" +
         "\nUNION ALL SELECT 'u', c.key, (u.id IS NOT NULL)::text, " + kUserCols + ", " + n5 +
         " FROM c LEFT JOIN users u ON u.id = CASE WHEN c.tbl = 'u' THEN c.key::uuid END"
         " WHERE c.tbl = 'u'" +
         "\nUNION ALL SELECT 'k', c.key, (k.id IS NOT NULL)::text, " + kTokenCols +
         " FROM c LEFT JOIN api_keys k ON k.id = c.key WHERE c.tbl = 'k'" +
         "\nUNION ALL SELECT 'k', k.id, 'true', " + kTokenCols +
         " FROM c JOIN api_keys k ON k.user_id = CASE WHEN c.tbl = 'u' THEN c.key::uuid END"
         " WHERE c.tbl = 'u'" +
         "\nUNION ALL SELECT '*', c.key, 'false', " + n5 + ", " + n5 +
         ", NULL, NULL FROM c WHERE c.tbl = '*'";
}

int64_t num(const PGresult* r, int row, int col) {
  return std::strtoll(PQgetvalue(r, row, col), nullptr, 10);
}

PgUserRow userRow(const PGresult* r, int row, int c) {
  PgUserRow u;
  u.id = pgText(r, row, c);
  u.username = pgText(r, row, c + 1);
  u.rolesJson = pgText(r, row, c + 2);
  u.status = pgText(r, row, c + 3);
  u.deleted = pgText(r, row, c + 4) == "true";
  u.createdUs = num(r, row, c + 5);
  u.updatedUs = num(r, row, c + 6);
  return u;
}

PgTokenRow tokenRow(const PGresult* r, int row, int c) {
  PgTokenRow t;
  t.id = pgText(r, row, c);
  t.hashHex = pgText(r, row, c + 1);
  t.userId = pgText(r, row, c + 2);
  t.loginType = pgText(r, row, c + 3);
  t.name = pgText(r, row, c + 4);
  t.scopesJson = pgText(r, row, c + 5);
  t.allowJson = pgText(r, row, c + 6);
  t.createdUs = num(r, row, c + 7);
  t.expiresUs = num(r, row, c + 8);
  t.lifetimeSeconds = num(r, row, c + 9);
  t.lastUsedUs = num(r, row, c + 10);
  t.updatedUs = num(r, row, c + 11);
  return t;
}

// The xmin of a pg_snapshot's text form "xmin:xmax:xip,...".
uint64_t snapshotXmin(const std::string& snap) {
  return std::strtoull(snap.c_str(), nullptr, 10);
}

int64_t nowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// One poll's answer, keyed so that a key named twice (a token changed and its user too) is
// applied once. nullopt: the row is gone.
struct PollRows {
  std::string snapshot, epoch;
  uint64_t prunedBelow = 0;
  bool reload = false;  // a TRUNCATE: only a full load can say what is left
  std::map<std::string, std::optional<PgUserRow>> users;
  std::map<std::string, std::optional<PgTokenRow>> tokens;
};

Replica::Replica(KeyDb& db, ReplicaOptions options)
    : db_(db), options_(std::move(options)), conn_(std::make_unique<PgConn>()) {}

Replica::~Replica() {
  stop();
}

Result<bool> Replica::loaded() {
  auto reader = db_.reader();
  if (!reader) return reader.error();
  if (auto b = (*reader)->begin(); !b) return b.error();
  auto snap = (*reader)->extMeta(kMetaSnapshot);
  if (!snap) return snap.error();
  if (*snap) {
    snapshot_ = **snap;
    storedSnapshot_ = snapshot_;
    auto at = (*reader)->extMeta(kMetaCurrentAt);
    if (!at) return at.error();
    if (*at) stats_.currentAtUs.store(std::strtoll(std::string(**at).c_str(), nullptr, 10));
    auto epoch = (*reader)->extMeta(kMetaEpoch);
    if (!epoch) return epoch.error();
    epoch_ = epoch->value_or("");
    return true;
  }
  auto users = (*reader)->users();
  if (!users) return users.error();
  auto epoch = (*reader)->extMeta(kMetaEpoch);
  if (!epoch) return epoch.error();
  // An epoch without a watermark is a load cut short: load again. Users without either are a
  // standalone database, which a replica must not overwrite.
  if (!users->empty() && !*epoch) {
    return makeError(
        "the data dir holds a standalone key database (users that did not come from "
        "PostgreSQL): give --postgres a fresh --data-dir",
        -EEXIST);
  }
  return false;
}

void Replica::refuse(const std::string& what, const std::string& key, const std::string& why) {
  stats_.rowsRefused.fetch_add(1, std::memory_order_relaxed);
  if (logged_.size() < kMaxLogged && logged_.insert(what + key + why).second) {
    log::warn("PostgreSQL {} {} grants nothing here: {}", what, key, why);
  }
}

Result<void> Replica::connect() {
  auto c = PgConn::connect(options_.conninfo);
  if (!c) return c.error();
  if (auto s = checkSchema(*c); !s) return s.error();
  *conn_ = std::move(*c);
  (void)conn_->exec("SET application_name = 'tokend replica'");
  // Planned once per connection: a poll is then one round trip of about 30 us of server CPU.
  static const std::string sql = pollSql();
  if (auto p = conn_->prepare(kPollStatement, sql, options_.queryTimeoutMs); !p) return p.error();
  return {};
}

Result<void> Replica::load() {
  if (!conn_->ok()) {
    if (auto c = connect(); !c) return c;
  } else {
    (void)conn_->exec("ROLLBACK");  // a load cut short left its transaction open
  }
  return fullLoad();
}

Result<void> Replica::fullLoad() {
  const auto started = std::chrono::steady_clock::now();
  PgConn& c = *conn_;
  // One REPEATABLE READ transaction: every row read and the snapshot stored are one state.
  auto begin = c.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", options_.queryTimeoutMs);
  if (!begin) return begin.error();
  auto head = c.exec("SELECT pg_current_snapshot()::text, epoch::text FROM tokend.schema_version",
                     options_.queryTimeoutMs);
  if (!head) return head.error();
  const std::string snapshot(pgText(head->get(), 0, 0)), epoch(pgText(head->get(), 0, 1));

  bool fresh = true;
  {
    auto reader = db_.reader();
    if (!reader) return reader.error();
    if (auto b = (*reader)->begin(); !b) return b.error();
    auto users = (*reader)->users();
    if (!users) return users.error();
    fresh = users->empty();
  }
  // The old watermark goes first: a load cut short must start again, not resume from it.
  if (auto r = db_.update([&](Writer& w) -> Result<void> {
        if (auto p = w.putExtMeta(kMetaSnapshot, std::nullopt); !p) return p;
        return w.putExtMeta(kMetaEpoch, epoch);
      });
      !r)
    return r.error();

  std::unordered_set<std::string> seenUsers, seenTokens;
  size_t users = 0, tokens = 0;
  // Users, streamed through a cursor, each batch one LMDB transaction.
  if (auto r = c.exec(std::string("DECLARE tokend_u NO SCROLL CURSOR FOR SELECT ") + kUserCols +
                          " FROM users u ORDER BY u.id",
                      options_.queryTimeoutMs);
      !r)
    return r.error();
  for (;;) {
    auto batch =
        c.exec("FETCH " + std::to_string(kFetchRows) + " FROM tokend_u", options_.queryTimeoutMs);
    if (!batch) return batch.error();
    const PGresult* p = batch->get();
    const int n = PQntuples(p);
    if (n == 0) break;
    std::vector<std::pair<std::string, std::string>> refused;
    auto r = db_.update([&](Writer& w) -> Result<void> {
      refused.clear();
      for (int i = 0; i < n; ++i) {
        PgUserRow row = userRow(p, i, 0);
        auto m = mapUser(row);
        if (!m.record) {
          if (!m.refused.empty()) refused.emplace_back(row.id, m.refused);
          continue;
        }
        if (!m.dropped.empty()) refused.emplace_back(row.id, "unknown roles " + m.dropped);
        auto put = w.putUser(*m.record);
        if (!put && put.error().code == -EEXIST && !fresh) {
          // The name's local holder has another name (or is gone) in this snapshot, and comes
          // later in id order: drop it now, it is written again when its row comes.
          auto holder = w.userByName(m.record->username);
          if (!holder) return holder.error();
          if (*holder) {
            if (auto d = w.deleteUser((*holder)->id); !d) return d;
          }
          put = w.putUser(*m.record);
        }
        if (!put) return put;
        seenUsers.insert(row.id);
      }
      return {};
    });
    if (!r) return r.error();
    for (auto& [key, why] : refused) refuse("user", key, why);
    users += static_cast<size_t>(n);
  }
  (void)c.exec("CLOSE tokend_u");

  // Tokens in byte order of their ids (COLLATE "C": LMDB's order), so that a fresh load appends.
  if (auto r = c.exec(std::string("DECLARE tokend_k NO SCROLL CURSOR FOR SELECT ") + kTokenCols +
                          " FROM api_keys k ORDER BY k.id COLLATE \"C\"",
                      options_.queryTimeoutMs);
      !r)
    return r.error();
  for (;;) {
    auto batch =
        c.exec("FETCH " + std::to_string(kFetchRows) + " FROM tokend_k", options_.queryTimeoutMs);
    if (!batch) return batch.error();
    const PGresult* p = batch->get();
    const int n = PQntuples(p);
    if (n == 0) break;
    std::vector<std::pair<std::string, std::string>> refused;
    std::vector<TokenRecord> records;
    std::vector<std::string> encoded;
    auto r = db_.update([&](Writer& w) -> Result<void> {
      refused.clear();
      records.clear();
      for (int i = 0; i < n; ++i) {
        PgTokenRow row = tokenRow(p, i, 0);
        auto m = mapToken(row);
        if (!m.record) {
          refused.emplace_back(row.id, m.refused);
          continue;
        }
        auto user = w.user(m.record->userId);
        if (!user) return user.error();
        if (!*user) {
          refused.emplace_back(row.id, "its user " + row.userId + " is deleted or not replicated");
          continue;
        }
        records.push_back(std::move(*m.record));
      }
      if (fresh) {
        encoded.clear();
        std::vector<NewTokenRef> refs;
        for (const TokenRecord& t : records) encoded.push_back(encodeToken(t));
        for (size_t i = 0; i < records.size(); ++i) {
          const TokenRecord& t = records[i];
          refs.push_back(NewTokenRef{
              t.id, encoded[i], &t.userId,
              t.loginType == LoginType::Token ? std::string_view(t.name) : std::string_view()});
        }
        size_t failedAt = 0;
        return w.insertNewTokens(refs, failedAt);
      }
      for (const TokenRecord& t : records) {
        auto put = w.putToken(t);
        if (!put && put.error().code == -EEXIST) {
          // A later token holds the name locally; it is written again when its row comes.
          auto holder = w.tokenByName(t.userId, t.name);
          if (!holder) return holder.error();
          if (*holder) {
            if (auto d = w.deleteToken((*holder)->id); !d) return d;
          }
          put = w.putToken(t);
        }
        if (!put) return put;
      }
      return {};
    });
    if (!r) return r.error();
    for (const TokenRecord& t : records) seenTokens.insert(t.id);
    for (auto& [key, why] : refused) refuse("token", key, why);
    tokens += static_cast<size_t>(n);
  }
  (void)c.exec("CLOSE tokend_k");
  if (auto r = c.exec("COMMIT", options_.queryTimeoutMs); !r) return r.error();

  // What the snapshot does not hold goes; then the watermark, in the same transaction.
  auto r = db_.update([&](Writer& w) -> Result<void> {
    if (!fresh) {
      auto all = w.users();
      if (!all) return all.error();
      for (const UserRecord& u : *all) {
        if (seenUsers.count(u.id.toString())) continue;
        if (auto d = w.deleteUser(u.id); !d) return d;
      }
      auto toks = w.tokens(std::nullopt);
      if (!toks) return toks.error();
      for (const TokenRecord& t : *toks) {
        if (seenTokens.count(t.id)) continue;
        if (auto d = w.deleteToken(t.id); !d) return d;
      }
    }
    if (auto p = w.putExtMeta(kMetaEpoch, epoch); !p) return p;
    if (auto p = w.putExtMeta(kMetaCurrentAt, std::to_string(nowUs())); !p) return p;
    return w.putExtMeta(kMetaSnapshot, snapshot);
  });
  if (!r) return r.error();
  snapshot_ = snapshot;
  storedSnapshot_ = snapshot;
  watermarkStoredAtUs_ = nowUs();
  stats_.currentAtUs.store(watermarkStoredAtUs_, std::memory_order_relaxed);
  epoch_ = epoch;
  stats_.fullLoads.fetch_add(1, std::memory_order_relaxed);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  log::info("Loaded PostgreSQL's snapshot {}: {} users, {} tokens in {:.2f} s", snapshot, users,
            tokens, secs);
  return {};
}

Result<void> Replica::poll() {
  const auto started = std::chrono::steady_clock::now();
  auto res = conn_->execPrepared(kPollStatement, {snapshot_}, options_.queryTimeoutMs);
  if (!res) return res.error();
  const auto answered = std::chrono::steady_clock::now();
  stats_.polls.fetch_add(1, std::memory_order_relaxed);
  const PGresult* p = res->get();
  PollRows rows;
  for (int i = 0; i < PQntuples(p); ++i) {
    const std::string_view kind = pgText(p, i, 0);
    std::string key(pgText(p, i, 1));
    const bool present = pgText(p, i, 2) == "true";
    if (kind == "s") {
      rows.snapshot = key;
      rows.epoch = pgText(p, i, 3);
      rows.prunedBelow = std::strtoull(PQgetvalue(p, i, 4), nullptr, 10);
    } else if (kind == "u") {
      rows.users[key] = present ? std::optional(userRow(p, i, 3)) : std::nullopt;
    } else if (kind == "k") {
      rows.tokens[key] = present ? std::optional(tokenRow(p, i, 3)) : std::nullopt;
    } else if (kind == "*") {
      rows.reload = true;
    }
  }
  if (rows.snapshot.empty()) return makeError("tokend.schema_version has no row: run db init");
  // Another database, a restored one, or a change log pruned past what this copy needs: the
  // diff cannot say what changed, only a full load can.
  if (rows.epoch != epoch_ || rows.prunedBelow > snapshotXmin(snapshot_) || rows.reload) {
    log::warn(
        "PostgreSQL's change log cannot bring this copy up to date ({}): loading a full "
        "snapshot",
        rows.reload            ? "a table was truncated"
        : rows.epoch != epoch_ ? "another database or a restored one"
                               : "pruned past this copy's watermark");
    return fullLoad();
  }
  auto applied = apply(rows);
  const auto done = std::chrono::steady_clock::now();
  const auto us = [](auto d) {
    return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  };
  if (us(done - started) > kSlowPollUs) {
    stats_.slowPolls.fetch_add(1, std::memory_order_relaxed);
    const int64_t now = nowUs();
    if (now - slowLoggedAtUs_ >= 10'000'000) {
      slowLoggedAtUs_ = now;
      log::warn("Slow poll of PostgreSQL's change log: query {:.1f} ms, apply {:.1f} ms, {} keys",
                us(answered - started) / 1e3, us(done - answered) / 1e3,
                rows.users.size() + rows.tokens.size());
    }
  }
  return applied;
}

Result<void> Replica::apply(const PollRows& rows) {
  const int64_t now = nowUs();
  if (rows.users.empty() && rows.tokens.empty() &&
      now - watermarkStoredAtUs_ < kIdleWatermarkStoreUs) {
    snapshot_ = rows.snapshot;
    return {};
  }
  std::vector<std::pair<std::string, std::string>> refusedUsers, refusedTokens;
  size_t changed = 0;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    refusedUsers.clear();
    refusedTokens.clear();
    changed = 0;
    // Users first: a token needs its user.
    std::map<std::string, UserRecord> puts;
    for (const auto& [key, row] : rows.users) {
      Mapped<UserRecord> m;
      if (row) m = mapUser(*row);
      if (m.record) {
        if (!m.dropped.empty()) refusedUsers.emplace_back(key, "unknown roles " + m.dropped);
        puts.emplace(key, std::move(*m.record));
        continue;
      }
      if (!m.refused.empty()) refusedUsers.emplace_back(key, m.refused);
      auto id = Uuid::parse(key);
      if (!id) continue;
      auto old = w.user(*id);
      if (!old) return old.error();
      if (*old) {
        if (auto d = w.deleteUser(*id); !d) return d;
        ++changed;
      }
    }
    // A username moves between users in one transaction (a rename, a swap): the name's holder is
    // itself in this batch (names are unique in PostgreSQL), so it is dropped and written again;
    // its tokens are in this batch too (every token of a changed user is).
    std::vector<std::string> order;
    for (const auto& [key, u] : puts) order.push_back(key);
    for (size_t i = 0, rounds = 0; i < order.size() && rounds < 4 * puts.size() + 4;
         ++i, ++rounds) {
      const UserRecord& u = puts.at(order[i]);
      auto put = w.putUser(u);
      if (!put && put.error().code == -EEXIST) {
        auto holder = w.userByName(u.username);
        if (!holder) return holder.error();
        if (*holder) {
          if (auto d = w.deleteUser((*holder)->id); !d) return d;
          if (puts.count((*holder)->id.toString())) order.push_back((*holder)->id.toString());
        }
        put = w.putUser(u);
      }
      if (!put) return put;
      ++changed;
    }
    std::map<std::string, TokenRecord> tokenPuts;
    for (const auto& [key, row] : rows.tokens) {
      Mapped<TokenRecord> m;
      if (row) m = mapToken(*row);
      if (m.record) {
        auto user = w.user(m.record->userId);
        if (!user) return user.error();
        if (*user) {
          tokenPuts.emplace(key, std::move(*m.record));
          continue;
        }
        m.refused = "its user " + row->userId + " is deleted or not replicated";
      }
      if (!m.refused.empty()) refusedTokens.emplace_back(key, m.refused);
      auto old = w.token(key);
      if (!old) return old.error();
      if (*old) {
        if (auto d = w.deleteToken(key); !d) return d;
        ++changed;
      }
    }
    std::vector<std::string> order2;
    for (const auto& [key, t] : tokenPuts) order2.push_back(key);
    for (size_t i = 0, rounds = 0; i < order2.size() && rounds < 4 * tokenPuts.size() + 4;
         ++i, ++rounds) {
      const TokenRecord& t = tokenPuts.at(order2[i]);
      auto put = w.putToken(t);
      if (!put && put.error().code == -EEXIST) {
        auto holder = w.tokenByName(t.userId, t.name);
        if (!holder) return holder.error();
        if (*holder) {
          if (auto d = w.deleteToken((*holder)->id); !d) return d;
          if (tokenPuts.count((*holder)->id)) order2.push_back((*holder)->id);
        }
        put = w.putToken(t);
      }
      if (!put) return put;
      ++changed;
    }
    if (auto p = w.putExtMeta(kMetaCurrentAt, std::to_string(now)); !p) return p;
    return w.putExtMeta(kMetaSnapshot, rows.snapshot);
  });
  if (!r) return r.error();
  snapshot_ = rows.snapshot;
  storedSnapshot_ = rows.snapshot;
  watermarkStoredAtUs_ = now;
  for (auto& [key, why] : refusedUsers) refuse("user", key, why);
  for (auto& [key, why] : refusedTokens) refuse("token", key, why);
  stats_.changesApplied.fetch_add(changed, std::memory_order_relaxed);
  return {};
}

// Reconciliation: a pass compares every row of PostgreSQL with the copy, one page per step
// between polls. Each step is one REPEATABLE READ transaction that first polls (so the copy is
// brought to exactly the transaction's snapshot S, the new watermark) and then reads one page at
// S: every difference left is a divergence (a change the change log did not carry: triggers
// disabled, a restored table, a bug), and the page's PostgreSQL rows are applied over it as a
// poll's would be. Keys the copy holds that no page named are looked up at the end the same way.
Result<void> Replica::reconcileStep() {
  const int64_t now = nowUs();
  if (pass_.stage == Pass::Stage::Idle) {
    if (now < passDueUs_) return {};
    pass_ = Pass{};
    pass_.stage = Pass::Stage::Users;
    pass_.startedUs = now;
  }
  const uint64_t loads = stats_.fullLoads.load(std::memory_order_relaxed);
  PgConn& c = *conn_;
  if (auto b = c.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", options_.queryTimeoutMs);
      !b)
    return b.error();
  if (auto p = poll(); !p) return p;
  if (stats_.fullLoads.load(std::memory_order_relaxed) != loads) {
    // The poll loaded a full snapshot (which committed the transaction): that was a whole pass.
    pass_.stage = Pass::Stage::Idle;
    passDueUs_ = now + nextPassInUs();
    return {};
  }
  PollRows diff;
  diff.snapshot = snapshot_;
  diff.epoch = epoch_;
  const std::string limit = " LIMIT " + std::to_string(kReconcilePage);
  if (pass_.stage == Pass::Stage::Users || pass_.stage == Pass::Stage::Tokens) {
    const bool tokens = pass_.stage == Pass::Stage::Tokens;
    std::string sql =
        tokens
            ? std::string("SELECT 'k', k.id, 'true', ") + kTokenCols + " FROM api_keys k" +
                  (pass_.after.empty() ? "" : " WHERE k.id > $1") + " ORDER BY k.id" + limit
            : std::string("SELECT 'u', u.id::text, 'true', ") + kUserCols + " FROM users u" +
                  (pass_.after.empty() ? "" : " WHERE u.id > $1::uuid") + " ORDER BY u.id" + limit;
    std::vector<std::optional<std::string>> params;
    if (!pass_.after.empty()) params.push_back(pass_.after);
    auto page = c.execParams(sql, params, options_.queryTimeoutMs);
    if (!page) return page.error();
    const PGresult* p = page->get();
    const int n = PQntuples(p);
    for (int i = 0; i < n; ++i) {
      const std::string_view key = pgText(p, i, 1);
      pass_.seen.push_back(keyHash(tokens ? 'k' : 'u', key));
    }
    if (auto r = compare(p, tokens, diff); !r) return r;
    if (n > 0) pass_.after = pgText(p, n - 1, 1);
    if (n < kReconcilePage) {
      pass_.after.clear();
      pass_.stage = tokens ? Pass::Stage::Rest : Pass::Stage::Tokens;
    }
  } else {
    // What the copy holds and no page named: created after its page was read (then PostgreSQL
    // has it now), or a divergence (PostgreSQL has no such row).
    std::sort(pass_.seen.begin(), pass_.seen.end());
    auto unseen = [&](char kind, const std::string& key) {
      return !std::binary_search(pass_.seen.begin(), pass_.seen.end(), keyHash(kind, key));
    };
    std::vector<std::string> users, tokens;
    {
      auto reader = db_.reader();
      if (!reader) return reader.error();
      if (auto b = (*reader)->begin(); !b) return b.error();
      auto uids = (*reader)->userIdsAfter(std::nullopt, std::nullopt);
      if (!uids) return uids.error();
      for (const Uuid& u : *uids)
        if (std::string k = u.toString(); unseen('u', k)) users.push_back(std::move(k));
      auto tids = (*reader)->tokenIdsAfter("", std::nullopt);
      if (!tids) return tids.error();
      for (std::string& k : *tids)
        if (unseen('k', k)) tokens.push_back(std::move(k));
    }
    for (const bool isToken : {false, true}) {
      const std::vector<std::string>& keys = isToken ? tokens : users;
      if (keys.empty()) continue;
      std::string array = "{";
      for (const std::string& k : keys) array += (array.size() > 1 ? ",\"" : "\"") + k + "\"";
      array += "}";
      auto found =
          c.execParams(isToken ? std::string("SELECT 'k', k.id, 'true', ") + kTokenCols +
                                     " FROM api_keys k WHERE k.id = ANY($1::text[])"
                               : std::string("SELECT 'u', u.id::text, 'true', ") + kUserCols +
                                     " FROM users u WHERE u.id = ANY($1::uuid[])",
                       {array}, options_.queryTimeoutMs);
      if (!found) return found.error();
      std::unordered_set<std::string> present;
      for (int i = 0; i < PQntuples(found->get()); ++i) present.emplace(pgText(found->get(), i, 1));
      if (auto r = compare(found->get(), isToken, diff); !r) return r;
      for (const std::string& k : keys) {
        if (present.count(k)) continue;
        ++pass_.compared;
        if (isToken)
          diff.tokens[k] = std::nullopt;
        else
          diff.users[k] = std::nullopt;
      }
    }
    pass_.stage = Pass::Stage::Idle;
  }
  (void)c.exec("COMMIT", options_.queryTimeoutMs);

  const size_t differing = diff.users.size() + diff.tokens.size();
  if (differing > 0) {
    for (const auto& [key, row] : diff.users) {
      if (pass_.repaired++ < kMaxRepairsLogged)
        log::warn("Reconciliation: user {} differed from PostgreSQL{}; repaired", key,
                  row ? "" : " (which has no such user)");
    }
    for (const auto& [key, row] : diff.tokens) {
      if (pass_.repaired++ < kMaxRepairsLogged)
        log::warn("Reconciliation: token {} differed from PostgreSQL{}; repaired", key,
                  row ? "" : " (which has no such token)");
    }
    if (auto a = apply(diff); !a) return a;
    stats_.reconcileRepaired.fetch_add(differing, std::memory_order_relaxed);
  }
  if (pass_.stage == Pass::Stage::Idle) {
    stats_.reconcilePasses.fetch_add(1, std::memory_order_relaxed);
    const double secs = static_cast<double>(nowUs() - pass_.startedUs) / 1e6;
    if (pass_.repaired > 0) {
      log::warn(
          "Reconciled with PostgreSQL: {} of {} rows differed and were repaired ({:.2f} s); a "
          "change reached PostgreSQL without tokend's change log (triggers disabled?)",
          pass_.repaired, pass_.compared, secs);
    } else {
      log::debug("Reconciled with PostgreSQL: {} rows, none differed ({:.2f} s)", pass_.compared,
                 secs);
    }
    pass_.seen = {};
    passDueUs_ = nowUs() + nextPassInUs();
    if (auto p = prune(); !p) {
      (void)c.exec("ROLLBACK");
      log::warn("Failed to prune PostgreSQL's change log: {}", p.error().message);
    }
  }
  return {};
}

// Adds to `diff` every row of `rows` (kind, key, present, then the table's columns) that the
// copy does not hold as a poll would have written it. last_used and updated_at are not compared:
// PostgreSQL's change log does not carry a last_used change, and nothing verifies by either.
Result<void> Replica::compare(const PGresult* rows, bool tokens, PollRows& diff) {
  auto reader = db_.reader();
  if (!reader) return reader.error();
  if (auto b = (*reader)->begin(); !b) return b.error();
  Txn& t = **reader;
  for (int i = 0; i < PQntuples(rows); ++i) {
    const std::string key(pgText(rows, i, 1));
    ++pass_.compared;
    stats_.reconcileCompared.fetch_add(1, std::memory_order_relaxed);
    if (tokens) {
      PgTokenRow row = tokenRow(rows, i, 3);
      auto m = mapToken(row);
      if (m.record) {
        auto user = t.user(m.record->userId);
        if (!user) return user.error();
        if (!*user) m.record.reset();
      }
      auto local = t.token(key);
      if (!local) return local.error();
      bool same = m.record.has_value() == local->has_value();
      if (same && m.record) {
        TokenRecord a = *m.record, b = **local;
        a.lastUsed = b.lastUsed = 0;
        a.updatedAt = b.updatedAt = 0;
        same = encodeToken(a) == encodeToken(b);
      }
      if (!same) diff.tokens[key] = std::move(row);
    } else {
      PgUserRow row = userRow(rows, i, 3);
      auto m = mapUser(row);
      auto id = Uuid::parse(key);
      if (!id) continue;
      auto local = t.user(*id);
      if (!local) return local.error();
      bool same = m.record.has_value() == local->has_value();
      if (same && m.record) same = encodeUser(*m.record) == encodeUser(**local);
      if (!same) diff.users[key] = std::move(row);
    }
  }
  return {};
}

// Deletes the change-log rows that no replica needs any more: those of transactions older than
// the oldest watermark's xmin that a replica recorded in tokend.replicas lately (one away longer
// loads a full snapshot when it returns, as pruned_below tells it), and raises pruned_below in
// the same transaction. One replica at a time (an advisory lock); a role that may not delete
// is told once.
Result<void> Replica::prune() {
  PgConn& c = *conn_;
  if (auto b = c.exec("BEGIN", options_.queryTimeoutMs); !b) return b.error();
  auto lock = c.exec("SELECT pg_try_advisory_xact_lock(7366290003)", options_.queryTimeoutMs);
  if (!lock) return lock.error();
  if (pgText(lock->get(), 0, 0) != "t") {
    (void)c.exec("ROLLBACK");
    return {};
  }
  auto r =
      c.execParams(R"sql(
WITH h AS (
  SELECT least(pg_snapshot_xmin(pg_current_snapshot()),
               (SELECT pg_snapshot_xmin(snapshot::pg_snapshot) FROM tokend.replicas
                WHERE applied_at > now() - make_interval(secs => $1::double precision)
                ORDER BY 1 LIMIT 1)) AS below),
d AS (DELETE FROM tokend.changelog WHERE xid < (SELECT below FROM h) RETURNING 1)
UPDATE tokend.schema_version SET pruned_below = greatest(pruned_below, (SELECT below FROM h))
RETURNING (SELECT count(*) FROM d)::text)sql",
                   {std::to_string(options_.pruneAbsentAfterSeconds)}, options_.queryTimeoutMs);
  if (!r) {
    if (r.error().message.find("permission denied") != std::string::npos) {
      (void)c.exec("ROLLBACK");
      if (!pruneRefusedLogged_) {
        pruneRefusedLogged_ = true;
        log::warn(
            "Not pruning PostgreSQL's change log: this role may not ({}); grant it DELETE on "
            "tokend.changelog and UPDATE on tokend.schema_version, or prune from another",
            r.error().message);
      }
      return {};
    }
    return r.error();
  }
  const uint64_t n = std::strtoull(PQgetvalue(r->get(), 0, 0), nullptr, 10);
  if (auto cm = c.exec("COMMIT", options_.queryTimeoutMs); !cm) return cm.error();
  stats_.changelogPruned.fetch_add(n, std::memory_order_relaxed);
  if (n > 0) log::debug("Pruned {} rows of PostgreSQL's change log", n);
  return {};
}

int64_t Replica::nextPassInUs() {
  const int64_t whole = options_.reconcileIntervalMs * 1000;
  return std::uniform_int_distribution<int64_t>(whole - whole / 4, whole)(rng_);
}

void Replica::report() {
  const int64_t now = nowUs();
  const uint64_t changes = stats_.changesApplied.load(std::memory_order_relaxed);
  // Cheap: a write only when something was applied since the last one (at most once per
  // interval), else once a minute to say the replica is alive. The position written is the one
  // stored in LMDB, where a restart resumes, so that pruning below it (prune) never forces a
  // reload on this replica.
  if (changes == reportedChanges_ && now - reportedAtUs_ < 60'000'000) return;
  if (now - reportedAtUs_ < int64_t{options_.reportIntervalMs} * 1000) return;
  auto r = conn_->execParams(
      "INSERT INTO tokend.replicas (name, snapshot, applied_at, changes_applied, rows_refused) "
      "VALUES ($1, $2, now(), $3, $4) ON CONFLICT (name) DO UPDATE SET snapshot = "
      "EXCLUDED.snapshot, applied_at = EXCLUDED.applied_at, changes_applied = "
      "EXCLUDED.changes_applied, rows_refused = EXCLUDED.rows_refused",
      {options_.name, storedSnapshot_, std::to_string(changes),
       std::to_string(stats_.rowsRefused.load(std::memory_order_relaxed))},
      options_.queryTimeoutMs);
  if (!r) {
    log::warn("Failed to record this replica's position in tokend.replicas: {}", r.error().message);
  }
  reportedAtUs_ = now;
  reportedChanges_ = changes;
}

bool Replica::sleepFor(int ms) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stopping_.load(); });
  return !stopping_;
}

void Replica::run() {
  pthread_setname_np(pthread_self(), "tokend-replica");
  if (options_.reconcileIntervalMs > 0) passDueUs_ = nowUs() + nextPassInUs();
  int backoffMs = 0;
  bool everConnected = conn_->ok();
  bool failing = false;
  while (!stopping_) {
    if (!conn_->ok()) {
      stats_.connected.store(false, std::memory_order_relaxed);
      stats_.current.store(false, std::memory_order_relaxed);
      if (auto c = connect(); !c) {
        // Backoff with jitter: 100 ms doubling to 5 s, each wait drawn from [half, whole], so a
        // fleet that lost PostgreSQL together does not come back in step.
        backoffMs = std::min(5000, std::max(100, backoffMs * 2));
        if (!failing) {
          log::warn("Failed to reach PostgreSQL (verifying from the local copy; retrying): {}",
                    c.error().message);
          failing = true;
        }
        sleepFor(std::uniform_int_distribution<int>(backoffMs / 2, backoffMs)(rng_));
        continue;
      }
      if (everConnected) stats_.reconnects.fetch_add(1, std::memory_order_relaxed);
      everConnected = true;
      failing = false;
      backoffMs = 0;
      stats_.connected.store(true, std::memory_order_relaxed);
      log::info("Connected to PostgreSQL (backend pid {}); catching up from snapshot {}",
                conn_->backendPid(), snapshot_);
    }
    stats_.connected.store(true, std::memory_order_relaxed);
    if (auto p = poll(); !p) {
      const bool lost = !conn_->ok();
      const bool wasCurrent = stats_.current.exchange(false, std::memory_order_relaxed);
      if (wasCurrent || lost || !failing) {
        failing = true;
        log::warn("Failed to follow PostgreSQL (verifying from the local copy): {}",
                  p.error().message);
      }
      if (!lost) {
        // The connection is fine but the poll or its apply failed (a full disk): the watermark
        // did not move, so the next poll brings the same changes again.
        (void)conn_->exec("ROLLBACK");
        sleepFor(200);
      }
      continue;
    }
    failing = false;
    stats_.currentAtUs.store(nowUs(), std::memory_order_relaxed);
    if (!stats_.current.exchange(true, std::memory_order_relaxed)) {
      log::info("Replica is current with PostgreSQL (snapshot {})", snapshot_);
    }
    report();
    if (options_.reconcileIntervalMs > 0) {
      if (auto r = reconcileStep(); !r) {
        // The pass goes on from the same page at the next step.
        if (conn_->ok()) (void)conn_->exec("ROLLBACK");
        if (!reconcileFailing_) {
          log::warn("Failed to reconcile with PostgreSQL (retrying): {}", r.error().message);
        }
        reconcileFailing_ = true;
      } else {
        reconcileFailing_ = false;
      }
    }
    sleepFor(options_.pollIntervalMs);
  }
  conn_->close();
  stats_.connected.store(false, std::memory_order_relaxed);
  stats_.current.store(false, std::memory_order_relaxed);
}

void Replica::start() {
  thread_ = std::thread([this] { run(); });
}

void Replica::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_.store(true);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace tokend::replica
