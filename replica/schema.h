// tokend's objects in PostgreSQL (schema `tokend`) and, in an empty database, Coder's `users` and
// `api_keys`: installing them (db init), checking them (every replica at connect), and the
// figures `db status` prints.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"
#include "replica/pg.h"

namespace tokend::replica {

// The version of the objects in schema `tokend` this build installs and reads.
inline constexpr int kPgSchemaVersion = 1;

struct InitReport {
  bool createdUsers = false;
  bool createdApiKeys = false;
  bool installedTokend = false;  // false: schema `tokend` was already at kPgSchemaVersion
};

// Creates what is missing, in one transaction: Coder's tables (only when absent), schema
// `tokend` with its version row, change log, replica table and triggers. Never writes to
// users or api_keys. Safe to run twice. Refuses a newer tokend schema.
Result<InitReport> initSchema(PgConn& conn);

// Checks, at connect: the columns tokend reads exist, schema `tokend` is at kPgSchemaVersion,
// the triggers are in place and enabled. Errors name what is wrong and the fix.
Result<void> checkSchema(PgConn& conn);

struct ReplicaStatus {
  std::string name;
  std::string snapshot;  // the pg_snapshot its local copy reflects
  std::string appliedAt;
  double lagSeconds = 0;  // now - appliedAt
  int64_t changesApplied = 0;
  int64_t rowsRefused = 0;
};

struct DbStatus {
  int version = 0;
  std::string epoch;
  int64_t users = 0;
  int64_t deletedUsers = 0;
  int64_t apiKeys = 0;
  int64_t changelog = 0;
  std::string currentSnapshot;
  std::vector<ReplicaStatus> replicas;
};
Result<DbStatus> dbStatus(PgConn& conn);

}  // namespace tokend::replica
