// Row mapping: Coder's columns to UserRecord and TokenRecord.
#include "replica/rows.h"

#include <nlohmann/json.hpp>

#include "base/uuid.h"
#include "verifier/allow_list.h"
#include "verifier/catalog.h"
#include "verifier/scopes.h"
#include "verifier/token.h"

namespace tokend::replica {

using namespace tokend::verifier;

namespace {

// A JSON array of strings (array_to_json of a text[]); nullopt when it is anything else.
std::optional<std::vector<std::string>> stringArray(const std::string& json) {
  auto j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) return std::nullopt;
  std::vector<std::string> out;
  for (const auto& v : j) {
    if (!v.is_string()) return std::nullopt;
    out.push_back(v.get<std::string>());
  }
  return out;
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

int64_t secondsFloor(int64_t us) {
  int64_t s = us / 1000000;
  if (us % 1000000 < 0) --s;
  return s;
}

int64_t expirySeconds(int64_t us) {
  int64_t s = secondsFloor(us);
  return us % 1000000 != 0 ? s - 1 : s;
}

Mapped<UserRecord> mapUser(const PgUserRow& row) {
  Mapped<UserRecord> m;
  if (row.deleted) return m;  // a soft-deleted user grants nothing: held as absent
  auto id = Uuid::parse(row.id);
  if (!id) {
    m.refused = "user id is not a UUID";
    return m;
  }
  UserRecord u;
  u.id = *id;
  u.username = row.username;
  if (row.status == "active" || row.status == "dormant") {
    // Coder activates a dormant user on their next request and lets it through (coder_pg.md §4).
    u.status = UserStatus::Active;
  } else if (row.status == "suspended") {
    u.status = UserStatus::Suspended;
  } else {
    m.refused = "unknown user status \"" + row.status + "\"";
    return m;
  }
  auto roles = stringArray(row.rolesJson);
  if (!roles) {
    m.refused = "rbac_roles is not a text array";
    return m;
  }
  // Site roles; names the catalog does not know grant nothing and are left out (noted once).
  for (const std::string& r : *roles) {
    std::vector<std::string> one{r};
    if (r == "member") continue;
    if (auto n = normalizeRoles(one); n) {
      u.roles.insert(u.roles.end(), n->begin(), n->end());
    } else {
      m.dropped += (m.dropped.empty() ? "" : ", ") + r;
    }
  }
  std::sort(u.roles.begin(), u.roles.end());
  u.roles.erase(std::unique(u.roles.begin(), u.roles.end()), u.roles.end());
  u.createdAt = secondsFloor(row.createdUs);
  u.updatedAt = secondsFloor(row.updatedUs);
  if (auto c = checkEncodable(u); !c) {
    m.refused = c.error().message;
    return m;
  }
  m.record = std::move(u);
  return m;
}

Mapped<TokenRecord> mapToken(const PgTokenRow& row) {
  Mapped<TokenRecord> m;
  if (!isTokenId(row.id)) {
    m.refused = "token id is not 10 characters of [0-9A-Za-z]";
    return m;
  }
  TokenRecord t;
  t.id = row.id;
  if (row.hashHex.size() != 2 * t.secretHash.size()) {
    m.refused =
        "hashed_secret is " + std::to_string(row.hashHex.size() / 2) + " bytes, not 32 (SHA-256)";
    return m;
  }
  for (size_t i = 0; i < t.secretHash.size(); ++i) {
    int hi = hexDigit(row.hashHex[2 * i]), lo = hexDigit(row.hashHex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      m.refused = "hashed_secret is not hex";
      return m;
    }
    t.secretHash[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  auto user = Uuid::parse(row.userId);
  if (!user) {
    m.refused = "user_id is not a UUID";
    return m;
  }
  t.userId = *user;
  auto kind = parseLoginType(row.loginType);
  if (!kind) {
    m.refused = "unknown login type \"" + row.loginType + "\"";
    return m;
  }
  t.loginType = *kind;
  t.name = row.name;
  auto scopes = stringArray(row.scopesJson);
  if (!scopes || scopes->empty()) {
    // No scope means coder:all only when a token is created; a stored empty list is no grant.
    m.refused = "scopes is empty or not an array";
    return m;
  }
  auto normalized = normalizeScopes(*scopes, /*publicOnly=*/false);
  if (!normalized) {
    m.refused = normalized.error().message;
    return m;
  }
  t.scopes = std::move(*normalized);
  auto allow = stringArray(row.allowJson);
  if (!allow || allow->empty()) {
    m.refused = "allow_list is empty or not an array";
    return m;
  }
  // Each entry on its own: normalizeAllowList splits values on commas, and a stored entry with a
  // comma is one unknown entry, not two known ones.
  for (const std::string& e : *allow) {
    if (e.find(',') != std::string::npos || !parseAllowEntry(e)) {
      m.refused = "unknown allow-list entry \"" + e + "\"";
      return m;
    }
  }
  auto list = normalizeAllowList(*allow);
  if (!list) {
    m.refused = list.error().message;
    return m;
  }
  t.allowList = allowListStrings(*list);
  t.createdAt = secondsFloor(row.createdUs);
  t.expiresAt = expirySeconds(row.expiresUs);
  t.lifetimeSeconds = row.lifetimeSeconds;
  t.lastUsed = secondsFloor(row.lastUsedUs);
  t.updatedAt = secondsFloor(row.updatedUs);
  if (auto c = checkEncodable(t); !c) {
    m.refused = c.error().message;
    return m;
  }
  m.record = std::move(t);
  return m;
}

}  // namespace tokend::replica
