// Tests for lifetime caps, the sliding refresh and last_used rules.
#include "verifier/lifetime.h"

#include <doctest/doctest.h>

#include <cstdlib>

using namespace tokend::verifier;

TEST_SUITE("Lifetime") {
  TEST_CASE("defaults are those of the SPEC") {
    LifetimeConfig c;
    CHECK(c.sessionDuration == 24 * 3600);
    CHECK(c.defaultTokenLifetime == 168 * 3600);
    CHECK(c.maxTokenLifetime == 876600LL * 3600);
    CHECK(c.maxAdminTokenLifetime == 168 * 3600);
    CHECK(c.refreshEnabled);
  }

  TEST_CASE("a lifetime equal to the cap is accepted, one second more is refused") {
    LifetimeConfig c;
    CHECK(*apiTokenLifetime(c.maxTokenLifetime, false, c) == c.maxTokenLifetime);
    auto over = apiTokenLifetime(c.maxTokenLifetime + 1, false, c);
    REQUIRE_FALSE(over);
    CHECK(over.error().message.find("876600h") != std::string::npos);

    CHECK(*apiTokenLifetime(c.maxAdminTokenLifetime, true, c) == c.maxAdminTokenLifetime);
    auto adminOver = apiTokenLifetime(c.maxAdminTokenLifetime + 1, true, c);
    REQUIRE_FALSE(adminOver);
    CHECK(adminOver.error().message.find("168h") != std::string::npos);
  }

  TEST_CASE("no lifetime means the default; zero or negative is refused") {
    LifetimeConfig c;
    CHECK(*apiTokenLifetime(std::nullopt, false, c) == 168 * 3600);
    CHECK(apiTokenLifetime(0, false, c).error().message == "lifetime must be positive");
    CHECK(apiTokenLifetime(-5, true, c).error().message == "lifetime must be positive");
  }

  TEST_CASE("expiry: equal to now is still valid") {
    CHECK_FALSE(isExpired(100, 100));
    CHECK(isExpired(99, 100));
  }

  TEST_CASE("sliding refresh: sessions only, at lifetime - 1h remaining, and only when enabled") {
    LifetimeConfig c;
    const int64_t life = 24 * 3600, now = 1'000'000;
    // Just created: 24h left, more than 23h: no refresh.
    CHECK_FALSE(usageUpdate(LoginType::Password, now + life, life, now, now, c).refresh);
    // 23h left: refresh to now + 24h.
    UsageUpdate u = usageUpdate(LoginType::Oidc, now + life - 3600, life, now, now, c);
    CHECK(u.refresh);
    CHECK(u.newExpiresAt == now + life);
    // API tokens never slide.
    CHECK_FALSE(usageUpdate(LoginType::Token, now + 60, life, now, now, c).refresh);
    c.refreshEnabled = false;
    CHECK_FALSE(usageUpdate(LoginType::Github, now + 60, life, now, now, c).refresh);
  }

  TEST_CASE("last_used moves only after more than an hour") {
    LifetimeConfig c;
    CHECK(usageUpdate(LoginType::Token, 0, 0, 0, 1'000'000, c).lastUsed);  // from the epoch
    CHECK_FALSE(usageUpdate(LoginType::Token, 0, 0, 1000, 1000 + 3600, c).lastUsed);
    CHECK(usageUpdate(LoginType::Token, 0, 0, 1000, 1000 + 3601, c).lastUsed);
  }

  TEST_CASE("the environment overrides defaults, Coder names accepted, bad values named") {
    setenv("CODER_SESSION_DURATION", "2h", 1);
    setenv("TOKEND_MAX_TOKEN_LIFETIME", "30d", 1);
    setenv("TOKEND_DISABLE_SESSION_EXPIRY_REFRESH", "true", 1);
    auto c = lifetimeConfigFromEnv();
    REQUIRE(c);
    CHECK(c->sessionDuration == 7200);
    CHECK(c->maxTokenLifetime == 30 * 86400);
    CHECK_FALSE(c->refreshEnabled);
    setenv("TOKEND_SESSION_DURATION", "soon", 1);
    auto bad = lifetimeConfigFromEnv();
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("TOKEND_SESSION_DURATION") == 0);
    unsetenv("TOKEND_SESSION_DURATION");
    unsetenv("CODER_SESSION_DURATION");
    unsetenv("TOKEND_MAX_TOKEN_LIFETIME");
    unsetenv("TOKEND_DISABLE_SESSION_EXPIRY_REFRESH");
  }
}
