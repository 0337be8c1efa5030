// Management operations on users and tokens, shared by tokenctl's operator mode and the daemon's
// management API, so that both apply the same rules with the same messages.
//
// Each operation is one KeyDb write transaction: it either commits whole or writes nothing.
// Authorisation (who may act for whom, which scopes a caller may grant) is the caller's: these
// functions take it as parameters (`publicOnly`).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "verifier/keydb.h"
#include "verifier/lifetime.h"
#include "verifier/records.h"

namespace tokend::verifier {

// `[a-z0-9][a-z0-9-_]{0,31}`
bool isValidUsername(std::string_view name);
// A random readable token name, e.g. "brisk-otter-4821".
std::string randomTokenName();

struct CreateTokenRequest {
  Uuid user;
  std::optional<std::string> name;     // random when absent
  std::optional<int64_t> lifetime;     // seconds; the default lifetime when absent
  std::vector<std::string> scopes;     // may hold comma-separated lists; none = coder:all
  std::vector<std::string> allowList;  // may hold comma-separated lists; none = *:*
  bool publicOnly = false;             // user mode: only publicly requestable scopes
};

struct CreatedToken {
  TokenRecord record;
  std::string key;  // "<id>-<secret>": shown once, never stored
};

class Manager {
 public:
  Manager(KeyDb& db, LifetimeConfig config) : db_(db), config_(config) {}

  // Users. `ref` is a username or a UUID.
  Result<UserRecord> createUser(std::string_view username, const std::vector<std::string>& roles,
                                int64_t now);
  Result<UserRecord> user(std::string_view ref);
  Result<std::vector<UserRecord>> users();
  Result<UserRecord> setStatus(std::string_view ref, UserStatus status, int64_t now);
  Result<UserRecord> setRoles(std::string_view ref, const std::vector<std::string>& roles,
                              int64_t now);
  // Deletes the user and every token of theirs.
  Result<UserRecord> deleteUser(std::string_view ref);

  // Tokens.
  Result<CreatedToken> createToken(const CreateTokenRequest& request, int64_t now);
  Result<CreatedToken> createSession(const Uuid& user, LoginType kind, int64_t now);
  // Tokens of one user, or of all; expired ones only with `includeExpired`.
  Result<std::vector<TokenRecord>> tokens(std::optional<Uuid> user, bool includeExpired,
                                          int64_t now);
  // `ref` is a whole token, a token id, or a token name looked up among `user`'s tokens (among
  // every user's when `user` is absent: a name held by several users is refused as ambiguous).
  Result<TokenRecord> findToken(std::string_view ref, std::optional<Uuid> user);
  // Expires the token at once (expires_at = now - 1s: equal to now would still be valid), keeping
  // the record.
  Result<TokenRecord> expireToken(std::string_view ref, std::optional<Uuid> user, int64_t now);
  Result<TokenRecord> deleteToken(std::string_view ref, std::optional<Uuid> user);

  const LifetimeConfig& config() const { return config_; }
  KeyDb& db() { return db_; }

 private:
  KeyDb& db_;
  LifetimeConfig config_;
};

}  // namespace tokend::verifier
