// Sizes: "512K", "64M", "2G", "1T" (powers of 1024) or plain bytes, for tokend's and tokenctl's
// options (--max-db-size, ...).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace tokend {

// A trailing 'B' is allowed ("64MB"); nullopt when the text does not parse or overflows.
std::optional<size_t> parseSize(const std::string& text);

}  // namespace tokend
