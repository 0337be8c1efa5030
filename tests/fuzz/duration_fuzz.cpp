// libFuzzer target: Go-style durations (--lifetime, --session-duration, the Coder env aliases).
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "base/duration.h"
#include "tests/fuzz/fuzz_support.h"

using tokend::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto d = tokend::parseDuration(in);
  if (!d) {
    // Refusals name the input (so an operator sees what was wrong) and never come out empty.
    require(!d.error().message.empty());
    return 0;
  }
  // Parsing bounds the value well away from overflow, so formatting and negating are safe.
  require(*d > std::numeric_limits<int64_t>::min() / 2 &&
          *d < std::numeric_limits<int64_t>::max() / 2);
  // What formatDuration writes parses back to the same number of seconds.
  std::string text = tokend::formatDuration(*d);
  auto again = tokend::parseDuration(text);
  require(again.has_value() && *again == *d);
  return 0;
}
