// tokenctl db init / db status.
#include "tools/ctl_postgres.h"

#include <fmt/format.h>

#include "replica/pg.h"
#include "replica/schema.h"

namespace tokend::tools {

void addDbCommand(CLI::App& app, DbCommand& cmd) {
  cmd.command = app.add_subcommand(
      "db", "The PostgreSQL database replicas follow (needs --postgres CONNINFO)");
  cmd.command->require_subcommand(1);
  cmd.init = cmd.command->add_subcommand(
      "init",
      "Create what is missing: users and api_keys in an empty database, and tokend's schema "
      "(change log, triggers) in any; never touches data; safe to run twice");
  cmd.status = cmd.command->add_subcommand(
      "status", "Show the schema version, row counts and what each replica has applied");
}

int runDb(const std::string& conninfo, const DbCommand& cmd) {
  auto conn = replica::PgConn::connect(conninfo);
  if (!conn) {
    fmt::print(stderr, "tokenctl: {}\n", conn.error().message);
    return 1;
  }
  if (cmd.init->parsed()) {
    auto r = replica::initSchema(*conn);
    if (!r) {
      fmt::print(stderr, "tokenctl: {}\n", r.error().message);
      return 1;
    }
    if (r->createdUsers) fmt::print("Created table users.\n");
    if (r->createdApiKeys) fmt::print("Created table api_keys.\n");
    if (r->installedTokend) {
      fmt::print("Installed schema tokend version {}.\n", replica::kPgSchemaVersion);
    } else {
      fmt::print("Schema tokend is at version {}: nothing to do.\n", replica::kPgSchemaVersion);
    }
    return 0;
  }
  auto s = replica::dbStatus(*conn);
  if (!s) {
    fmt::print(stderr, "tokenctl: {}\n", s.error().message);
    return 1;
  }
  fmt::print("schema version:   {} (this build: {})\n", s->version, replica::kPgSchemaVersion);
  fmt::print("epoch:            {}\n", s->epoch);
  fmt::print("users:            {} ({} deleted)\n", s->users, s->deletedUsers);
  fmt::print("api_keys:         {}\n", s->apiKeys);
  fmt::print("change log:       {} entries\n", s->changelog);
  fmt::print("current snapshot: {}\n", s->currentSnapshot);
  fmt::print("replicas:         {}\n", s->replicas.size());
  if (!s->replicas.empty()) {
    fmt::print("{:<48}  {:<24}  {:<20}  {:>8}  {:>9}  {:>7}\n", "NAME", "APPLIED SNAPSHOT",
               "APPLIED AT", "AGO (S)", "CHANGES", "REFUSED");
    for (const auto& r : s->replicas) {
      fmt::print("{:<48}  {:<24}  {:<20}  {:>8.1f}  {:>9}  {:>7}\n", r.name, r.snapshot,
                 r.appliedAt, r.lagSeconds, r.changesApplied, r.rowsRefused);
    }
  }
  return 0;
}

}  // namespace tokend::tools
