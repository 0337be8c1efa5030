// records: the versioned little-endian encoding of user and token records, and enum names.
#include "verifier/records.h"

#include <algorithm>
#include <cstring>

namespace tokend::verifier {
namespace {

constexpr uint8_t kUserType = 'U';
constexpr uint8_t kTokenType = 'T';
constexpr uint8_t kFormatVersion = 1;
constexpr size_t kMaxCount = UINT16_MAX;

// Appends fields to an encoded record. Strings and lists longer than the u16 prefix can say are
// cut at the limit; KeyDb calls checkEncodable() first, so that only happens to callers who skip
// it.
class Encoder {
 public:
  explicit Encoder(size_t reserve) { out_.reserve(reserve); }

  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(uint16_t v) {
    u8(static_cast<uint8_t>(v));
    u8(static_cast<uint8_t>(v >> 8));
  }
  void i64(int64_t v) {
    auto u = static_cast<uint64_t>(v);
    for (int i = 0; i < 8; ++i) u8(static_cast<uint8_t>(u >> (8 * i)));
  }
  void raw(const uint8_t* p, size_t n) { out_.append(reinterpret_cast<const char*>(p), n); }
  void str(std::string_view s) {
    size_t n = std::min(s.size(), kMaxCount);
    u16(static_cast<uint16_t>(n));
    out_.append(s.data(), n);
  }
  void list(const std::vector<std::string>& items) {
    size_t n = std::min(items.size(), kMaxCount);
    u16(static_cast<uint16_t>(n));
    for (size_t i = 0; i < n; ++i) str(items[i]);
  }

  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

// Names a field in error messages; formatted only when a decode fails, so decoding a good record
// allocates nothing for names.
struct Field {
  Field(const char* n) : name(n) {}
  Field(const char* n, int i, const char* p) : name(n), index(i), part(p) {}
  std::string text() const {
    std::string s = name;
    if (index >= 0) s += "[" + std::to_string(index) + "]";
    if (part) s += std::string(" ") + part;
    return s;
  }
  const char* name;
  int index = -1;
  const char* part = nullptr;
};

// Reads fields of one record. The first failure is kept as a message naming the field and every
// later read fails too; each read returns false on failure, so a decode is one && chain.
class Decoder {
 public:
  Decoder(std::string_view in, const char* record) : in_(in), record_(record) {}

  Error error() const { return makeError(error_, -EBADMSG); }

  // Checks the record type and format version bytes.
  bool header(uint8_t wantType) {
    uint8_t type = 0, version = 0;
    if (!u8("type", type)) return false;
    if (type != wantType) {
      return fail("not a " + std::string(record_) + " record: type byte " + describeByte(type) +
                  ", expected '" + static_cast<char>(wantType) + "'");
    }
    if (!u8("version", version)) return false;
    if (version != kFormatVersion) {
      return fail(std::string(record_) + " record version " + std::to_string(version) +
                  " is not supported (this build reads version " + std::to_string(kFormatVersion) +
                  ")");
    }
    return true;
  }

  bool u8(Field field, uint8_t& v) {
    const char* p = take(field, 1);
    if (!p) return false;
    v = static_cast<uint8_t>(*p);
    return true;
  }
  bool u16(Field field, uint16_t& v) {
    const char* p = take(field, 2);
    if (!p) return false;
    v = static_cast<uint16_t>(byte(p, 0) | byte(p, 1) << 8);
    return true;
  }
  bool i64(Field field, int64_t& v) {
    const char* p = take(field, 8);
    if (!p) return false;
    uint64_t u = 0;
    for (int i = 0; i < 8; ++i) u |= uint64_t{byte(p, i)} << (8 * i);
    v = static_cast<int64_t>(u);
    return true;
  }
  bool raw(Field field, uint8_t* out, size_t n) {
    const char* p = take(field, n);
    if (!p) return false;
    std::memcpy(out, p, n);
    return true;
  }
  bool str(Field field, std::string& out) {
    uint16_t n = 0;
    if (!u16(Field(field.name, field.index, "length"), n)) return false;
    const char* p = take(field, n);
    if (!p) return false;
    out.assign(p, n);
    return true;
  }
  bool list(const char* field, std::vector<std::string>& out) {
    uint16_t n = 0;
    if (!u16(Field(field, -1, "count"), n)) return false;
    out.clear();
    // No reserve(n): a corrupt count must not make us allocate before the bytes prove it.
    for (int i = 0; i < n; ++i) {
      out.emplace_back();
      if (!str(Field(field, i, nullptr), out.back())) return false;
    }
    return true;
  }
  template <class E>
  bool enumeration(const char* field, E& out, E last) {
    uint8_t v = 0;
    if (!u8(field, v)) return false;
    if (v > static_cast<uint8_t>(last)) {
      return fail(std::string(record_) + " record: field \"" + field +
                  "\" has out-of-range value " + std::to_string(v));
    }
    out = static_cast<E>(v);
    return true;
  }
  bool end() {
    if (pos_ != in_.size()) {
      size_t extra = in_.size() - pos_;
      return fail(std::string(record_) + " record: " + std::to_string(extra) +
                  (extra == 1 ? " trailing byte" : " trailing bytes") + " after the last field");
    }
    return true;
  }

 private:
  static uint32_t byte(const char* p, int i) { return static_cast<uint8_t>(p[i]); }
  static std::string describeByte(uint8_t b) {
    static const char kHex[] = "0123456789abcdef";
    std::string s = "0x";
    s += kHex[b >> 4];
    s += kHex[b & 15];
    if (b >= 0x20 && b < 0x7f) s += std::string(" ('") + static_cast<char>(b) + "')";
    return s;
  }

  const char* take(const Field& field, size_t n) {
    size_t left = in_.size() - pos_;
    if (n > left) {
      fail(std::string(record_) + " record: field \"" + field.text() + "\" needs " +
           std::to_string(n) + " bytes at offset " + std::to_string(pos_) + " but only " +
           std::to_string(left) + " remain");
      return nullptr;
    }
    const char* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }
  bool fail(std::string message) {
    error_ = std::move(message);
    return false;
  }

  std::string_view in_;
  const char* record_;
  size_t pos_ = 0;
  std::string error_;
};

Result<void> checkString(const char* record, const char* field, std::string_view s) {
  if (s.size() > kMaxCount) {
    return makeError(std::string(record) + " field \"" + field + "\" is " +
                     std::to_string(s.size()) + " bytes, more than the " +
                     std::to_string(kMaxCount) + " a record can hold");
  }
  return {};
}

Result<void> checkList(const char* record, const char* field,
                       const std::vector<std::string>& items) {
  if (items.size() > kMaxCount) {
    return makeError(std::string(record) + " field \"" + field + "\" has " +
                     std::to_string(items.size()) + " entries, more than the " +
                     std::to_string(kMaxCount) + " a record can hold");
  }
  for (const auto& item : items) {
    if (auto r = checkString(record, field, item); !r) return r;
  }
  return {};
}

}  // namespace

std::string_view loginTypeName(LoginType t) {
  switch (t) {
    case LoginType::Token:
      return "token";
    case LoginType::Password:
      return "password";
    case LoginType::Oidc:
      return "oidc";
    case LoginType::Github:
      return "github";
  }
  return "unknown";
}

std::optional<LoginType> parseLoginType(std::string_view name) {
  for (LoginType t : {LoginType::Token, LoginType::Password, LoginType::Oidc, LoginType::Github}) {
    if (loginTypeName(t) == name) return t;
  }
  return std::nullopt;
}

std::string_view userStatusName(UserStatus s) {
  switch (s) {
    case UserStatus::Active:
      return "active";
    case UserStatus::Suspended:
      return "suspended";
  }
  return "unknown";
}

Result<void> checkEncodable(const UserRecord& u) {
  if (auto r = checkString("user", "username", u.username); !r) return r;
  return checkList("user", "roles", u.roles);
}

Result<void> checkEncodable(const TokenRecord& t) {
  if (auto r = checkString("token", "id", t.id); !r) return r;
  if (auto r = checkString("token", "name", t.name); !r) return r;
  if (auto r = checkList("token", "scopes", t.scopes); !r) return r;
  return checkList("token", "allow_list", t.allowList);
}

std::string encodeUser(const UserRecord& u) {
  Encoder e(64 + u.username.size() + 16 * u.roles.size());
  e.u8(kUserType);
  e.u8(kFormatVersion);
  e.raw(u.id.bytes.data(), u.id.bytes.size());
  e.str(u.username);
  e.list(u.roles);
  e.u8(static_cast<uint8_t>(u.status));
  e.i64(u.createdAt);
  e.i64(u.updatedAt);
  return e.take();
}

Result<UserRecord> decodeUser(std::string_view bytes) {
  Decoder d(bytes, "user");
  UserRecord u;
  bool ok = d.header(kUserType) && d.raw("id", u.id.bytes.data(), u.id.bytes.size()) &&
            d.str("username", u.username) && d.list("roles", u.roles) &&
            d.enumeration("status", u.status, UserStatus::Suspended) &&
            d.i64("created_at", u.createdAt) && d.i64("updated_at", u.updatedAt) && d.end();
  if (!ok) return d.error();
  return u;
}

std::string encodeToken(const TokenRecord& t) {
  size_t strings = t.id.size() + t.name.size();
  for (const auto& s : t.scopes) strings += 2 + s.size();
  for (const auto& s : t.allowList) strings += 2 + s.size();
  Encoder e(112 + strings);
  e.u8(kTokenType);
  e.u8(kFormatVersion);
  e.str(t.id);
  e.raw(t.secretHash.data(), t.secretHash.size());
  e.raw(t.userId.bytes.data(), t.userId.bytes.size());
  e.u8(static_cast<uint8_t>(t.loginType));
  e.str(t.name);
  e.list(t.scopes);
  e.list(t.allowList);
  e.i64(t.createdAt);
  e.i64(t.expiresAt);
  e.i64(t.lifetimeSeconds);
  e.i64(t.lastUsed);
  e.i64(t.updatedAt);
  return e.take();
}

Result<TokenRecord> decodeToken(std::string_view bytes) {
  Decoder d(bytes, "token");
  TokenRecord t;
  bool ok = d.header(kTokenType) && d.str("id", t.id) &&
            d.raw("secret_hash", t.secretHash.data(), t.secretHash.size()) &&
            d.raw("user_id", t.userId.bytes.data(), t.userId.bytes.size()) &&
            d.enumeration("login_type", t.loginType, LoginType::Github) && d.str("name", t.name) &&
            d.list("scopes", t.scopes) && d.list("allow_list", t.allowList) &&
            d.i64("created_at", t.createdAt) && d.i64("expires_at", t.expiresAt) &&
            d.i64("lifetime_seconds", t.lifetimeSeconds) && d.i64("last_used", t.lastUsed) &&
            d.i64("updated_at", t.updatedAt) && d.end();
  if (!ok) return d.error();
  return t;
}

}  // namespace tokend::verifier
