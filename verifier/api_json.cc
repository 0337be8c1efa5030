// JSON encoding of users and tokens.
#include "verifier/api_json.h"

#include <fmt/format.h>

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

nlohmann::json tokenJson(const TokenRecord& t, const std::string& username) {
  nlohmann::json j = {{"id", t.id},
                      {"user_id", t.userId.toString()},
                      {"token_name", t.name},
                      {"login_type", loginTypeName(t.loginType)},
                      {"scopes", t.scopes},
                      {"allow_list", t.allowList},
                      {"created_at", formatTime(t.createdAt)},
                      {"updated_at", formatTime(t.updatedAt)},
                      {"expires_at", formatTime(t.expiresAt)},
                      {"last_used", formatTime(t.lastUsed)},
                      {"lifetime_seconds", t.lifetimeSeconds}};
  if (!username.empty()) j["username"] = username;
  return j;
}

}  // namespace tokend::verifier
