// The JSON shapes of users, tokens and verdicts, shared by tokenctl and the management API
// (field names follow Coder's REST API: token_name, login_type, lifetime_seconds, ...).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "verifier/records.h"

namespace tokend::verifier {

// RFC 3339 in UTC, "2026-11-27T20:45:56Z".
std::string formatTime(int64_t unixSeconds);

nlohmann::json userJson(const UserRecord& u);
// codersdk.APIKey: allow_list entries as Coder writes them, {"type": "workspace", "id": "<uuid>"}
// ("*" for wildcards); `scope` is Coder's deprecated single scope ("all", "application_connect"
// or ""). `username` is added as "username" when not empty (codersdk.APIKeyWithOwner).
nlohmann::json tokenJson(const TokenRecord& t, const std::string& username = {});
// One allow list entry "type:id" as Coder's object {"type", "id"}.
nlohmann::json allowTargetJson(std::string_view entry);

}  // namespace tokend::verifier
