// tokenctl's backends: the same commands either on the key database directly (operator mode) or
// through the daemon's management API (user mode). Both answer in the management API's JSON shapes
// (verifier/api_json.h), so tokenctl prints one way whatever the mode.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"

namespace tokend::verifier {
class KeyDb;
}

namespace tokend::tools {

using Json = nlohmann::json;

struct TokenCreateArgs {
  std::optional<std::string> user;  // username, uuid or "me"
  std::optional<std::string> name;
  std::optional<int64_t> lifetime;  // seconds
  std::vector<std::string> scopes;
  std::vector<std::string> allowList;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Result<Json> createUser(const std::string& username,
                                  const std::vector<std::string>& roles) = 0;
  virtual Result<Json> listUsers() = 0;
  virtual Result<Json> viewUser(const std::string& ref) = 0;
  virtual Result<Json> setUserActive(const std::string& ref, bool active) = 0;
  virtual Result<Json> setUserRoles(const std::string& ref,
                                    const std::vector<std::string>& roles) = 0;
  virtual Result<Json> deleteUser(const std::string& ref) = 0;

  // The token record plus "key".
  virtual Result<Json> createToken(const TokenCreateArgs& args) = 0;
  // An array of token records, each with "username".
  virtual Result<Json> listTokens(const std::optional<std::string>& user, bool all,
                                  bool includeExpired) = 0;
  virtual Result<Json> viewToken(const std::string& ref,
                                 const std::optional<std::string>& user) = 0;
  virtual Result<Json> removeToken(const std::string& ref, const std::optional<std::string>& user,
                                   bool hardDelete) = 0;
  // {"key": ...} plus the record.
  virtual Result<Json> createSession(const std::string& user, const std::string& loginType) = 0;

  // The text protocol's answer line, without its newline.
  virtual Result<std::string> check(const std::string& token, const std::string& permission,
                                    const std::string& object, const std::string& owner) = 0;
};

// What tokenctl --db answers to a write on a PostgreSQL replica's data dir (SPEC 11): the copy
// follows PostgreSQL, so a change made here would be lost or diverge.
inline constexpr const char* kReplicaWriteRefusal =
    "this data dir is a replica of PostgreSQL (tokend --postgres): change users and tokens in "
    "PostgreSQL (tokenctl --postgres CONNINFO ... writes are not built yet; plain SQL works), "
    "every replica follows";
// Whether `db` is such a replica's data dir.
Result<bool> isReplicaDir(verifier::KeyDb& db);

// `maxDbSize`: KeyDbOptions::maxMapSize (0: the cap stored in the database).
Result<std::unique_ptr<Backend>> openOperatorBackend(const std::string& dbDir, size_t maxDbSize);
Result<std::unique_ptr<Backend>> openSocketBackend(const std::string& socketPath,
                                                   const std::string& token);

}  // namespace tokend::tools
