// The process clock: wall time plus an offset that tests set through the environment.
#include "base/clock.h"

#include <cstdlib>

namespace tokend {
namespace {
int64_t readOffset() {
  const char* v = std::getenv("TOKEND_CLOCK_OFFSET");
  return v ? std::strtoll(v, nullptr, 10) : 0;
}
const int64_t kOffset = readOffset();
}  // namespace

int64_t clockNow() { return unixNow() + kOffset; }

}  // namespace tokend
