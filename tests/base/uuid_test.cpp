// Tests for UUID parsing, formatting and generation.
#include "base/uuid.h"

#include <doctest/doctest.h>

using tokend::Uuid;

TEST_SUITE("Uuid") {
  TEST_CASE("round-trips the canonical form and lowercases") {
    auto u = Uuid::parse("3F2504E0-4F89-41D3-9A0C-0305E82C3301");
    REQUIRE(u);
    CHECK(u->toString() == "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
  }

  TEST_CASE("refuses anything but 8-4-4-4-12 hex") {
    for (const char* bad : {"", "3f2504e0-4f89-41d3-9a0c-0305e82c330", "3f2504e04f8941d39a0c0305e82c3301",
                            "3f2504e0-4f89-41d3-9a0c-0305e82c330g", "3f2504e0_4f89-41d3-9a0c-0305e82c3301",
                            "3f2504e0-4f89-41d3-9a0c-0305e82c33011"}) {
      CAPTURE(bad);
      CHECK_FALSE(Uuid::parse(bad));
    }
  }

  TEST_CASE("random UUIDs are version 4, variant 1 and distinct") {
    Uuid a = Uuid::random(), b = Uuid::random();
    CHECK(a != b);
    std::string s = a.toString();
    CHECK(s[14] == '4');
    CHECK((s[19] == '8' || s[19] == '9' || s[19] == 'a' || s[19] == 'b'));
    CHECK(Uuid::parse(s) == a);
  }
}
