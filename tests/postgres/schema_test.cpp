// db init and db status against private PostgreSQL clusters: an empty database, twice, and one
// shaped like Coder's (its enum types and extra columns).
#include <doctest/doctest.h>

#include "tests/postgres/pg_helpers.h"
#include "tests/support/daemon.h"

using namespace tokend::test;

namespace {

RunResult ctl(const PgCluster& pg, std::vector<std::string> args) {
  std::vector<std::string> argv = {programPath("TOKENCTL"), "--postgres", pg.conninfo()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv);
}

// Everything of schema public and tokend that db init could have changed, as text.
std::string schemaDump(const PgCluster& pg) {
  return pg.psqlOk(
      "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ("
      " SELECT 'rel ' || c.oid || ' ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text "
      "AS x"
      "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
      "  WHERE n.nspname IN ('public', 'tokend')"
      " UNION ALL SELECT 'trg ' || t.oid || ' ' || t.tgname || ' ' || t.tgenabled::text FROM "
      "pg_trigger t"
      "  WHERE NOT t.tgisinternal"
      " UNION ALL SELECT 'fn ' || p.oid || ' ' || p.proname || ' ' || md5(p.prosrc) FROM pg_proc p"
      "  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tokend'"
      " UNION ALL SELECT 'ver ' || version || ' ' || epoch FROM tokend.schema_version) s");
}

// Coder's own DDL for the columns it has and tokend does not use (coder_pg.md §1).
const char* kCoderSchema = R"sql(
CREATE TYPE user_status AS ENUM ('active', 'suspended', 'dormant');
CREATE TYPE login_type AS ENUM ('password', 'github', 'oidc', 'token', 'none', 'oauth2_provider_app');
CREATE TYPE api_key_scope AS ENUM ('coder:all', 'coder:application_connect', 'workspace:read',
  'workspace:*', 'template:read', 'coder:workspaces.access');
CREATE TABLE users (
  id uuid NOT NULL PRIMARY KEY, email text NOT NULL, username text DEFAULT ''::text NOT NULL,
  hashed_password bytea NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
  status user_status DEFAULT 'dormant'::user_status NOT NULL,
  rbac_roles text[] DEFAULT '{}'::text[] NOT NULL,
  login_type login_type DEFAULT 'password'::login_type NOT NULL,
  avatar_url text DEFAULT ''::text NOT NULL, deleted boolean DEFAULT false NOT NULL,
  last_seen_at timestamp without time zone DEFAULT '0001-01-01 00:00:00'::timestamp NOT NULL,
  quiet_hours_schedule text DEFAULT ''::text NOT NULL, name text DEFAULT ''::text NOT NULL,
  github_com_user_id bigint, is_system boolean DEFAULT false NOT NULL);
CREATE TABLE api_keys (
  id text NOT NULL PRIMARY KEY, hashed_secret bytea NOT NULL,
  user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  last_used timestamptz NOT NULL, expires_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
  login_type login_type NOT NULL, lifetime_seconds bigint DEFAULT 86400 NOT NULL,
  ip_address inet DEFAULT '0.0.0.0'::inet NOT NULL, token_name text DEFAULT ''::text NOT NULL,
  scopes api_key_scope[] NOT NULL, allow_list text[] NOT NULL);
CREATE INDEX idx_api_keys_user ON api_keys USING btree (user_id);
CREATE UNIQUE INDEX idx_api_key_name ON api_keys USING btree (user_id, token_name)
  WHERE (login_type = 'token'::login_type);
CREATE FUNCTION delete_deleted_user_resources() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (NEW.deleted) THEN DELETE FROM api_keys WHERE user_id = OLD.id; END IF;
  RETURN NEW;
END; $$;
CREATE TRIGGER trigger_update_users AFTER INSERT OR UPDATE ON users FOR EACH ROW
  WHEN (new.deleted = true) EXECUTE FUNCTION delete_deleted_user_resources();
)sql";

}  // namespace

TEST_SUITE("PostgresSchema") {
  TEST_CASE(
      "db init creates Coder's tables and tokend's schema, and a second run changes nothing") {
    PgCluster::skipUnlessAvailable();
    PgCluster pg;
    RunResult first = ctl(pg, {"db", "init"});
    REQUIRE_MESSAGE(first.status == 0, first.err);
    CHECK(first.out.find("Created table users.") != std::string::npos);
    CHECK(first.out.find("Created table api_keys.") != std::string::npos);
    const std::string user = pgUser(pg, "alice", "{owner}");
    pgToken(pg, user);
    const std::string rows =
        pg.psqlOk("SELECT count(*) FROM users") + "/" + pg.psqlOk("SELECT count(*) FROM api_keys");
    const std::string before = schemaDump(pg);

    RunResult second = ctl(pg, {"db", "init"});
    REQUIRE_MESSAGE(second.status == 0, second.err);
    CHECK(second.out.find("nothing to do") != std::string::npos);
    CHECK(second.out.find("Created") == std::string::npos);
    CHECK(second.err.empty());
    // Same objects (same oids: nothing dropped and recreated), same version and epoch, same data.
    CHECK(schemaDump(pg) == before);
    CHECK(pg.psqlOk("SELECT count(*) FROM users") + "/" +
              pg.psqlOk("SELECT count(*) FROM api_keys") ==
          rows);

    RunResult status = ctl(pg, {"db", "status"});
    REQUIRE_MESSAGE(status.status == 0, status.err);
    CHECK(status.out.find("schema version:   1 (this build: 1)") != std::string::npos);
    CHECK(status.out.find("users:            1 (0 deleted)") != std::string::npos);
    CHECK(status.out.find("api_keys:         1") != std::string::npos);
  }

  TEST_CASE("db status and tokend refuse a database without tokend's schema, or with a newer one") {
    PgCluster::skipUnlessAvailable();
    PgCluster pg;
    RunResult none = ctl(pg, {"db", "status"});
    CHECK(none.status == 1);
    CHECK(none.err.find("lacks the columns tokend reads") != std::string::npos);
    REQUIRE(ctl(pg, {"db", "init"}).status == 0);
    pg.psqlOk("UPDATE tokend.schema_version SET version = 99");
    RunResult newer = ctl(pg, {"db", "status"});
    CHECK(newer.status == 1);
    CHECK(newer.err.find("schema tokend is at version 99, newer than this build's 1") !=
          std::string::npos);
    RunResult init = ctl(pg, {"db", "init"});
    CHECK(init.status == 1);
    CHECK(init.err.find("newer than this tokenctl") != std::string::npos);
    TempDir dir;
    RunResult daemon = run({programPath("TOKEND"), "--postgres", pg.conninfo(), "--data-dir",
                            dir / "data", "--threads", "1"});
    CHECK(daemon.status == 1);
    CHECK(daemon.err.find("newer than this build's 1") != std::string::npos);
  }

  TEST_CASE("a Coder-shaped database (enum types, extra columns) is served as it is") {
    PgCluster::skipUnlessAvailable();
    PgCluster pg;
    pg.psqlOk(kCoderSchema);
    RunResult init = ctl(pg, {"db", "init"});
    REQUIRE_MESSAGE(init.status == 0, init.err);
    CHECK(init.out.find("Created table") == std::string::npos);
    // Inserted as Coder's InsertUser / InsertAPIKey do.
    const std::string user = pg.psqlOk(
        "INSERT INTO users (id, email, username, hashed_password, created_at, updated_at, status, "
        "rbac_roles, login_type) VALUES (gen_random_uuid(), 'a@example.com', 'alice', '', now(), "
        "now(), 'dormant', '{owner}', 'password') RETURNING id");
    const std::string id = randomAlnum(10), secret = randomAlnum(22);
    pg.psqlOk(
        "INSERT INTO api_keys (id, hashed_secret, user_id, last_used, expires_at, created_at, "
        "updated_at, login_type, lifetime_seconds, ip_address, token_name, scopes, "
        "allow_list) VALUES ('" +
        id + "', sha256('" + secret + "'::bytea), '" + user +
        "', '0001-01-01 00:00:00+00', now() + interval '7 days', now(), now(), 'token', "
        "604800, '10.0.0.1', 'cli', '{workspace:read}', '{*:*}')");
    const std::string session = randomAlnum(10), sessionSecret = randomAlnum(22);
    pg.psqlOk(
        "INSERT INTO api_keys (id, hashed_secret, user_id, last_used, expires_at, created_at, "
        "updated_at, login_type, lifetime_seconds, scopes, allow_list) VALUES ('" +
        session + "', sha256('" + sessionSecret + "'::bytea), '" + user +
        "', now(), now() + interval '1 day', now(), now(), 'oidc', 86400, '{coder:all}', "
        "'{*:*}')");
    Daemon d({"--postgres", pg.conninfo(), "--threads", "1"});
    const std::string token = id + "-" + secret;
    CHECK(d.text("VERIFY " + token + " workspace:read")
              .rfind("OK " + user + " alice " + id + " token", 0) == 0);
    CHECK(d.text("VERIFY " + token + " workspace:update") == "DENY scope 403");
    CHECK(d.text("VERIFY " + session + "-" + sessionSecret)
              .rfind("OK " + user + " alice " + session + " oidc", 0) == 0);
    // Coder's soft delete: deleted = true, and its trigger deletes the keys.
    pg.psqlOk("UPDATE users SET deleted = true WHERE id = '" + user + "'");
    CHECK(waitFor([&] { return d.text("VERIFY " + token) == "DENY unknown 401"; }));
    CHECK(d.text("VERIFY " + session + "-" + sessionSecret) == "DENY unknown 401");
  }
}
