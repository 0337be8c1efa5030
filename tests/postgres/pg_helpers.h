// Helpers shared by the postgres suite: users and tokens inserted with plain SQL, the way Coder
// inserts them (sha256 of the secret in hashed_secret).
#pragma once

#include <random>
#include <string>

#include "tests/support/postgres.h"

namespace tokend::test {

inline std::string randomAlnum(size_t n) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* abc = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  std::string s;
  for (size_t i = 0; i < n; ++i) s += abc[rng() % 62];
  return s;
}

struct PgToken {
  std::string id, secret, user;
  std::string token() const { return id + "-" + secret; }
};

// A user; returns its id.
inline std::string pgUser(const PgCluster& pg, const std::string& name,
                          const std::string& roles = "{}", const std::string& status = "active") {
  return pg.psqlOk(
      "INSERT INTO users (id, username, rbac_roles, status) VALUES "
      "(gen_random_uuid(), '" +
      name + "', '" + roles + "', '" + status + "') RETURNING id");
}

inline PgToken pgToken(const PgCluster& pg, const std::string& user,
                       const std::string& scopes = "{coder:all}",
                       const std::string& allow = "{*:*}", const std::string& loginType = "token") {
  PgToken t{randomAlnum(10), randomAlnum(22), user};
  pg.psqlOk(
      "INSERT INTO api_keys (id, hashed_secret, user_id, expires_at, login_type, token_name, "
      "scopes, allow_list, lifetime_seconds) VALUES ('" +
      t.id + "', sha256('" + t.secret + "'::bytea), '" + user + "', now() + interval '1 day', '" +
      loginType + "', '" + (loginType == "token" ? t.id : "") + "', '" + scopes + "', '" + allow +
      "', 86400)");
  return t;
}

}  // namespace tokend::test
