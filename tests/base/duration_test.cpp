// Tests for Go-style duration parsing and formatting.
#include "base/duration.h"

#include <doctest/doctest.h>

using tokend::formatDuration;
using tokend::parseDuration;

TEST_SUITE("Duration") {
  TEST_CASE("parses each unit and combinations") {
    CHECK(*parseDuration("90s") == 90);
    CHECK(*parseDuration("15m") == 900);
    CHECK(*parseDuration("24h") == 86400);
    CHECK(*parseDuration("1h30m") == 5400);
    CHECK(*parseDuration("30d") == 30 * 86400);
    CHECK(*parseDuration("1y") == 365 * 86400);
    CHECK(*parseDuration("876600h") == 876600LL * 3600);
    CHECK(*parseDuration("1.5h") == 5400);
    CHECK(*parseDuration("1500ms") == 1);
    CHECK(*parseDuration("0") == 0);
    CHECK(*parseDuration("-5m") == -300);
    CHECK(*parseDuration("1h0m0s") == 3600);
  }

  TEST_CASE("refuses bad input with a message naming it") {
    for (const char* bad : {"", "h", "10", "10x", "1h30", "--1h", "1.h5", "abc", "5 m", "1e3s",
                            "99999999999999999999y"}) {
      auto r = parseDuration(bad);
      CAPTURE(bad);
      REQUIRE_FALSE(r.has_value());
      CHECK(r.error().message.find(std::string("\"") + bad + "\"") != std::string::npos);
    }
  }

  TEST_CASE("formats compactly") {
    CHECK(formatDuration(0) == "0s");
    CHECK(formatDuration(5400) == "1h30m");
    CHECK(formatDuration(168 * 3600) == "168h");
    CHECK(formatDuration(61) == "1m1s");
    CHECK(formatDuration(-60) == "-1m");
  }
}
