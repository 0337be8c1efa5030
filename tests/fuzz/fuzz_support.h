// What every libFuzzer target here shares.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tokend::fuzz {

// A failed invariant must stop the fuzzer with a crash it can minimise, whatever NDEBUG says.
inline void require(bool ok) {
  if (!ok) __builtin_trap();
}

// The input as newline-separated values (the last may lack its newline).
inline std::vector<std::string> lines(std::string_view in) {
  std::vector<std::string> out;
  while (!in.empty()) {
    size_t nl = in.find('\n');
    out.emplace_back(in.substr(0, nl));
    if (nl == std::string_view::npos) break;
    in.remove_prefix(nl + 1);
  }
  return out;
}

}  // namespace tokend::fuzz
