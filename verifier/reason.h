// Reason: the verdict codes of SPEC 6, their names and HTTP statuses. The numeric values are part
// of the binary protocol (docs/protocol.md) and of the shared-memory format: never renumber.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace tokend::verifier {

enum class Reason : uint8_t {
  Ok = 0,
  Missing = 1,
  Malformed = 2,
  Unknown = 3,
  BadSecret = 4,
  Expired = 5,
  UserInactive = 6,
  Scope = 7,
  AllowList = 8,
  Role = 9,
  BadRequest = 10,
  Unavailable = 11,  // a replica past --max-staleness (SPEC 11): no answer can be trusted
};
inline constexpr int kReasonCount = 12;

constexpr std::string_view reasonName(Reason r) {
  constexpr std::string_view kNames[] = {"ok",         "missing", "malformed",     "unknown",
                                         "bad_secret", "expired", "user_inactive", "scope",
                                         "allow_list", "role",    "bad_request",   "unavailable"};
  auto i = static_cast<unsigned>(r);
  return i < kReasonCount ? kNames[i] : std::string_view("unknown");
}

constexpr int httpStatus(Reason r) {
  switch (r) {
    case Reason::Ok:
      return 200;
    case Reason::Scope:
    case Reason::AllowList:
    case Reason::Role:
      return 403;
    case Reason::BadRequest:
      return 400;
    case Reason::Unavailable:
      return 503;
    default:
      return 401;
  }
}

constexpr std::optional<Reason> parseReason(std::string_view name) {
  for (int i = 0; i < kReasonCount; ++i)
    if (reasonName(static_cast<Reason>(i)) == name) return static_cast<Reason>(i);
  return std::nullopt;
}

}  // namespace tokend::verifier
