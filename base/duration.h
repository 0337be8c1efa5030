// Durations: Go-style text ("90s", "1h30m", "30d", "1y") to whole seconds and back.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace tokend {

// Parses a sequence of <number><unit> with units ns, us, ms, s, m, h, d (24h), y (365d).
// Fractions are allowed ("1.5h"). A leading '-' makes it negative; "0" alone is zero.
// The result is rounded down to whole seconds. Refuses empty input, a number without a unit,
// an unknown unit and overflow, with a message naming the input.
Result<int64_t> parseDuration(std::string_view text);

// Formats seconds as the shortest Go-like form: "168h0m0s" style is avoided in favour of
// "168h", "1h30m", "45s", "0s".
std::string formatDuration(int64_t seconds);

}  // namespace tokend
