// Lifetimes: token lifetime caps, the sliding session refresh and last_used, as pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "base/result.h"
#include "verifier/records.h"

namespace tokend::verifier {

inline constexpr int64_t kHour = 3600;

struct LifetimeConfig {
  int64_t sessionDuration = 24 * kHour;
  bool refreshEnabled = true;
  int64_t defaultTokenLifetime = 168 * kHour;
  int64_t maxTokenLifetime = 876600 * kHour;
  int64_t maxAdminTokenLifetime = 168 * kHour;
};

// Reads TOKEND_* (and the CODER_* aliases) from the environment over the defaults.
// Refuses unparsable values with a message naming the variable.
Result<LifetimeConfig> lifetimeConfigFromEnv();

// The lifetime of a new API token: `requested` or the default; refused when <= 0
// ("lifetime must be positive") or above the cap for its user (the admin cap when the user holds
// `owner`), with a message naming the cap. Equal to the cap is accepted.
Result<int64_t> apiTokenLifetime(std::optional<int64_t> requested, bool userIsOwner,
                                 const LifetimeConfig& config);

// What a successful verification at `now` should write back.
struct UsageUpdate {
  bool lastUsed = false;  // last_used becomes now
  bool refresh = false;   // expires_at becomes newExpiresAt
  int64_t newExpiresAt = 0;
  bool any() const { return lastUsed || refresh; }
};

// last_used: when now - last_used > 1h. Sliding refresh (session kinds only, refresh enabled):
// when expires_at - now <= lifetime - 1h, expires_at becomes now + lifetime.
UsageUpdate usageUpdate(LoginType kind, int64_t expiresAt, int64_t lifetimeSeconds,
                        int64_t lastUsed, int64_t now, const LifetimeConfig& config);

// expires_at < now; a token whose expiry equals now is still valid.
constexpr bool isExpired(int64_t expiresAt, int64_t now) {
  return expiresAt < now;
}

}  // namespace tokend::verifier
