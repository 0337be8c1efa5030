// The process clock: wall time, plus an offset that tests set through the environment in builds
// configured with -Dtest_clock=true (meson_options.txt). Without that option the variable is not
// even read: an inherited TOKEND_CLOCK_OFFSET cannot move a release tokend's or tokenctl's clock.
// libtokend never calls clockNow() (client/fast.h reads the wall clock), so this object is not
// linked into it in any build (tests/base/clock_test.cpp checks both).
#include "base/clock.h"

#include <cstdlib>

namespace tokend {
namespace {
#ifdef TOKEND_TEST_CLOCK
int64_t readOffset() {
  const char* v = std::getenv("TOKEND_CLOCK_OFFSET");
  return v ? std::strtoll(v, nullptr, 10) : 0;
}
const int64_t kOffset = readOffset();
#else
constexpr int64_t kOffset = 0;
#endif
}  // namespace

int64_t clockNow() {
  return unixNow() + kOffset;
}

int64_t clockOffset() {
  return kOffset;
}

bool testClockCompiledIn() {
#ifdef TOKEND_TEST_CLOCK
  return true;
#else
  return false;
#endif
}

}  // namespace tokend
