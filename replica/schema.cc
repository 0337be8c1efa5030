// db init, the schema check and db status.
#include "replica/schema.h"

#include <fmt/format.h>

#include <cstdlib>

namespace tokend::replica {

namespace {

// Coder's two tables with Coder's names and types for every column tokend uses (SPEC 11), for a
// database that has none: `status` and `login_type` use Coder's enum types (created when
// missing); `scopes` is text[] here (Coder's api_key_scope enum lists Coder's release, tokend's
// catalog may differ), which tokend reads as text either way.
constexpr const char* kCoderTables = R"sql(
DO $$ BEGIN
  IF to_regtype('user_status') IS NULL THEN
    CREATE TYPE user_status AS ENUM ('active', 'suspended', 'dormant');
  END IF;
  IF to_regtype('login_type') IS NULL THEN
    CREATE TYPE login_type AS ENUM ('password', 'github', 'oidc', 'token', 'none',
                                    'oauth2_provider_app');
  END IF;
END $$;
CREATE TABLE IF NOT EXISTS users (
  id uuid PRIMARY KEY,
  email text NOT NULL DEFAULT '',
  username text NOT NULL DEFAULT '' CHECK (length(username) >= 1),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  status user_status NOT NULL DEFAULT 'active',
  rbac_roles text[] NOT NULL DEFAULT '{}',
  login_type login_type NOT NULL DEFAULT 'password',
  deleted boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_users_username ON users (username) WHERE NOT deleted;
CREATE TABLE IF NOT EXISTS api_keys (
  id text PRIMARY KEY,
  hashed_secret bytea NOT NULL,
  user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  last_used timestamptz NOT NULL DEFAULT 'epoch',
  expires_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  login_type login_type NOT NULL,
  lifetime_seconds bigint NOT NULL DEFAULT 86400,
  ip_address inet NOT NULL DEFAULT '0.0.0.0',
  token_name text NOT NULL DEFAULT '',
  scopes text[] NOT NULL DEFAULT '{coder:all}',
  allow_list text[] NOT NULL DEFAULT '{*:*}'
    CONSTRAINT api_keys_allow_list_not_empty CHECK (array_length(allow_list, 1) > 0)
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_api_key_name ON api_keys (user_id, token_name)
  WHERE login_type = 'token';
CREATE INDEX IF NOT EXISTS idx_api_keys_user ON api_keys (user_id);
)sql";

// tokend's own objects. The change log holds one row per (transaction, touched key), written by
// row triggers in the writing transaction itself, so a change and its log entry commit together
// or not at all; `xid` is the top-level transaction id (pg_current_xact_id: savepoints write
// their parent's), which is what pg_snapshot lists. Updates log only when a column tokend
// replicates changes (Coder's hourly last_used / ip_address / last_seen_at writes do not).
constexpr const char* kTokendObjects = R"sql(
CREATE SCHEMA IF NOT EXISTS tokend;
CREATE TABLE IF NOT EXISTS tokend.schema_version (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  version integer NOT NULL,
  epoch uuid NOT NULL DEFAULT gen_random_uuid(),
  pruned_below xid8 NOT NULL DEFAULT '0',
  installed_at timestamptz NOT NULL DEFAULT now()
);
DO $$ BEGIN
  IF (SELECT version FROM tokend.schema_version) > %VERSION% THEN
    RAISE EXCEPTION 'schema tokend is at version %, newer than this tokenctl''s %VERSION%: use a newer tokenctl',
      (SELECT version FROM tokend.schema_version);
  END IF;
END $$;
INSERT INTO tokend.schema_version (version) VALUES (%VERSION%) ON CONFLICT (one) DO NOTHING;
CREATE TABLE IF NOT EXISTS tokend.changelog (
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  tbl "char" NOT NULL,
  key text NOT NULL,
  at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS changelog_xid ON tokend.changelog (xid);
CREATE TABLE IF NOT EXISTS tokend.replicas (
  name text PRIMARY KEY,
  snapshot text NOT NULL,
  applied_at timestamptz NOT NULL,
  changes_applied bigint NOT NULL DEFAULT 0,
  rows_refused bigint NOT NULL DEFAULT 0
);
-- Microseconds since the Unix epoch, exact (extract returns numeric), infinities clamped.
CREATE OR REPLACE FUNCTION tokend.us(t timestamptz) RETURNS bigint
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT CASE WHEN t = 'infinity' THEN 9223372036854775807
              WHEN t = '-infinity' THEN -9223372036854775807
              ELSE (extract(epoch FROM t) * 1000000)::bigint END $$;
CREATE OR REPLACE FUNCTION tokend.log_change() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO tokend.changelog (tbl, key) VALUES ('*', TG_TABLE_NAME);
    RETURN NULL;
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    INSERT INTO tokend.changelog (tbl, key) VALUES (TG_ARGV[0]::"char", OLD.id::text);
  END IF;
  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id) THEN
    INSERT INTO tokend.changelog (tbl, key) VALUES (TG_ARGV[0]::"char", NEW.id::text);
  END IF;
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER tokend_log_insert_delete AFTER INSERT OR DELETE ON api_keys
  FOR EACH ROW EXECUTE FUNCTION tokend.log_change('k');
CREATE OR REPLACE TRIGGER tokend_log_update AFTER UPDATE ON api_keys FOR EACH ROW
  WHEN ((OLD.id, OLD.hashed_secret, OLD.user_id, OLD.expires_at, OLD.login_type::text,
         OLD.lifetime_seconds, OLD.token_name, OLD.scopes::text[], OLD.allow_list::text[])
        IS DISTINCT FROM
        (NEW.id, NEW.hashed_secret, NEW.user_id, NEW.expires_at, NEW.login_type::text,
         NEW.lifetime_seconds, NEW.token_name, NEW.scopes::text[], NEW.allow_list::text[]))
  EXECUTE FUNCTION tokend.log_change('k');
CREATE OR REPLACE TRIGGER tokend_log_truncate AFTER TRUNCATE ON api_keys
  FOR EACH STATEMENT EXECUTE FUNCTION tokend.log_change('k');
CREATE OR REPLACE TRIGGER tokend_log_insert_delete AFTER INSERT OR DELETE ON users
  FOR EACH ROW EXECUTE FUNCTION tokend.log_change('u');
CREATE OR REPLACE TRIGGER tokend_log_update AFTER UPDATE ON users FOR EACH ROW
  WHEN ((OLD.id, OLD.username, OLD.rbac_roles::text[], OLD.status::text, OLD.deleted)
        IS DISTINCT FROM
        (NEW.id, NEW.username, NEW.rbac_roles::text[], NEW.status::text, NEW.deleted))
  EXECUTE FUNCTION tokend.log_change('u');
CREATE OR REPLACE TRIGGER tokend_log_truncate AFTER TRUNCATE ON users
  FOR EACH STATEMENT EXECUTE FUNCTION tokend.log_change('u');
)sql";

// Columns tokend reads, per table.
constexpr const char* kColumnsCheck = R"sql(
SELECT t.tbl || '.' || t.col FROM (VALUES
  ('users', 'id'), ('users', 'username'), ('users', 'rbac_roles'), ('users', 'status'),
  ('users', 'deleted'), ('users', 'created_at'), ('users', 'updated_at'),
  ('api_keys', 'id'), ('api_keys', 'hashed_secret'), ('api_keys', 'user_id'),
  ('api_keys', 'last_used'), ('api_keys', 'expires_at'), ('api_keys', 'created_at'),
  ('api_keys', 'updated_at'), ('api_keys', 'login_type'), ('api_keys', 'lifetime_seconds'),
  ('api_keys', 'token_name'), ('api_keys', 'scopes'), ('api_keys', 'allow_list')) AS t(tbl, col)
WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = to_regclass(t.tbl) AND a.attname = t.col
                    AND a.attnum > 0 AND NOT a.attisdropped)
)sql";

std::string withVersion(std::string sql) {
  const std::string v = std::to_string(kPgSchemaVersion);
  for (size_t p; (p = sql.find("%VERSION%")) != std::string::npos;) sql.replace(p, 9, v);
  return sql;
}

Result<bool> exists(PgConn& conn, const char* regclass) {
  auto r = conn.execParams("SELECT to_regclass($1) IS NOT NULL", {std::string(regclass)});
  if (!r) return r.error();
  return pgText(r->get(), 0, 0) == "t";
}

Result<int> installedVersion(PgConn& conn) {
  auto has = exists(conn, "tokend.schema_version");
  if (!has) return has.error();
  if (!*has) return 0;
  auto r = conn.exec("SELECT version FROM tokend.schema_version");
  if (!r) return r.error();
  if (PQntuples(r->get()) == 0) return 0;
  return std::atoi(std::string(pgText(r->get(), 0, 0)).c_str());
}

}  // namespace

Result<InitReport> initSchema(PgConn& conn) {
  InitReport report;
  auto users = exists(conn, "users");
  if (!users) return users.error();
  auto keys = exists(conn, "api_keys");
  if (!keys) return keys.error();
  auto before = installedVersion(conn);
  if (!before) return before.error();
  report.createdUsers = !*users;
  report.createdApiKeys = !*keys;
  // At this version with every trigger in place: nothing to do, and nothing is done (no DDL,
  // so no lock on Coder's tables).
  if (*users && *keys && *before == kPgSchemaVersion && checkSchema(conn)) return report;
  report.installedTokend = true;
  // One transaction: a failure leaves nothing half-made. The advisory lock keeps two db inits
  // from racing on CREATE ... IF NOT EXISTS (which is not safe against a concurrent creator).
  std::string sql = "BEGIN; SELECT pg_advisory_xact_lock(7366290001);";
  sql += kCoderTables;
  sql += withVersion(kTokendObjects);
  sql += "COMMIT;";
  if (auto r = conn.exec(sql); !r) {
    (void)conn.exec("ROLLBACK");
    return makeError("Failed to install tokend's schema: " + r.error().message, r.error().code);
  }
  if (auto c = checkSchema(conn); !c) return c.error();
  return report;
}

Result<void> checkSchema(PgConn& conn) {
  auto missing = conn.exec(kColumnsCheck);
  if (!missing) return missing.error();
  if (int n = PQntuples(missing->get()); n > 0) {
    std::string cols;
    for (int i = 0; i < n; ++i) cols += (i ? ", " : "") + std::string(pgText(missing->get(), i, 0));
    return makeError("the database lacks the columns tokend reads (" + cols +
                         "): is this Coder's database? tokenctl --postgres ... db init creates "
                         "the tables in an empty one",
                     -ENOENT);
  }
  auto version = installedVersion(conn);
  if (!version) return version.error();
  if (*version == 0) {
    return makeError(
        "schema tokend is not installed: run tokenctl --postgres CONNINFO db init first", -ENOENT);
  }
  if (*version > kPgSchemaVersion) {
    return makeError(fmt::format("schema tokend is at version {}, newer than this build's {}: "
                                 "upgrade tokend",
                                 *version, kPgSchemaVersion),
                     -EPROTO);
  }
  if (*version < kPgSchemaVersion) {
    return makeError(fmt::format("schema tokend is at version {}, older than this build's {}: run "
                                 "tokenctl --postgres CONNINFO db init to upgrade it",
                                 *version, kPgSchemaVersion),
                     -EPROTO);
  }
  // Without its triggers a change is never logged and so never followed.
  auto triggers = conn.exec(R"sql(
SELECT t.tbl || ': ' || t.name || CASE WHEN g.tgenabled IS NULL THEN ' missing'
                                       ELSE ' disabled' END
FROM (VALUES ('users', 'tokend_log_insert_delete'), ('users', 'tokend_log_update'),
             ('users', 'tokend_log_truncate'), ('api_keys', 'tokend_log_insert_delete'),
             ('api_keys', 'tokend_log_update'), ('api_keys', 'tokend_log_truncate')) AS t(tbl, name)
LEFT JOIN pg_trigger g ON g.tgrelid = to_regclass(t.tbl) AND g.tgname = t.name
WHERE g.tgenabled IS NULL OR g.tgenabled = 'D'
)sql");
  if (!triggers) return triggers.error();
  if (int n = PQntuples(triggers->get()); n > 0) {
    std::string list;
    for (int i = 0; i < n; ++i)
      list += (i ? ", " : "") + std::string(pgText(triggers->get(), i, 0));
    return makeError("tokend's change-log triggers are not in place (" + list +
                         "): changes would go unseen; run tokenctl --postgres CONNINFO db init",
                     -EPROTO);
  }
  return {};
}

Result<DbStatus> dbStatus(PgConn& conn) {
  if (auto c = checkSchema(conn); !c) return c.error();
  DbStatus s;
  auto r = conn.exec(R"sql(
SELECT v.version, v.epoch::text,
       (SELECT count(*) FROM users WHERE NOT deleted), (SELECT count(*) FROM users WHERE deleted),
       (SELECT count(*) FROM api_keys), (SELECT count(*) FROM tokend.changelog),
       pg_current_snapshot()::text
FROM tokend.schema_version v
)sql");
  if (!r) return r.error();
  const PGresult* p = r->get();
  s.version = std::atoi(PQgetvalue(p, 0, 0));
  s.epoch = pgText(p, 0, 1);
  s.users = std::atoll(PQgetvalue(p, 0, 2));
  s.deletedUsers = std::atoll(PQgetvalue(p, 0, 3));
  s.apiKeys = std::atoll(PQgetvalue(p, 0, 4));
  s.changelog = std::atoll(PQgetvalue(p, 0, 5));
  s.currentSnapshot = pgText(p, 0, 6);
  auto reps = conn.exec(R"sql(
SELECT name, snapshot, to_char(applied_at, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       extract(epoch FROM now() - applied_at)::float8, changes_applied, rows_refused
FROM tokend.replicas ORDER BY name
)sql");
  if (!reps) return reps.error();
  for (int i = 0; i < PQntuples(reps->get()); ++i) {
    const PGresult* q = reps->get();
    s.replicas.push_back(ReplicaStatus{std::string(pgText(q, i, 0)), std::string(pgText(q, i, 1)),
                                       std::string(pgText(q, i, 2)), std::atof(PQgetvalue(q, i, 3)),
                                       std::atoll(PQgetvalue(q, i, 4)),
                                       std::atoll(PQgetvalue(q, i, 5))});
  }
  return s;
}

}  // namespace tokend::replica
