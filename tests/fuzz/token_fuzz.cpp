// libFuzzer target: the token parser (SPEC 2: "<10 alnum>-<22 alnum>", else `malformed`).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tests/fuzz/fuzz_support.h"
#include "verifier/token.h"

using namespace tokend::verifier;
using tokend::fuzz::require;

namespace {

bool alnum(char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// The SPEC's rule, written out again as plainly as possible, for a differential check.
bool wellFormed(std::string_view s) {
  if (s.size() != kTokenLength) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == kTokenIdLength) {
      if (s[i] != '-') return false;
    } else if (!alnum(s[i])) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto t = parseToken(in);
  require(t.has_value() == wellFormed(in));
  if (t) {
    require(t->id.data() == in.data() && t->id.size() == kTokenIdLength);
    require(t->secret.data() == in.data() + kTokenIdLength + 1 &&
            t->secret.size() == kSecretLength);
    require(isTokenId(t->id));
  }
  require(isTokenId(in) == (in.size() == kTokenIdLength &&
                            wellFormed(std::string(in) + "-" + std::string(kSecretLength, 'a'))));
  // Hashing takes any bytes; equal inputs give equal digests, compared in constant time.
  static Sha256 sha;
  Digest a = sha.digest(in), b = sha.digest(in);
  require(digestEquals(a.data(), b.data()));
  return 0;
}
