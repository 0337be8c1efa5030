// tokenctl's operator mode: commands run on the key database directly, in one transaction each.
#include <fmt/format.h>

#include <map>

#include "base/clock.h"
#include "daemon/text_protocol.h"
#include "tools/ctl_backend.h"
#include "verifier/api_json.h"
#include "verifier/manage.h"
#include "verifier/verify.h"

namespace tokend::tools {
namespace {

using namespace tokend::verifier;

class OperatorBackend final : public Backend {
 public:
  OperatorBackend(std::unique_ptr<KeyDb> db, LifetimeConfig config)
      : db_(std::move(db)), manager_(*db_, config) {}
  void refuseWrites(std::string why) { manager_.refuseWrites(std::move(why)); }

  Result<Json> createUser(const std::string& username,
                          const std::vector<std::string>& roles) override {
    return json(manager_.createUser(username, roles, clockNow()));
  }
  Result<Json> listUsers() override {
    auto users = manager_.users();
    if (!users) return users.error();
    Json out = Json::array();
    for (const UserRecord& u : *users) out.push_back(userJson(u));
    return out;
  }
  Result<Json> viewUser(const std::string& ref) override { return json(manager_.user(ref)); }
  Result<Json> setUserActive(const std::string& ref, bool active) override {
    return json(
        manager_.setStatus(ref, active ? UserStatus::Active : UserStatus::Suspended, clockNow()));
  }
  Result<Json> setUserRoles(const std::string& ref,
                            const std::vector<std::string>& roles) override {
    return json(manager_.setRoles(ref, roles, clockNow()));
  }
  Result<Json> deleteUser(const std::string& ref) override {
    return json(manager_.deleteUser(ref));
  }

  Result<Json> createToken(const TokenCreateArgs& args) override {
    if (!args.user) return makeError("operator mode needs --user for tokens create");
    auto u = manager_.user(*args.user);
    if (!u) return u.error();
    CreateTokenRequest req{u->id, args.name, args.lifetime, args.scopes, args.allowList, false};
    auto created = manager_.createToken(req, clockNow());
    if (!created) return created.error();
    Json j = tokenJson(created->record, u->username);
    j["key"] = created->key;
    return j;
  }

  Result<Json> listTokens(const std::optional<std::string>& user, bool,
                          bool includeExpired) override {
    std::optional<Uuid> id;
    if (user) {
      auto u = manager_.user(*user);
      if (!u) return u.error();
      id = u->id;
    }
    auto tokens = manager_.tokens(id, includeExpired, clockNow());
    if (!tokens) return tokens.error();
    auto names = usernames();
    if (!names) return names.error();
    Json out = Json::array();
    for (const TokenRecord& t : *tokens) out.push_back(tokenJson(t, (*names)[t.userId]));
    return out;
  }

  Result<Json> viewToken(const std::string& ref, const std::optional<std::string>& user) override {
    auto id = userId(user);
    if (!id) return id.error();
    auto t = manager_.findToken(ref, *id);
    if (!t) return t.error();
    return withUsername(*t);
  }

  Result<Json> removeToken(const std::string& ref, const std::optional<std::string>& user,
                           bool hardDelete) override {
    auto id = userId(user);
    if (!id) return id.error();
    auto t =
        hardDelete ? manager_.deleteToken(ref, *id) : manager_.expireToken(ref, *id, clockNow());
    if (!t) return t.error();
    return withUsername(*t);
  }

  Result<Json> createSession(const std::string& user, const std::string& loginType) override {
    auto kind = parseLoginType(loginType);
    if (!kind || *kind == LoginType::Token) {
      return makeError(
          fmt::format("invalid login type \"{}\": want password, oidc or github", loginType));
    }
    auto u = manager_.user(user);
    if (!u) return u.error();
    auto created = manager_.createSession(u->id, *kind, clockNow());
    if (!created) return created.error();
    Json j = tokenJson(created->record, u->username);
    j["key"] = created->key;
    return j;
  }

  Result<std::string> check(const std::string& token, const std::string& permission,
                            const std::string& object, const std::string& owner) override {
    auto reader = db_->reader();
    if (!reader) return reader.error();
    if (auto b = (*reader)->begin(); !b) return b.error();
    Sha256 sha;
    auto scratch = std::make_unique<CompiledToken>();
    auto v =
        verify(**reader, sha, token, parseQuery(permission, object, owner), clockNow(), *scratch);
    (*reader)->end();
    if (!v) return v.error();
    std::string line;
    daemon::VerifyAnswer a{v->reason,    v->userId,    v->usernameView(), v->tokenIdView(),
                           v->loginType, v->expiresAt, v->owned};
    daemon::appendTextAnswer(line, a);
    if (!line.empty() && line.back() == '\n') line.pop_back();
    return line;
  }

 private:
  template <class T>
  static Result<Json> json(const Result<T>& r) {
    if (!r) return r.error();
    return userJson(*r);
  }

  Result<std::optional<Uuid>> userId(const std::optional<std::string>& user) {
    if (!user) return std::optional<Uuid>{};
    auto u = manager_.user(*user);
    if (!u) return u.error();
    return std::optional<Uuid>{u->id};
  }

  Result<std::map<Uuid, std::string>> usernames() {
    auto users = manager_.users();
    if (!users) return users.error();
    std::map<Uuid, std::string> m;
    for (const UserRecord& u : *users) m[u.id] = u.username;
    return m;
  }

  Result<Json> withUsername(const TokenRecord& t) {
    auto u = manager_.user(t.userId.toString());
    return tokenJson(t, u ? u->username : std::string());
  }

  std::unique_ptr<KeyDb> db_;
  Manager manager_;
};

}  // namespace

Result<bool> isReplicaDir(KeyDb& db) {
  auto reader = db.reader();
  if (!reader) return reader.error();
  if (auto b = (*reader)->begin(); !b) return b.error();
  auto replica = (*reader)->isReplica();
  (*reader)->end();
  return replica;
}

Result<std::unique_ptr<Backend>> openOperatorBackend(const std::string& dbDir, size_t maxDbSize) {
  auto config = lifetimeConfigFromEnv();
  if (!config) return config.error();
  KeyDbOptions options;
  options.maxMapSize = maxDbSize;
  auto db = KeyDb::open(dbDir, options);
  if (!db) return db.error();
  auto replica = isReplicaDir(**db);
  if (!replica) return replica.error();
  auto backend = std::make_unique<OperatorBackend>(std::move(*db), *config);
  if (*replica) backend->refuseWrites(kReplicaWriteRefusal);
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace tokend::tools
