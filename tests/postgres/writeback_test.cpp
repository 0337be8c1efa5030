// tokend --postgres writes last_used and the sliding refresh back to PostgreSQL (SPEC 11): a use
// on a replica (socket or libtokend's fast path) reaches api_keys within a few write-back
// intervals, many tokens in one statement, at most once an hour per token across replicas, never
// undoing a revocation committed meanwhile, and after PostgreSQL comes back.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <tokend/client.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <thread>

#include "tests/postgres/pg_helpers.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kEpoch = "1970-01-01 00:00:00+00";

struct Fleet {
  PgCluster pg;
  std::vector<std::unique_ptr<Daemon>> replicas;

  Fleet(int n, int writebackMs) {
    RunResult init = run({programPath("TOKENCTL"), "--postgres", pg.conninfo(), "db", "init"});
    if (init.status != 0) throw std::runtime_error("db init failed: " + init.err);
    // Every UPDATE of api_keys, with the application that made it and the rows it changed: the
    // write-back's connection names itself 'tokend writeback'.
    pg.psqlOk(R"sql(
CREATE TABLE test_updates (app text, rows bigint);
CREATE FUNCTION test_note_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
  INSERT INTO test_updates SELECT current_setting('application_name'), count(*) FROM n;
  RETURN NULL; END $$;
CREATE TRIGGER test_note_update AFTER UPDATE ON api_keys REFERENCING NEW TABLE AS n
  FOR EACH STATEMENT EXECUTE FUNCTION test_note_update();
)sql");
    for (int i = 0; i < n; ++i) {
      replicas.push_back(std::make_unique<Daemon>(
          std::vector<std::string>{"--postgres", pg.conninfo(), "--threads", "1",
                                   "--writeback-interval-ms", std::to_string(writebackMs)}));
    }
  }
};

// A session (login type password, lifetime 24 h) with 2 h left: a use now is due the slide. One
// INSERT, so that a replica sees it in its final state at once.
PgToken pgSession(const PgCluster& pg, const std::string& user,
                  const std::string& scopes = "{coder:all}") {
  PgToken t{randomAlnum(10), randomAlnum(22), user};
  pg.psqlOk(
      "INSERT INTO api_keys (id, hashed_secret, user_id, expires_at, login_type, scopes, "
      "allow_list, lifetime_seconds) VALUES ('" +
      t.id + "', sha256('" + t.secret + "'::bytea), '" + user +
      "', now() + interval '2 hours', 'password', '" + scopes + "', '{*:*}', 86400)");
  return t;
}

std::string col(const PgCluster& pg, const PgToken& t, const std::string& expr) {
  return pg.psqlOk("SELECT " + expr + " FROM api_keys WHERE id = '" + t.id + "'");
}
std::string lastUsed(const PgCluster& pg, const PgToken& t) {
  return col(pg, t, "last_used");
}
// Seconds from now to the token's expiry in PostgreSQL.
double expiresIn(const PgCluster& pg, const PgToken& t) {
  return std::stod(col(pg, t, "extract(epoch FROM expires_at - now())"));
}

// Waits until the replica holds `t` without verifying it (a wrong secret is no use).
void awaitLoaded(Daemon& d, const PgToken& t) {
  REQUIRE(waitFor(
      [&] {
        return d.text("VERIFY " + t.id + "-" + std::string(22, 'x')) == "DENY bad_secret 401";
      },
      std::chrono::seconds(10)));
}

bool ok(Daemon& d, const PgToken& t) {
  return d.text("VERIFY " + t.token()).rfind("OK ", 0) == 0;
}

// The value of a metric line "name value" in /metrics, or -1.
double metric(Daemon& d, const std::string& name) {
  const std::string body = httpRequest(d.socket(), "GET", "/metrics").body;
  const size_t at = body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(body.substr(at + name.size() + 2));
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = 0; (p = hay.find(needle, p)) != std::string::npos; ++p) ++n;
  return n;
}

}  // namespace

TEST_SUITE("PostgresWriteback") {
  TEST_CASE(
      "a use on a replica reaches PostgreSQL's last_used within a few intervals, a session "
      "slides, an API token does not, and the other replica follows the slide") {
    PgCluster::skipUnlessAvailable();
    Fleet f(2, 50);
    Daemon &r0 = *f.replicas[0], &r1 = *f.replicas[1];
    const std::string user = pgUser(f.pg, "alice");
    PgToken api = pgToken(f.pg, user), session = pgSession(f.pg, user);
    const std::string apiExpiry = col(f.pg, api, "expires_at");
    for (Daemon* d : {&r0, &r1}) {
      awaitLoaded(*d, api);
      awaitLoaded(*d, session);
    }
    CHECK(lastUsed(f.pg, api) == kEpoch);
    CHECK(expiresIn(f.pg, session) < 2 * 3600 + 5);

    const auto used = Clock::now();
    REQUIRE(ok(r0, api));
    REQUIRE(ok(r0, session));
    REQUIRE(
        waitFor([&] { return lastUsed(f.pg, api) != kEpoch && lastUsed(f.pg, session) != kEpoch; },
                std::chrono::seconds(5)));
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - used).count();
    fmt::print("use on a replica to last_used in PostgreSQL: {:.0f} ms (write-back every 50 ms)\n",
               ms);
    CHECK(ms < 2000);
    // last_used is the use's second; the session now ends 24 h after it, the API token as before.
    CHECK(std::stod(col(f.pg, api, "extract(epoch FROM now() - last_used)")) < 5);
    CHECK(expiresIn(f.pg, session) > 24 * 3600 - 10);
    CHECK(col(f.pg, api, "expires_at") == apiExpiry);
    CHECK(metric(r0, "tokend_replica_writeback_rows_total") == 2);
    CHECK(metric(r0, "tokend_replica_writeback_statements_total") >= 1);

    // The slide is a change like any other: the other replica answers with the new expiry, and
    // its own copy (last_used came with the row) has nothing due, so it writes nothing.
    const std::string expiry = col(f.pg, session, "floor(extract(epoch FROM expires_at))::int8");
    CHECK(waitFor([&] {
      const std::string a = r1.text("VERIFY " + session.token());
      return a.rfind("OK ", 0) == 0 && a.substr(a.rfind(' ') + 1) == expiry;
    }));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(metric(r1, "tokend_replica_writeback_rows_total") == 0);
    // Used again within the hour, on either replica: nothing more is written.
    const std::string writes =
        "SELECT count(*) FROM test_updates WHERE app = 'tokend writeback' AND rows > 0";
    const std::string writesBefore = f.pg.psqlOk(writes);
    CHECK((writesBefore == "1" || writesBefore == "2"));
    const std::string before = lastUsed(f.pg, api);
    REQUIRE(ok(r1, api));
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    REQUIRE(ok(r1, api));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(lastUsed(f.pg, api) == before);
    CHECK(metric(r1, "tokend_replica_writeback_rows_total") == 0);
    REQUIRE(ok(r0, api));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(lastUsed(f.pg, api) == before);
    CHECK(f.pg.psqlOk(writes) == writesBefore);

    // An hour and two minutes later (the test clock), a use is due again: last_used moves on,
    // and the session slides once more.
    const double slidTo = std::stod(col(f.pg, session, "extract(epoch FROM expires_at)"));
    r1.setEnv("TOKEND_CLOCK_OFFSET", "3720");
    r1.restart();
    REQUIRE(waitFor([&] { return ok(r1, api); }));
    REQUIRE(ok(r1, session));
    CHECK(waitFor(
        [&] { return std::stod(col(f.pg, api, "extract(epoch FROM last_used - now())")) > 3600; },
        std::chrono::seconds(5)));
    CHECK(waitFor([&] {
      return std::stod(col(f.pg, session, "extract(epoch FROM expires_at)")) >= slidTo + 3720;
    }));
    CHECK(metric(r1, "tokend_replica_writeback_rows_total") == 2);
  }

  TEST_CASE("a use seen only in libtokend's shared memory reaches PostgreSQL and slides") {
    PgCluster::skipUnlessAvailable();
    Fleet f(1, 50);
    Daemon& d = *f.replicas[0];
    const std::string user = pgUser(f.pg, "bob");  // no role: may not delete templates
    tokend_client* c = nullptr;
    REQUIRE(tokend_open(d.socket().c_str(), &c) == 0);
    bool viaShmOnly = false;
    // The daemon may drop a cache entry at any time (then the socket answers and counts the use
    // itself): try fresh sessions until one was allowed through memory only.
    for (int attempt = 0; attempt < 5 && !viaShmOnly; ++attempt) {
      PgToken s = pgSession(f.pg, user, "{workspace:read}");
      // Loaded, and verified by the daemon with its secret (a denial is no use, and a wrong
      // secret would leave the entry unfit for a report: see Service::reportUses).
      REQUIRE(waitFor(
          [&] { return d.text("VERIFY " + s.token() + " template:delete") == "DENY scope 403"; }));
      auto verify = [&](const char* perm) {
        tokend_result r{};
        REQUIRE(tokend_verify(c, s.token().c_str(), perm, nullptr, nullptr, &r) == 0);
        return r;
      };
      // A denial fills the cache from a verification that presented the secret, and is no use.
      tokend_result r = verify("template:delete");
      for (int i = 0; i < 200 && !r.via_shm; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        r = verify("template:delete");
      }
      REQUIRE(r.via_shm == 1);
      CHECK(std::string(r.reason) == "scope");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      REQUIRE(lastUsed(f.pg, s) == kEpoch);
      // An earlier attempt's use (answered by the socket) was written by now.
      const double rowsBefore = metric(d, "tokend_replica_writeback_rows_total");
      r = verify(nullptr);
      CHECK(r.allowed == 1);
      if (!r.via_shm) continue;
      viaShmOnly = true;
      CHECK(tokend_flush(c, 3000) == 0);
      CHECK(waitFor([&] { return lastUsed(f.pg, s) != kEpoch; }, std::chrono::seconds(5)));
      CHECK(expiresIn(f.pg, s) > 24 * 3600 - 10);
      CHECK(metric(d, "tokend_replica_writeback_rows_total") == rowsBefore + 1);
    }
    CHECK(viaShmOnly);
    tokend_close(c);
  }

  TEST_CASE("the uses of many tokens are written in one statement, and only once an hour") {
    PgCluster::skipUnlessAvailable();
    // A long interval, so that every use below falls into one round (or two, at its edge).
    Fleet f(2, 1000);
    Daemon &r0 = *f.replicas[0], &r1 = *f.replicas[1];
    const std::string user = pgUser(f.pg, "carol");
    constexpr int kTokens = 300;
    std::vector<PgToken> toks;
    std::string values;
    for (int i = 0; i < kTokens; ++i) {
      PgToken t{randomAlnum(10), randomAlnum(22), user};
      values += fmt::format(
          "{}('{}', sha256('{}'::bytea), '{}', now() + interval '1 day', "
          "'token', '{}', '{{coder:all}}', '{{*:*}}', 86400)",
          i ? "," : "", t.id, t.secret, user, t.id);
      toks.push_back(t);
    }
    f.pg.psqlOk(
        "INSERT INTO api_keys (id, hashed_secret, user_id, expires_at, login_type, token_name, "
        "scopes, allow_list, lifetime_seconds) VALUES " +
        values);
    auto useAll = [&](Daemon& d) {
      // Pipelined on one connection: the 300 uses take milliseconds.
      tokend::UniqueFd fd = connectUnix(d.socket());
      REQUIRE(fd);
      std::string lines;
      for (const PgToken& t : toks) lines += "VERIFY " + t.token() + "\n";
      REQUIRE(sendAll(fd.get(), lines));
      const std::string answers = readLines(fd.get(), kTokens);
      CHECK(count(answers, "OK ") == kTokens);
    };
    for (Daemon* d : {&r0, &r1}) awaitLoaded(*d, toks.back());
    useAll(r0);
    const std::string written =
        "SELECT count(*) FROM api_keys WHERE last_used > 'epoch' AND user_id = '" + user + "'";
    REQUIRE(waitFor([&] { return f.pg.psqlOk(written) == std::to_string(kTokens); },
                    std::chrono::seconds(10)));
    const std::string stmts = f.pg.psqlOk(
        "SELECT count(*) || ' ' || sum(rows) FROM test_updates WHERE app = 'tokend writeback'");
    fmt::print("{} tokens used on a replica: (statements, rows) = ({})\n", kTokens, stmts);
    CHECK((stmts == "1 300" || stmts == "2 300"));
    CHECK(metric(r0, "tokend_replica_writeback_rows_total") == kTokens);
    CHECK(metric(r0, "tokend_replica_writeback_statements_total") <= 2);

    // The other replica's copy has last_used as it was loaded (last_used alone is not followed),
    // so it finds the same uses due and sends them: PostgreSQL's own last_used, within the
    // hour, makes the statement change nothing.
    const std::string snapshot = f.pg.psqlOk(
        "SELECT string_agg(id || last_used::text, ',' ORDER BY id) FROM api_keys WHERE user_id = "
        "'" +
        user + "'");
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // a later second
    useAll(r1);
    REQUIRE(waitFor([&] { return metric(r1, "tokend_replica_writeback_uses_total") == kTokens; },
                    std::chrono::seconds(10)));
    CHECK(metric(r1, "tokend_replica_writeback_rows_total") == 0);
    CHECK(f.pg.psqlOk("SELECT string_agg(id || last_used::text, ',' ORDER BY id) FROM api_keys "
                      "WHERE user_id = '" +
                      user + "'") == snapshot);
    CHECK(f.pg.psqlOk("SELECT coalesce(sum(rows), 0) FROM test_updates WHERE app = 'tokend "
                      "writeback'") == std::to_string(kTokens));
  }

  TEST_CASE(
      "a revocation, a lowered expiry, a suspension or a delete committed between a use and its "
      "write-back is never undone") {
    PgCluster::skipUnlessAvailable();
    Fleet f(1, 1000);
    Daemon& d = *f.replicas[0];
    bool ordered = false;
    for (int attempt = 0; attempt < 3 && !ordered; ++attempt) {
      CAPTURE(attempt);
      const std::string user = pgUser(f.pg, fmt::format("dave{}", attempt));
      const std::string other = pgUser(f.pg, fmt::format("erin{}", attempt));
      PgToken revoked = pgSession(f.pg, user), lowered = pgSession(f.pg, user),
              deleted = pgSession(f.pg, user), suspended = pgSession(f.pg, other),
              control = pgSession(f.pg, user);
      const std::vector<const PgToken*> all{&revoked, &lowered, &deleted, &suspended, &control};
      for (const PgToken* t : all) awaitLoaded(d, *t);
      for (const PgToken* t : all) REQUIRE(ok(d, *t));
      // Committed before the write-back round (checked below: nothing was written yet).
      f.pg.psqlOk("UPDATE api_keys SET expires_at = now() WHERE id = '" + revoked.id +
                  "'; UPDATE api_keys SET expires_at = now() + interval '10 minutes' WHERE id = '" +
                  lowered.id + "'; DELETE FROM api_keys WHERE id = '" + deleted.id +
                  "'; UPDATE users SET status = 'suspended' WHERE id = '" + other + "'");
      const std::string early = f.pg.psqlOk(
          "SELECT count(*) FROM api_keys WHERE last_used > 'epoch' AND id IN ('" + revoked.id +
          "', '" + lowered.id + "', '" + suspended.id + "', '" + control.id + "')");
      if (early != "0") continue;  // the round came first: try again
      ordered = true;
      const std::string revokedAt = col(f.pg, revoked, "expires_at");
      const std::string loweredTo = col(f.pg, lowered, "expires_at");
      const std::string suspendedUntil = col(f.pg, suspended, "expires_at");
      // The round runs (the control slides) ...
      REQUIRE(waitFor([&] { return lastUsed(f.pg, control) != kEpoch; }, std::chrono::seconds(5)));
      CHECK(expiresIn(f.pg, control) > 24 * 3600 - 10);
      // ... records the uses (they did happen) and extends none of the others.
      for (const PgToken* t : {&revoked, &lowered, &suspended}) CHECK(lastUsed(f.pg, *t) != kEpoch);
      CHECK(col(f.pg, revoked, "expires_at") == revokedAt);
      CHECK(col(f.pg, lowered, "expires_at") == loweredTo);
      CHECK(col(f.pg, suspended, "expires_at") == suspendedUntil);
      CHECK(f.pg.psqlOk("SELECT count(*) FROM api_keys WHERE id = '" + deleted.id + "'") == "0");
      // And the replica agrees: the revoked one is refused, the lowered one ends in 10 minutes.
      CHECK(waitFor([&] { return d.text("VERIFY " + revoked.token()) == "DENY expired 401"; }));
      CHECK(d.text("VERIFY " + deleted.token()) == "DENY unknown 401");
      CHECK(d.text("VERIFY " + suspended.token()) == "DENY user_inactive 401");
      const std::string a = d.text("VERIFY " + lowered.token());
      REQUIRE(a.rfind("OK ", 0) == 0);
      CHECK(std::stoll(a.substr(a.rfind(' ') + 1)) - std::time(nullptr) < 11 * 60);
    }
    CHECK(ordered);
  }

  TEST_CASE(
      "a row locked by a long transaction holds up neither the other tokens' write-back nor "
      "anyone waiting for them, and its own use is written once the lock is gone") {
    PgCluster::skipUnlessAvailable();
    Fleet f(1, 50);
    Daemon& d = *f.replicas[0];
    const std::string user = pgUser(f.pg, "gina");
    PgToken held = pgToken(f.pg, user), free = pgToken(f.pg, user);
    awaitLoaded(d, held);
    awaitLoaded(d, free);
    // Holds held's row for 3 s (a change tokend does not follow, like Coder's ip_address).
    Child txn =
        spawn({std::string(PgCluster::kBin) + "/psql", "-X", "-q", "-d", f.pg.conninfo(), "-c",
               "BEGIN; UPDATE api_keys SET ip_address = '10.0.0.1' WHERE id = '" + held.id +
                   "'; SELECT pg_sleep(3); COMMIT;"},
              {}, "/tmp");
    REQUIRE(waitFor([&] {
      return f.pg.psqlOk(
                 "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'BEGIN;%' AND "
                 "backend_xid IS NOT NULL") == "1";
    }));
    const auto locked = Clock::now();
    REQUIRE(ok(d, held));
    REQUIRE(ok(d, free));
    CHECK(waitFor([&] { return lastUsed(f.pg, free) != kEpoch; }, std::chrono::seconds(2)));
    CHECK(Clock::now() - locked < std::chrono::milliseconds(2500));
    CHECK(lastUsed(f.pg, held) == kEpoch);
    CHECK(metric(d, "tokend_replica_writeback_locked_total") >= 1);
    // The write-back holds no lock while it waits: a write to free's row goes through at once.
    const auto t0 = Clock::now();
    f.pg.psqlOk("UPDATE api_keys SET expires_at = now() WHERE id = '" + free.id + "'");
    CHECK(Clock::now() - t0 < std::chrono::milliseconds(1000));
    CHECK(txn.stop(0) == 0);  // waits for psql (signal 0 only checks)
    CHECK(waitFor([&] { return lastUsed(f.pg, held) != kEpoch; }, std::chrono::seconds(3)));
    CHECK(count(d.log(), "Failed to write back token uses") == 0);
  }

  TEST_CASE("PostgreSQL down: uses are kept, the failure is logged once, and written on return") {
    PgCluster::skipUnlessAvailable();
    Fleet f(1, 50);
    Daemon& d = *f.replicas[0];
    const std::string user = pgUser(f.pg, "frank");
    PgToken before = pgToken(f.pg, user), api = pgToken(f.pg, user),
            session = pgSession(f.pg, user);
    for (const PgToken* t : {&before, &api, &session}) awaitLoaded(d, *t);
    // A first use, so that the write-back's connection is open when PostgreSQL goes.
    REQUIRE(ok(d, before));
    REQUIRE(waitFor([&] { return lastUsed(f.pg, before) != kEpoch; }, std::chrono::seconds(5)));
    CHECK(metric(d, "tokend_replica_writeback_connected") == 1);

    f.pg.stop("fast");
    REQUIRE(ok(d, api));  // verification goes on from the copy
    REQUIRE(ok(d, session));
    // Rounds fail for a while: logged once, counted each time.
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    CHECK(count(d.log(), "Failed to write back token uses") == 1);
    CHECK(metric(d, "tokend_replica_writeback_failures_total") >= 2);
    CHECK(metric(d, "tokend_replica_writeback_connected") == 0);

    f.pg.start();
    const auto back = Clock::now();
    CHECK(waitFor([&] { return lastUsed(f.pg, api) != kEpoch; }, std::chrono::seconds(20)));
    fmt::print("uses kept while PostgreSQL was down written {:.1f} s after it came back\n",
               std::chrono::duration<double>(Clock::now() - back).count());
    CHECK(lastUsed(f.pg, session) != kEpoch);
    CHECK(expiresIn(f.pg, session) > 24 * 3600 - 60);
    CHECK(waitFor(
        [&] { return d.log().find("Write-back of token uses works again") != std::string::npos; }));
    CHECK(metric(d, "tokend_replica_writeback_reconnects_total") >= 1);
    CHECK(metric(d, "tokend_replica_writeback_rows_total") == 3);
  }
}
