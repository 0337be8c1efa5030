// The management API: routing, authorisation and JSON bodies.
#include "daemon/management.h"

#include <fmt/format.h>
#include <openssl/crypto.h>

#include <nlohmann/json.hpp>

#include "base/clock.h"
#include "base/log.h"
#include "verifier/api_json.h"
#include "verifier/catalog.h"
#include "verifier/reach.h"
#include "verifier/scopes.h"
#include "verifier/token.h"

namespace tokend::daemon {

using namespace tokend::verifier;
using Json = nlohmann::json;

namespace {

struct Reply {
  int status = 200;
  Json body;
  bool secret = false;  // body["key"] is a new token: wiped once the answer is encoded
};

// codersdk.Response: `detail` and `validations` only when they say something.
Reply error(int status, std::string message, std::string detail = {},
            Json validations = Json::array()) {
  Json body = Json::object();
  body["message"] = std::move(message);
  if (!detail.empty()) body["detail"] = std::move(detail);
  if (!validations.empty()) body["validations"] = std::move(validations);
  return Reply{status, std::move(body)};
}

// Coder's answer to a value that must be unique: 409 with a codersdk.ValidationError on `field`.
Reply conflict(std::string message, const char* field) {
  Json v = Json::object();
  v["field"] = field;
  v["detail"] = "This value is already in use and should be unique.";
  return error(409, std::move(message), {}, Json::array({std::move(v)}));
}

// Expire and delete answer 204, no body (codersdk's ExpireAPIKey and DeleteAPIKey).
Reply noContent() {
  return Reply{204, Json()};
}

int statusOf(const Error& e) {
  switch (-e.code) {
    case EINVAL:
      return 400;
    case EPERM:
      return 403;
    case ENOENT:
      return 404;
    case EEXIST:
      return 409;
    case EROFS:  // a replica's data dir (SPEC 11): writes go to PostgreSQL
      return 503;
    default:
      return 500;
  }
}

Reply fromError(const Error& e) {
  // A full map or disk: the write was refused whole; reads and verification go on.
  if (e.code == -ENOSPC) return error(507, "The key database is full.", e.message);
  int status = statusOf(e);
  if (status == 500) return error(500, "Internal error.", e.message);
  return error(status, e.message);
}

// The path as an error's detail may show it: a segment shaped like a token keeps only its id.
std::string safePath(std::string_view path) {
  std::string out;
  while (!path.empty()) {
    auto slash = path.find('/');
    out += redactTokenRef(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    out += '/';
    path.remove_prefix(slash + 1);
  }
  return out;
}

std::vector<std::string_view> split(std::string_view path) {
  std::vector<std::string_view> parts;
  while (!path.empty()) {
    auto slash = path.find('/');
    std::string_view part = path.substr(0, slash);
    if (!part.empty()) parts.push_back(part);
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return parts;
}

// Every scope a user may request through this API.
Json publicScopes() {
  Json out = Json::array();
  for (int r = 0; r < catalog::resourceCount(); ++r) {
    if (catalog::publicWildcard(r)) out.push_back(std::string(catalog::resourceName(r)) + ":*");
  }
  PermSet pub = catalog::publicPermissions();
  for (int b = 0; b < catalog::permissionCount(); ++b) {
    if (pub.test(b)) out.push_back(std::string(catalog::permissionName(b)));
  }
  for (const char* s :
       {"coder:all", "coder:application_connect", "coder:workspaces.create",
        "coder:workspaces.operate", "coder:workspaces.delete", "coder:workspaces.access",
        "coder:templates.build", "coder:templates.author", "coder:apikeys.manage_self"}) {
    if (catalog::findBundle(s)) out.push_back(s);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> stringList(const Json& j, const char* field, std::string& problem) {
  std::vector<std::string> out;
  if (!j.contains(field) || j[field].is_null()) return out;
  if (!j[field].is_array()) {
    problem = fmt::format("\"{}\" must be an array of strings", field);
    return out;
  }
  for (const auto& v : j[field]) {
    if (!v.is_string()) {
      problem = fmt::format("\"{}\" must be an array of strings", field);
      return out;
    }
    out.push_back(v.get<std::string>());
  }
  return out;
}

// One codersdk.APIAllowListTarget as Coder reads it: the object {"type": T, "id": I} or the
// string "T:I". The object's parts must not smuggle in more entries (':' or ',').
std::optional<std::string> allowEntry(const Json& v, std::string& problem) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_object()) {
    problem = "invalid allow_list entry: expected object with type/id or string";
    return std::nullopt;
  }
  std::string parts[2];
  const char* names[2] = {"type", "id"};
  for (int i = 0; i < 2; ++i) {
    auto it = v.find(names[i]);
    if (it == v.end() || it->is_null()) continue;
    if (!it->is_string()) {
      problem = fmt::format("allow_list entry's \"{}\" must be a string", names[i]);
      return std::nullopt;
    }
    parts[i] = it->get<std::string>();
  }
  if (parts[0].empty() || parts[1].empty()) {
    problem = "allow_list entry must include both type and id";
    return std::nullopt;
  }
  for (const std::string& part : parts) {
    if (part.find_first_of(":,") != std::string::npos) {
      problem = fmt::format("invalid allow_list entry {{\"type\": \"{}\", \"id\": \"{}\"}}",
                            parts[0], parts[1]);
      return std::nullopt;
    }
  }
  return parts[0] + ":" + parts[1];
}

std::vector<std::string> allowList(const Json& j, std::string& problem) {
  std::vector<std::string> out;
  auto it = j.find("allow_list");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) {
    problem = "\"allow_list\" must be an array";
    return out;
  }
  for (const auto& v : *it) {
    auto entry = allowEntry(v, problem);
    if (!entry) return out;
    out.push_back(std::move(*entry));
  }
  return out;
}

// A Go time.Duration (integer nanoseconds) as whole seconds, rounded up: 1 ns makes a 1 s token
// rather than a refused one, and a value within a cap of whole seconds stays within it. 0 or
// absent is the default (nullopt); a negative value stays negative, for the lifetime check.
std::optional<int64_t> lifetimeSeconds(const Json& j, std::string& problem) {
  auto it = j.find("lifetime");
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() || (it->is_number_unsigned() && it->get<uint64_t>() > INT64_MAX)) {
    problem = "\"lifetime\" must be a Go duration: integer nanoseconds (3600000000000 is one hour)";
    return std::nullopt;
  }
  int64_t ns = it->get<int64_t>();
  if (ns == 0) return std::nullopt;
  if (ns < 0) return -1;
  constexpr int64_t kNs = 1000000000;
  return ns / kNs + (ns % kNs != 0 ? 1 : 0);
}

// The string field `field` of a JSON object, `fallback` when absent or null. json::value() would
// throw on a field of another type; a client's body must never reach an exception.
std::optional<std::string> stringField(const Json& j, const char* field, std::string fallback,
                                       std::string& problem) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) {
    problem = fmt::format("\"{}\" must be a string", field);
    return std::nullopt;
  }
  return it->get<std::string>();
}

class Call {
 public:
  Call(Service& s, Manager& m, Service::Worker& w, const HttpRequest& r, DecodeBuffer& scratch)
      : service_(s), manager_(m), worker_(w), req_(r), scratch_(scratch) {}

  Reply run() {
    // The public scope catalog needs no token (coderd's handler has no @Security line).
    if (req_.method == "GET" && req_.path == "/api/v2/auth/scopes") {
      return Reply{200, Json{{"external", publicScopes()}}};
    }
    auto token = extractToken(req_, scratch_);
    if (!token) return error(400, "Bad request.", token.error().message);
    token_ = *token;
    if (token_.empty())
      return error(401, "You must be authenticated to use this endpoint.", "missing");
    VerifyAnswer a;
    if (!service_.verify(worker_, VerifyQuery{token_, {}, {}, {}}, a)) {
      return error(500, "Internal error.", "the key database could not be read");
    }
    if (a.reason != Reason::Ok) {
      return error(401, "Your token is not valid.", std::string(reasonName(a.reason)));
    }
    // The caller's token by id: what it creates must be within its reach (SPEC 8).
    callerTokenId_ = a.tokenId;
    auto caller = manager_.user(a.userId.toString());
    if (!caller) return error(401, "Your token is not valid.", "unknown");
    caller_ = std::move(*caller);
    return route();
  }

 private:
  // Whether the caller's token may do `permission` (with `owner` when set): the full decision.
  std::optional<Reply> require(const char* permission, const Uuid* owner = nullptr) {
    std::string ownerText = owner ? owner->toString() : std::string();
    VerifyAnswer a;
    if (!service_.verify(worker_, VerifyQuery{token_, permission, {}, ownerText}, a)) {
      return error(500, "Internal error.", "the key database could not be read");
    }
    if (a.reason == Reason::Ok) return std::nullopt;
    return error(403, fmt::format("Forbidden: your token may not {}.", permission),
                 std::string(reasonName(a.reason)));
  }

  // After a change this worker committed: take it out of the cache now, before answering, so
  // the client that revoked can count on it at once (and SPEC 6's 10 ms holds whatever the
  // scheduler does to the changelog watcher, which will find the same change again).
  void revoked(const TokenRecord& t) { service_.cache().invalidateToken(t.id); }
  void changed(const UserRecord& u) {
    service_.cache().invalidateUser(std::span<const uint8_t, shm::kUuidLength>(u.id.bytes));
  }

  Result<UserRecord> target(std::string_view ref) {
    if (ref == "me") return caller_;
    return manager_.user(ref);
  }

  Result<Json> body() {
    if (req_.body.empty()) return Json::object();
    Json j = Json::parse(req_.body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return makeError("the body is not a JSON object");
    return j;
  }

  Reply route() {
    auto p = split(req_.path);
    const std::string_view m = req_.method;
    // p[0] == "api", p[1] == "v2"
    if (p.size() == 4 && p[2] == "auth" && p[3] == "scopes" && m == "GET") {
      return Reply{200, Json{{"external", publicScopes()}}};
    }
    if (p.size() < 3 || p[2] != "users") return error(404, "Not found.", safePath(req_.path));
    if (p.size() == 3) {
      if (m == "GET") return listUsers();
      if (m == "POST") return createUser();
      return error(405, "Method not allowed.");
    }
    auto t = target(p[3]);
    if (!t) return fromError(t.error());
    const UserRecord& user = *t;
    if (p.size() == 4) {
      if (m == "GET") return viewUser(user);
      if (m == "DELETE") return deleteUser(user);
      return error(405, "Method not allowed.");
    }
    if (p.size() == 6 && p[4] == "status" && m == "PUT" &&
        (p[5] == "suspend" || p[5] == "activate")) {
      return setStatus(user, p[5] == "activate");
    }
    if (p.size() == 5 && p[4] == "roles" && m == "PUT") return setRoles(user);
    if (p[4] != "keys") return error(404, "Not found.", safePath(req_.path));

    // Tokens of `user`: another user's need the owner role.
    if (user.id != caller_.id && !hasOwnerRole(caller_.roles)) {
      return error(403, "Only owners may manage other users' tokens.");
    }
    if (p.size() == 5 && m == "POST") return createSession(user);
    if (p.size() >= 6 && p[5] == "tokens") {
      if (p.size() == 6 && m == "POST") return createToken(user);
      if (p.size() == 6 && m == "GET") return listTokens(user);
      if (p.size() == 7 && p[6] == "tokenconfig" && m == "GET") return tokenConfig(user);
      if (p.size() == 7 && m == "GET") return viewToken(user, p[6], false);
      return error(405, "Method not allowed.");
    }
    if (p.size() == 6 && m == "GET") return viewToken(user, p[5], true);
    if (p.size() == 6 && m == "DELETE") return deleteToken(user, p[5]);
    if (p.size() == 7 && p[6] == "expire" && m == "PUT") return expireToken(user, p[5]);
    return error(404, "Not found.", safePath(req_.path));
  }

  // codersdk.CreateTokenRequest, as Coder's Go client sends it: `lifetime` in nanoseconds (0:
  // the default), `token_name` "" for a random name, `allow_list` objects or strings, `scope`
  // (deprecated) beside `scopes`. Statuses and messages are coderd's.
  Reply createToken(const UserRecord& user) {
    if (auto denied = require("api_key:create", &user.id)) return *denied;
    auto b = body();
    if (!b) return error(400, "Request body must be valid JSON.", b.error().message);
    std::string problem;
    CreateTokenRequest r;
    r.user = user.id;
    r.publicOnly = true;
    r.creator = callerTokenId_;
    r.scopes = stringList(*b, "scopes", problem);
    if (problem.empty()) r.allowList = allowList(*b, problem);
    if (problem.empty()) {
      if (auto scope = stringField(*b, "scope", {}, problem); scope && !scope->empty())
        r.scopes.push_back(*scope);
    }
    if (problem.empty()) {
      auto name = stringField(*b, "token_name", {}, problem);
      if (name && !name->empty()) r.name = *name;
    }
    if (problem.empty()) r.lifetime = lifetimeSeconds(*b, problem);
    if (!problem.empty()) return error(400, "Request body must be valid JSON.", problem);
    if (auto valid = apiTokenLifetime(r.lifetime, hasOwnerRole(user.roles), manager_.config());
        !valid) {
      return error(400, "Failed to validate create API key request.", valid.error().message);
    }
    auto created = manager_.createToken(r, clockNow());
    if (!created) {
      const Error& e = created.error();
      if (e.code == -EEXIST) return conflict(e.message, "name");
      if (e.code == -EINVAL) return error(400, "Failed to create API key.", e.message);
      return fromError(e);
    }
    return createdReply(*created, user);
  }

  Reply createSession(const UserRecord& user) {
    if (auto denied = require("api_key:create", &user.id)) return *denied;
    auto b = body();
    if (!b) return error(400, "Request body must be valid JSON.", b.error().message);
    std::string problem;
    auto field = stringField(*b, "login_type", "password", problem);
    if (!field) return error(400, "Request body must be valid JSON.", problem);
    const std::string& kind = *field;
    auto lt = parseLoginType(kind);
    if (!lt || *lt == LoginType::Token) {
      return error(400,
                   fmt::format("invalid login type \"{}\": want password, oidc or github", kind));
    }
    auto created = manager_.createSession(user.id, *lt, clockNow(), callerTokenId_);
    if (!created) return fromError(created.error());
    return createdReply(*created, user);
  }

  // The key moves into the body (no copy left behind); handle() wipes it after encoding.
  static Reply createdReply(CreatedToken& created, const UserRecord& user) {
    Json j = tokenJson(created.record, user.username);
    j["key"] = std::move(created.key);
    return Reply{201, std::move(j), true};
  }

  Reply listTokens(const UserRecord& user) {
    if (auto denied = require("api_key:read", &user.id)) return *denied;
    auto flag = [&](const char* name) {
      auto v = queryParam(req_.query, name, scratch_);
      return v && (*v == "true" || *v == "1");
    };
    bool all = flag("include_all");
    if (all && !hasOwnerRole(caller_.roles))
      return error(403, "Only owners may list every user's tokens.");
    auto tokens = manager_.tokens(all ? std::nullopt : std::optional<Uuid>(user.id),
                                  flag("include_expired"), clockNow());
    if (!tokens) return fromError(tokens.error());
    std::map<Uuid, std::string> names{{user.id, user.username}};
    if (all) {
      if (auto users = manager_.users()) {
        for (const UserRecord& u : *users) names[u.id] = u.username;
      }
    }
    Json out = Json::array();
    for (const TokenRecord& t : *tokens) out.push_back(tokenJson(t, names[t.userId]));
    return Reply{200, out};
  }

  Reply tokenConfig(const UserRecord& user) {
    if (auto denied = require("api_key:read", &user.id)) return *denied;
    const LifetimeConfig& c = manager_.config();
    int64_t cap = hasOwnerRole(user.roles) ? c.maxAdminTokenLifetime : c.maxTokenLifetime;
    // Coder reports durations in nanoseconds (a Go time.Duration): a setting beyond what one
    // holds (about 292 years) is reported as the longest one.
    auto ns = [](int64_t seconds) {
      constexpr int64_t kNs = 1000000000;
      return seconds > INT64_MAX / kNs ? INT64_MAX : seconds * kNs;
    };
    return Reply{200, Json{{"max_token_lifetime", ns(cap)},
                           {"default_token_lifetime", ns(c.defaultTokenLifetime)}}};
  }

  Reply viewToken(const UserRecord& user, std::string_view ref, bool byId) {
    if (auto denied = require("api_key:read", &user.id)) return *denied;
    if (byId && !isTokenId(ref))
      return error(404, fmt::format("token \"{}\" not found", redactTokenRef(ref)));
    auto t = manager_.findToken(ref, user.id);
    if (!t) return fromError(t.error());
    return Reply{200, tokenJson(*t, user.username)};
  }

  Reply expireToken(const UserRecord& user, std::string_view id) {
    if (auto denied = require("api_key:update", &user.id)) return *denied;
    if (!isTokenId(id))
      return error(404, fmt::format("token \"{}\" not found", redactTokenRef(id)));
    auto t = manager_.expireToken(id, user.id, clockNow());
    if (!t) return fromError(t.error());
    revoked(*t);
    return noContent();
  }

  Reply deleteToken(const UserRecord& user, std::string_view id) {
    if (auto denied = require("api_key:delete", &user.id)) return *denied;
    if (!isTokenId(id))
      return error(404, fmt::format("token \"{}\" not found", redactTokenRef(id)));
    auto t = manager_.deleteToken(id, user.id);
    if (!t) return fromError(t.error());
    revoked(*t);
    return noContent();
  }

  Reply listUsers() {
    if (auto denied = require("user:read")) return *denied;
    auto users = manager_.users();
    if (!users) return fromError(users.error());
    Json out = Json::array();
    for (const UserRecord& u : *users) out.push_back(userJson(u));
    return Reply{200, out};
  }

  Reply viewUser(const UserRecord& user) {
    if (user.id != caller_.id) {
      if (auto denied = require("user:read")) return *denied;
    }
    return Reply{200, userJson(user)};
  }

  Reply createUser() {
    if (auto denied = require("user:create")) return *denied;
    auto b = body();
    if (!b) return error(400, "Request body must be valid JSON.", b.error().message);
    std::string problem;
    auto roles = stringList(*b, "roles", problem);
    if (!problem.empty()) return error(400, "Request body must be valid JSON.", problem);
    if (!hasOwnerRole(caller_.roles) && hasOwnerRole(splitList(roles))) {
      return error(403, "Only owners may grant the owner role.");
    }
    auto username = stringField(*b, "username", std::string(), problem);
    if (!username) return error(400, "Request body must be valid JSON.", problem);
    auto u = manager_.createUser(*username, roles, clockNow());
    if (!u && u.error().code == -EEXIST) return conflict(u.error().message, "username");
    if (!u) return fromError(u.error());
    return Reply{201, userJson(*u)};
  }

  Reply setStatus(const UserRecord& user, bool active) {
    if (auto denied = require("user:update")) return *denied;
    if (auto refused =
            checkUserChange(caller_, user, active ? UserChange::Activate : UserChange::Suspend);
        !refused)
      return fromError(refused.error());
    auto u = manager_.setStatus(user.id.toString(),
                                active ? UserStatus::Active : UserStatus::Suspended, clockNow());
    if (!u) return fromError(u.error());
    changed(*u);
    return Reply{200, userJson(*u)};
  }

  Reply setRoles(const UserRecord& user) {
    if (auto denied = require("user:update")) return *denied;
    auto b = body();
    if (!b) return error(400, "Request body must be valid JSON.", b.error().message);
    std::string problem;
    auto roles = stringList(*b, "roles", problem);
    if (!problem.empty()) return error(400, "Request body must be valid JSON.", problem);
    if (auto refused = checkUserChange(caller_, user, UserChange::SetRoles, roles); !refused)
      return fromError(refused.error());
    auto u = manager_.setRoles(user.id.toString(), roles, clockNow());
    if (!u) return fromError(u.error());
    changed(*u);
    return Reply{200, userJson(*u)};
  }

  Reply deleteUser(const UserRecord& user) {
    if (auto denied = require("user:delete")) return *denied;
    if (auto refused = checkUserChange(caller_, user, UserChange::Delete); !refused)
      return fromError(refused.error());
    auto u = manager_.deleteUser(user.id.toString());
    if (!u) return fromError(u.error());
    changed(*u);
    return Reply{200, userJson(*u)};
  }

  Service& service_;
  Manager& manager_;
  Service::Worker& worker_;
  const HttpRequest& req_;
  DecodeBuffer& scratch_;
  std::string_view token_;
  std::string callerTokenId_;
  UserRecord caller_;
};

}  // namespace

void Management::handle(Service::Worker& worker, const HttpRequest& request, DecodeBuffer& scratch,
                        std::string& out) {
  // nlohmann::json throws (a type mismatch, invalid UTF-8 in dump()). Every body field is
  // type-checked before use; this is the backstop that keeps a missed case from ending the
  // daemon: the client gets a 500 and the daemon logs it once per occurrence.
  std::string body;
  int status = 500;
  bool secret = false;
  try {
    Reply r = Call(service_, manager_, worker, request, scratch).run();
    status = r.status;
    if (!r.body.is_null()) body = r.body.dump(-1, ' ', false, Json::error_handler_t::replace);
    if (r.secret) {
      std::string& key = r.body["key"].get_ref<std::string&>();
      OPENSSL_cleanse(key.data(), key.size());
      secret = true;
    }
  } catch (const std::exception& e) {
    log::error("Failed to answer {} {}: unexpected exception: {}", request.method,
               safePath(request.path), e.what());
    status = 500;
    body = Json{{"message", "Internal error."}, {"detail", "unexpected exception"}}.dump();
  }
  if (status == 204) {
    // No body and, as RFC 9110 asks of a 204, no Content-Length.
    appendStatusLine(out, status);
    out.append(request.keepAlive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
  } else {
    appendJsonResponse(out, status, request.keepAlive, body);
  }
  // A new token's key: the connection's output buffer holds it until sent, this copy need not.
  if (secret) OPENSSL_cleanse(body.data(), body.size());
}

}  // namespace tokend::daemon
