// Management operations on users and tokens, shared by tokenctl's operator mode and the daemon's
// management API, so that both apply the same rules with the same messages.
//
// Each operation is one KeyDb write transaction: it either commits whole or writes nothing.
// Authorisation (who may act for whom, which scopes a caller may grant) is the caller's: these
// functions take it as parameters (`publicOnly`, and the creating token, whose reach, SPEC 8 and
// verifier/reach.h, they check against its record read in the same transaction). Two rules hold
// for every caller, operator mode included: the last active owner is never suspended, deleted or
// demoted, and promoting a user to owner clamps their tokens to the admin lifetime cap.
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
  // User mode: the id of the token making the request. The new token must be within its reach
  // (checkCreation), else -EPERM. Absent in operator mode.
  std::optional<std::string> creator;
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
  // Suspending the last active owner is refused (-EPERM).
  Result<UserRecord> setStatus(std::string_view ref, UserStatus status, int64_t now);
  // Taking the owner role from the last active owner is refused (-EPERM). Granting it clamps the
  // user's tokens (sessions too) to expire at most now + maxAdminTokenLifetime, in the same
  // transaction (the changelog names each token changed): an owner token never lives past the
  // admin cap, however it was made.
  Result<UserRecord> setRoles(std::string_view ref, const std::vector<std::string>& roles,
                              int64_t now);
  // Deletes the user and every token of theirs. Deleting the last active owner is refused
  // (-EPERM).
  Result<UserRecord> deleteUser(std::string_view ref);

  // Tokens.
  Result<CreatedToken> createToken(const CreateTokenRequest& request, int64_t now);
  // `creator` as in CreateTokenRequest: a session only from a session or a full token.
  Result<CreatedToken> createSession(const Uuid& user, LoginType kind, int64_t now,
                                     std::optional<std::string> creator = std::nullopt);
  // Tokens of one user, or of all; expired ones only with `includeExpired`.
  Result<std::vector<TokenRecord>> tokens(std::optional<Uuid> user, bool includeExpired,
                                          int64_t now);
  // `ref` is a whole token, a token id, or a token name looked up among `user`'s tokens (among
  // every user's when `user` is absent: a name held by several users is refused as ambiguous).
  // Messages name a ref shaped like a token by its id only (redactTokenRef), never its secret.
  Result<TokenRecord> findToken(std::string_view ref, std::optional<Uuid> user);
  // Expires the token at once (expires_at = now - 1s: equal to now would still be valid), keeping
  // the record.
  Result<TokenRecord> expireToken(std::string_view ref, std::optional<Uuid> user, int64_t now);
  Result<TokenRecord> deleteToken(std::string_view ref, std::optional<Uuid> user);

  const LifetimeConfig& config() const { return config_; }
  KeyDb& db() { return db_; }

  // From now on every operation that writes fails with -EROFS and `why` (a replica's data dir,
  // whose truth is PostgreSQL: SPEC 11). Reads go on.
  void refuseWrites(std::string why) { readOnly_ = std::move(why); }

 private:
  Result<void> writable() const;

  KeyDb& db_;
  LifetimeConfig config_;
  std::string readOnly_;
};

}  // namespace tokend::verifier
