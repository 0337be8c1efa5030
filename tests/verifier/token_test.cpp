// Tests for the token format: minting, parsing, hashing and comparison.
#include "verifier/token.h"

#include <doctest/doctest.h>

#include <map>
#include <set>

using namespace tokend::verifier;

TEST_SUITE("Token") {
  TEST_CASE("minted tokens are 10-hyphen-22 alphanumerics and parse back") {
    std::set<std::string> seen;
    for (int i = 0; i < 1000; ++i) {
      NewToken t = mintToken();
      std::string text = t.text();
      CHECK(text.size() == 33);
      auto p = parseToken(text);
      REQUIRE(p);
      CHECK(p->id == t.id);
      CHECK(p->secret == t.secret);
      seen.insert(t.id);
    }
    CHECK(seen.size() == 1000);
  }

  TEST_CASE("random characters cover the whole alphabet without a visible bias") {
    std::map<char, int> counts;
    std::string s = randomAlnum(62 * 2000);
    for (char c : s) counts[c]++;
    CHECK(counts.size() == 62);
    for (auto [c, n] : counts) {
      CAPTURE(c);
      // Expected 2000 each; 6 sigma is about 270.
      CHECK(n > 1700);
      CHECK(n < 2300);
    }
  }

  TEST_CASE("parsing refuses every other shape as malformed") {
    const char* good = "ABCDEFGHIJ-0123456789abcdefghijkl";
    CHECK(parseToken(good));
    for (const char* bad : {
             "",
             "ABCDEFGHIJ0123456789abcdefghijkl",      // no hyphen
             "ABCDEFGHI-0123456789abcdefghijklm",     // id of 9
             "ABCDEFGHIJK-0123456789abcdefghijk",     // id of 11
             "ABCDEFGHIJ-0123456789abcdefghijk",      // secret of 21
             "ABCDEFGHIJ-0123456789abcdefghijklm",    // secret of 23
             "ABCDEFGHIJ-0123456789abcdefghij-l",     // two hyphens
             "ABCDEFGH J-0123456789abcdefghijkl",     // a space
             "ABCDEFGHIJ-0123456789abcdefghijk\xc3",  // a non-ASCII byte
         }) {
      CAPTURE(bad);
      CHECK_FALSE(parseToken(bad));
    }
  }

  TEST_CASE("SHA-256 through the reused context matches the known answer, repeatedly") {
    Sha256 sha;
    for (int i = 0; i < 3; ++i) {
      Digest d = sha.digest("abc");
      const uint8_t want[4] = {0xba, 0x78, 0x16, 0xbf};
      CHECK(std::equal(want, want + 4, d.begin()));
      CHECK(d[31] == 0xad);
    }
  }

  TEST_CASE("digests compare equal only when every byte matches") {
    Sha256 sha;
    Digest a = sha.digest("one"), b = sha.digest("one"), c = sha.digest("two");
    CHECK(digestEquals(a.data(), b.data()));
    CHECK_FALSE(digestEquals(a.data(), c.data()));
    b[31] ^= 1;
    CHECK_FALSE(digestEquals(a.data(), b.data()));
  }
}
