// The records of the key database and their compact, versioned, little-endian encoding.
//
// Encoding (all integers little-endian):
//   u8 record type ('U' user, 'T' token), u8 format version (1), then the fields in the order
//   declared below; strings as u16 length + bytes; lists as u16 count + items; UUIDs as 16 raw
//   bytes; the secret hash as 32 raw bytes; enums as u8; times as i64 Unix seconds. A decoder
//   refuses unknown types or versions, a length that runs past the end, trailing bytes, and
//   out-of-range enum values.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/uuid.h"

namespace tokend::verifier {

inline constexpr size_t kTokenIdLength = 10;
inline constexpr size_t kSecretLength = 22;
inline constexpr size_t kTokenLength = kTokenIdLength + 1 + kSecretLength;

using Digest = std::array<uint8_t, 32>;

enum class LoginType : uint8_t { Token = 0, Password = 1, Oidc = 2, Github = 3 };
enum class UserStatus : uint8_t { Active = 0, Suspended = 1 };

std::string_view loginTypeName(LoginType t);  // "token", "password", "oidc", "github"
std::optional<LoginType> parseLoginType(std::string_view);
std::string_view userStatusName(UserStatus s);  // "active", "suspended"

struct UserRecord {
  Uuid id;
  std::string username;
  std::vector<std::string> roles;  // catalog role names besides the implied "member"
  UserStatus status = UserStatus::Active;
  int64_t createdAt = 0;
  int64_t updatedAt = 0;
};

struct TokenRecord {
  std::string id;  // kTokenIdLength characters of [0-9A-Za-z]
  Digest secretHash{};
  Uuid userId;
  LoginType loginType = LoginType::Token;
  std::string name;                    // unique per user among LoginType::Token tokens
  std::vector<std::string> scopes;     // normalised scope names, e.g. "workspace:read"
  std::vector<std::string> allowList;  // normalised entries, e.g. "workspace:<uuid>", "*:*"
  int64_t createdAt = 0;
  int64_t expiresAt = 0;
  int64_t lifetimeSeconds = 0;
  int64_t lastUsed = 0;  // starts at the Unix epoch
  int64_t updatedAt = 0;
};

// The encoding holds strings of at most 65535 bytes and lists of at most 65535 entries. These
// name the first field over a limit; the encoders cut such a field short, so check first
// (KeyDb's Writer does). Decoders return errors whose code is -EBADMSG.
Result<void> checkEncodable(const UserRecord& u);
Result<void> checkEncodable(const TokenRecord& t);

std::string encodeUser(const UserRecord& u);
Result<UserRecord> decodeUser(std::string_view bytes);
std::string encodeToken(const TokenRecord& t);
Result<TokenRecord> decodeToken(std::string_view bytes);

}  // namespace tokend::verifier
