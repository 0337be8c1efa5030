// JSON encoding of users and tokens.
#include "verifier/api_json.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>

namespace tokend::verifier {

std::string formatTime(int64_t s) {
  time_t t = static_cast<time_t>(s);
  tm u{};
  gmtime_r(&t, &u);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", u.tm_year + 1900, u.tm_mon + 1,
                     u.tm_mday, u.tm_hour, u.tm_min, u.tm_sec);
}

nlohmann::json userJson(const UserRecord& u) {
  nlohmann::json roles = nlohmann::json::array({"member"});
  for (const auto& r : u.roles) roles.push_back(r);
  return {{"id", u.id.toString()},
          {"username", u.username},
          {"roles", roles},
          {"status", userStatusName(u.status)},
          {"created_at", formatTime(u.createdAt)},
          {"updated_at", formatTime(u.updatedAt)}};
}

nlohmann::json allowTargetJson(std::string_view entry) {
  size_t colon = entry.find(':');
  std::string_view type = entry.substr(0, colon);
  std::string_view id = colon == std::string_view::npos ? "*" : entry.substr(colon + 1);
  return {{"type", std::string(type)}, {"id", std::string(id)}};
}

nlohmann::json tokenJson(const TokenRecord& t, const std::string& username) {
  nlohmann::json allow = nlohmann::json::array();
  for (const std::string& e : t.allowList) allow.push_back(allowTargetJson(e));
  // Coder's legacy scope, derived as coderd's convertAPIKey does.
  auto has = [&](const char* s) {
    return std::find(t.scopes.begin(), t.scopes.end(), s) != t.scopes.end();
  };
  const char* legacy = has("coder:application_connect") ? "application_connect"
                       : has("coder:all")               ? "all"
                                                        : "";
  nlohmann::json j = {{"id", t.id},
                      {"user_id", t.userId.toString()},
                      {"token_name", t.name},
                      {"login_type", loginTypeName(t.loginType)},
                      {"scope", legacy},
                      {"scopes", t.scopes},
                      {"allow_list", allow},
                      {"created_at", formatTime(t.createdAt)},
                      {"updated_at", formatTime(t.updatedAt)},
                      {"expires_at", formatTime(t.expiresAt)},
                      {"last_used", formatTime(t.lastUsed)},
                      {"lifetime_seconds", t.lifetimeSeconds}};
  if (!username.empty()) j["username"] = username;
  return j;
}

}  // namespace tokend::verifier
