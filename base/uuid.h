// Uuid: 16 bytes, parsed from and printed as the canonical 8-4-4-4-12 lowercase hex form.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tokend {

struct Uuid {
  std::array<uint8_t, 16> bytes{};

  // Accepts exactly 36 characters, hyphens at 8, 13, 18, 23, hex digits of either case.
  static std::optional<Uuid> parse(std::string_view text);
  // A random version-4 UUID from the CSPRNG (RAND_bytes); aborts if the CSPRNG fails.
  static Uuid random();

  std::string toString() const;
  // Writes the 36 characters to out (no terminator).
  void format(char* out) const;
  bool isNil() const;

  friend bool operator==(const Uuid&, const Uuid&) = default;
  friend auto operator<=>(const Uuid&, const Uuid&) = default;
};

}  // namespace tokend
