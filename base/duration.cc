// Duration parsing and formatting.
#include "base/duration.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace tokend {
namespace {

struct Unit {
  std::string_view name;
  double seconds;
};
// Longest names first so that "ms" is not read as "m" followed by "s".
constexpr Unit kUnits[] = {{"ns", 1e-9}, {"us", 1e-6}, {"µs", 1e-6}, {"ms", 1e-3}, {"s", 1},
                           {"m", 60},    {"h", 3600},  {"d", 86400}, {"y", 86400.0 * 365}};

Error bad(std::string_view text, std::string_view why) {
  return makeError(fmt::format("invalid duration \"{}\": {}", text, why));
}

}  // namespace

Result<int64_t> parseDuration(std::string_view text) {
  std::string_view s = text;
  if (s.empty()) return bad(text, "empty");
  bool negative = false;
  if (s[0] == '-' || s[0] == '+') {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") return int64_t{0};
  if (s.empty()) return bad(text, "no number");
  // Whole seconds and a fraction kept apart, so that "876600h" stays exact.
  long double total = 0;
  while (!s.empty()) {
    size_t i = 0;
    long double number = 0;
    bool digits = false;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      number = number * 10 + (s[i] - '0');
      digits = true;
      ++i;
    }
    if (i < s.size() && s[i] == '.') {
      ++i;
      long double scale = 0.1L;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
        number += (s[i] - '0') * scale;
        scale /= 10;
        digits = true;
        ++i;
      }
    }
    if (!digits) return bad(text, "expected a number");
    s.remove_prefix(i);
    const Unit* unit = nullptr;
    for (const Unit& u : kUnits) {
      // kUnits lists "ms" before "m", so the first match is the right one.
      if (s.substr(0, u.name.size()) == u.name) {
        unit = &u;
        break;
      }
    }
    if (unit == nullptr) {
      return bad(text, s.empty() ? "missing unit (use s, m, h, d or y)" : "unknown unit");
    }
    s.remove_prefix(unit->name.size());
    total += number * unit->seconds;
    if (total > static_cast<long double>(std::numeric_limits<int64_t>::max() / 2)) {
      return bad(text, "too large");
    }
  }
  auto secs = static_cast<int64_t>(std::floor(total + 1e-9L));
  return negative ? -secs : secs;
}

std::string formatDuration(int64_t seconds) {
  if (seconds == 0) return "0s";
  std::string out = seconds < 0 ? "-" : "";
  uint64_t s = seconds < 0 ? static_cast<uint64_t>(-(seconds + 1)) + 1 : seconds;
  uint64_t h = s / 3600, m = (s % 3600) / 60, sec = s % 60;
  if (h) out += fmt::format("{}h", h);
  if (m) out += fmt::format("{}m", m);
  if (sec) out += fmt::format("{}s", sec);
  return out;
}

}  // namespace tokend
