// Fast-path helpers: a cheap wall clock that is exact to the second, token syntax by table, and
// a memo of the last user id's text. Each gives exactly what the verifier's own function gives
// (tests/client/fast_test.cpp checks them against it); they exist because on a cache hit the
// clock, the token scan and the UUID text cost as much together as everything else but SHA-256.
#pragma once

#include <time.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "base/clock.h"
#include "base/uuid.h"
#include "verifier/records.h"
#include "verifier/token.h"

namespace tokend::client {

// The wall clock to the second, mostly from CLOCK_REALTIME_COARSE (a plain read of the last
// tick's time, ~5 ns, against ~25 ns for CLOCK_REALTIME). The coarse clock lags real time by less
// than a tick, so its seconds are exact except in the last moments of a second, where the real
// clock may already have moved on: there, and only there, read the precise clock. Expiry is
// decided in whole seconds, so the verdicts are the daemon's to the second.
//
// Never clockNow(): libtokend runs inside gateways, where an inherited TOKEND_CLOCK_OFFSET must
// not make an expired entry look valid. The fast path therefore always judges by the wall clock;
// a test-build daemon whose clock is moved does not hand its segment out (daemon/session.cc), so
// the two clocks never judge one entry.
class SecondsClock {
 public:
  SecondsClock() {
    timespec res{};
    if (clock_getres(CLOCK_REALTIME_COARSE, &res) != 0 || res.tv_sec != 0) {
      margin_ = kNanosPerSecond;  // no usable coarse clock: always precise
    } else {
      // Two ticks and a millisecond: a tick may run late on a loaded machine.
      margin_ = 2 * res.tv_nsec + 1000000;
    }
  }

  int64_t now() const {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    if (ts.tv_nsec < kNanosPerSecond - margin_) return ts.tv_sec;
    return unixNow();
  }

 private:
  static constexpr long kNanosPerSecond = 1000000000;
  long margin_ = kNanosPerSecond;
};

namespace detail {

inline constexpr auto kAlnum = [] {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  return t;
}();

#if defined(__SSE2__)
// One bit per byte of p[0..16): set when the byte is in [0-9A-Za-z].
inline unsigned alnumMask16(const char* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  // x in [lo, hi] <=> (x - lo) <= (hi - lo) as unsigned bytes <=> min(x - lo, hi - lo) == x - lo.
  auto in = [&](char lo, char hi) {
    const __m128i d = _mm_sub_epi8(v, _mm_set1_epi8(lo));
    return _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(static_cast<char>(hi - lo))), d);
  };
  const __m128i ok = _mm_or_si128(_mm_or_si128(in('0', '9'), in('A', 'Z')), in('a', 'z'));
  return static_cast<unsigned>(_mm_movemask_epi8(ok));
}
#endif

}  // namespace detail

// verifier::parseToken, faster: "<10 of [0-9A-Za-z]>-<22 of [0-9A-Za-z]>", nothing else.
inline std::optional<verifier::ParsedToken> parseTokenFast(std::string_view text) {
  static_assert(verifier::kTokenLength == 33 && verifier::kTokenIdLength == 10);
  if (text.size() != verifier::kTokenLength || text[verifier::kTokenIdLength] != '-') {
    return std::nullopt;
  }
  const char* p = text.data();
#if defined(__SSE2__)
  // Bytes 0-15 (the hyphen's bit forced on: it was checked above), 16-31, then byte 32.
  const bool ok = (detail::alnumMask16(p) | (1u << verifier::kTokenIdLength)) == 0xFFFF &&
                  detail::alnumMask16(p + 16) == 0xFFFF &&
                  detail::kAlnum[static_cast<unsigned char>(p[32])];
#else
  bool ok = true;
  for (size_t i = 0; i < text.size(); ++i) {
    ok &= i == verifier::kTokenIdLength || detail::kAlnum[static_cast<unsigned char>(p[i])];
  }
#endif
  if (!ok) return std::nullopt;
  return verifier::ParsedToken{text.substr(0, verifier::kTokenIdLength),
                               text.substr(verifier::kTokenIdLength + 1)};
}

// The canonical text of the last user id formatted: a gateway sees the same users again and again.
class UuidText {
 public:
  // Writes the 36 characters and a NUL to out[37].
  void format(const uint8_t* id, char* out) {
    if (!valid_ || std::memcmp(id, id_.bytes.data(), id_.bytes.size()) != 0) {
      std::memcpy(id_.bytes.data(), id, id_.bytes.size());
      id_.format(text_);
      text_[36] = '\0';
      valid_ = true;
    }
    std::memcpy(out, text_, sizeof text_);
  }

 private:
  Uuid id_;
  char text_[37] = {};
  bool valid_ = false;
};

}  // namespace tokend::client
