// Coder's rows (as text from PostgreSQL) to tokend's records, failing closed: a row tokend cannot
// map exactly grants nothing (its local copy is removed) and says why.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "verifier/records.h"

namespace tokend::replica {

// A users row, every column as PostgreSQL's text form.
struct PgUserRow {
  std::string id, username, rolesJson, status;
  bool deleted = false;
  int64_t createdUs = 0, updatedUs = 0;
};

// An api_keys row.
struct PgTokenRow {
  std::string id, hashHex, userId, loginType, name, scopesJson, allowJson;
  int64_t createdUs = 0, expiresUs = 0, lifetimeSeconds = 0, lastUsedUs = 0, updatedUs = 0;
};

// The record to hold, or none; `refused` says why a row that exists grants nothing (empty for a
// deleted user, which is no refusal).
template <class T>
struct Mapped {
  std::optional<T> record;
  std::string refused;
  // Unknown role names dropped from a user that is otherwise kept (they grant nothing).
  std::string dropped;
};

Mapped<verifier::UserRecord> mapUser(const PgUserRow& row);
Mapped<verifier::TokenRecord> mapToken(const PgTokenRow& row);

// Microseconds since the epoch to tokend's whole seconds. Expiry rounds so that a token is never
// valid after PostgreSQL's expires_at: tokend refuses when expires_at < now in whole seconds, so
// an expiry with a fraction becomes the whole second before it (refused up to a second early,
// never late: `UPDATE api_keys SET expires_at = now()` refuses at once).
int64_t secondsFloor(int64_t us);
int64_t expirySeconds(int64_t us);

}  // namespace tokend::replica
