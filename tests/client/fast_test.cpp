// The fast path's helpers give exactly what the verifier's own functions give.
#include "client/fast.h"

#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "base/clock.h"
#include "verifier/token.h"

using namespace tokend;

namespace {

void sameAsVerifier(const std::string& s) {
  const auto a = client::parseTokenFast(s);
  const auto b = verifier::parseToken(s);
  INFO("token text: ", s);
  REQUIRE(a.has_value() == b.has_value());
  if (a) {
    CHECK(a->id == b->id);
    CHECK(a->secret == b->secret);
  }
}

}  // namespace

TEST_SUITE("ClientFast") {
  TEST_CASE("token syntax by table agrees with verifier::parseToken on every byte at every place") {
    const std::string good = "a1B2c3D4e5-Xq9Zr8Ys7Wt6Vu5Ts4Rq3P";
    sameAsVerifier(good);
    for (size_t pos = 0; pos < good.size(); ++pos) {
      for (int c = 0; c < 256; ++c) {
        std::string s = good;
        s[pos] = static_cast<char>(c);
        sameAsVerifier(s);
      }
    }
    for (const std::string& s : std::vector<std::string>{
             "", "-", "a1B2c3D4e5-", good + "x", good.substr(1),
             "a1B2c3D4e5Xq9Zr8Ys7Wt6Vu5Ts4Rq3P-", std::string(33, '-'), std::string(33, 'a')}) {
      sameAsVerifier(s);
    }
    std::mt19937 rng(1);
    const std::string alphabet = "09AZaz-_/:@[`{ \x7f\x80\xff";
    for (int n = 0; n < 20000; ++n) {
      std::string s = good;
      for (int k = 0; k < 3; ++k) s[rng() % s.size()] = alphabet[rng() % alphabet.size()];
      sameAsVerifier(s);
    }
  }

  TEST_CASE("the seconds clock reads the wall clock, to the second") {
    client::SecondsClock clock;
    for (int i = 0; i < 200000; ++i) {
      const int64_t before = unixNow();
      const int64_t mine = clock.now();
      const int64_t after = unixNow();
      REQUIRE(before <= mine);
      REQUIRE(mine <= after);
    }
  }

  TEST_CASE("the user id text is the canonical form, remembered only for the same id") {
    client::UuidText text;
    auto a = Uuid::parse("3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    auto b = Uuid::parse("6f1c2b0e-9a4d-4f3b-8a51-1f0e2d3c4b5a");
    char out[37];
    text.format(a->bytes.data(), out);
    CHECK(std::string(out) == "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    text.format(b->bytes.data(), out);
    CHECK(std::string(out) == "6f1c2b0e-9a4d-4f3b-8a51-1f0e2d3c4b5a");
    text.format(b->bytes.data(), out);
    CHECK(std::string(out) == "6f1c2b0e-9a4d-4f3b-8a51-1f0e2d3c4b5a");
    text.format(a->bytes.data(), out);
    CHECK(std::string(out) == "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
  }
}
