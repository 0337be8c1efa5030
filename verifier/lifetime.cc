// Lifetime rules.
#include "verifier/lifetime.h"

#include <fmt/format.h>

#include <cstdlib>

#include "base/duration.h"

namespace tokend::verifier {
namespace {

// The first of `names` set in the environment.
const char* envValue(std::initializer_list<const char*> names, const char** which) {
  for (const char* n : names) {
    if (const char* v = std::getenv(n)) {
      *which = n;
      return v;
    }
  }
  return nullptr;
}

Result<void> readDuration(std::initializer_list<const char*> names, int64_t& out) {
  const char* which = nullptr;
  const char* v = envValue(names, &which);
  if (v == nullptr) return {};
  auto d = parseDuration(v);
  if (!d) return makeError(fmt::format("{}: {}", which, d.error().message));
  out = *d;
  return {};
}

}  // namespace

Result<LifetimeConfig> lifetimeConfigFromEnv() {
  LifetimeConfig c;
  struct Setting {
    const char* name;
    const char* alias;
    int64_t* field;
  };
  const Setting settings[] = {
      {"TOKEND_SESSION_DURATION", "CODER_SESSION_DURATION", &c.sessionDuration},
      {"TOKEND_DEFAULT_TOKEN_LIFETIME", "CODER_DEFAULT_TOKEN_LIFETIME", &c.defaultTokenLifetime},
      {"TOKEND_MAX_TOKEN_LIFETIME", "CODER_MAX_TOKEN_LIFETIME", &c.maxTokenLifetime},
      {"TOKEND_MAX_ADMIN_TOKEN_LIFETIME", "CODER_MAX_ADMIN_TOKEN_LIFETIME",
       &c.maxAdminTokenLifetime},
  };
  for (const Setting& s : settings) {
    if (auto r = readDuration({s.name, s.alias}, *s.field); !r) return r.error();
  }
  const char* which = nullptr;
  if (const char* v = envValue(
          {"TOKEND_DISABLE_SESSION_EXPIRY_REFRESH", "CODER_DISABLE_SESSION_EXPIRY_REFRESH"},
          &which)) {
    std::string s(v);
    if (s == "1" || s == "true" || s == "yes") {
      c.refreshEnabled = false;
    } else if (s == "0" || s == "false" || s == "no" || s.empty()) {
      c.refreshEnabled = true;
    } else {
      return makeError(fmt::format("{}: want true or false, got \"{}\"", which, s));
    }
  }
  return c;
}

Result<int64_t> apiTokenLifetime(std::optional<int64_t> requested, bool userIsOwner,
                                 const LifetimeConfig& config) {
  int64_t lifetime = requested.value_or(config.defaultTokenLifetime);
  if (lifetime <= 0) return makeError("lifetime must be positive");
  int64_t cap = userIsOwner ? config.maxAdminTokenLifetime : config.maxTokenLifetime;
  if (lifetime > cap) {
    return makeError(fmt::format(
        "lifetime must be less than or equal to {} ({}, the maximum token lifetime{})",
        formatDuration(cap), userIsOwner ? "--max-admin-token-lifetime" : "--max-token-lifetime",
        userIsOwner ? " for owners" : ""));
  }
  return lifetime;
}

UsageUpdate usageUpdate(LoginType kind, int64_t expiresAt, int64_t lifetimeSeconds,
                        int64_t lastUsed, int64_t now, const LifetimeConfig& config) {
  UsageUpdate u;
  u.lastUsed = now - lastUsed > kHour;
  if (kind != LoginType::Token && config.refreshEnabled &&
      expiresAt - now <= lifetimeSeconds - kHour) {
    u.refresh = true;
    u.newExpiresAt = now + lifetimeSeconds;
  }
  return u;
}

}  // namespace tokend::verifier
