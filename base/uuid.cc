// UUID parsing, formatting and v4 generation.
#include "base/uuid.h"

#include <openssl/rand.h>

#include <cstdlib>

namespace tokend {
namespace {
int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::optional<Uuid> Uuid::parse(std::string_view t) {
  if (t.size() != 36) return std::nullopt;
  Uuid u;
  size_t b = 0;
  for (size_t i = 0; i < 36;) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (t[i] != '-') return std::nullopt;
      ++i;
      continue;
    }
    int hi = hexValue(t[i]), lo = hexValue(t[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    u.bytes[b++] = static_cast<uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return u;
}

Uuid Uuid::random() {
  Uuid u;
  if (RAND_bytes(u.bytes.data(), 16) != 1) std::abort();
  u.bytes[6] = (u.bytes[6] & 0x0f) | 0x40;
  u.bytes[8] = (u.bytes[8] & 0x3f) | 0x80;
  return u;
}

void Uuid::format(char* out) const {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = kHex[bytes[i] >> 4];
    out[o++] = kHex[bytes[i] & 15];
  }
}

std::string Uuid::toString() const {
  std::string s(36, '\0');
  format(s.data());
  return s;
}

bool Uuid::isNil() const {
  for (uint8_t b : bytes)
    if (b) return false;
  return true;
}

}  // namespace tokend
