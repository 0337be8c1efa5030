// tokenctl import: JSON lines in, checked whole, then written in id-ordered batches (see
// ctl_import.h).
#include "tools/ctl_import.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "base/clock.h"
#include "base/duration.h"
#include "base/scope_exit.h"
#include "tools/ctl_backend.h"
#include "verifier/allow_list.h"
#include "verifier/keydb.h"
#include "verifier/lifetime.h"
#include "verifier/manage.h"
#include "verifier/scopes.h"
#include "verifier/token.h"

namespace tokend::tools {
namespace {

using namespace tokend::verifier;
using Json = nlohmann::json;

constexpr int kExitFailed = 1;
constexpr size_t kMaxReportedErrors = 20;
// Distinct scope and allow lists remembered, normalised, per parsing thread: imports hold few.
constexpr size_t kMaxMemo = 4096;
constexpr size_t kBlockBytes = size_t{4} << 20;  // input handed to a parsing thread at a time
constexpr size_t kMaxLineBytes = size_t{1} << 20;
constexpr size_t kArenaChunk = size_t{16} << 20;
constexpr size_t kMaxNameBytes = 64;

struct LineError {
  uint64_t line;
  std::string message;
  friend bool operator<(const LineError& a, const LineError& b) { return a.line < b.line; }
};

// Bytes that stay put: the encoded records (a few hundred bytes a token) live here, not in
// millions of small heap blocks.
class Arena {
 public:
  char* alloc(size_t n) {
    if (n > kArenaChunk) return bigs_.emplace_back(std::make_unique<char[]>(n)).get();
    if (used_ + n > kArenaChunk || chunks_.empty()) {
      chunks_.push_back(std::make_unique<char[]>(kArenaChunk));
      used_ = 0;
    }
    char* p = chunks_.back().get() + used_;
    used_ += n;
    return p;
  }

 private:
  std::vector<std::unique_ptr<char[]>> chunks_, bigs_;
  size_t used_ = 0;
};

// One token to write. `data` holds the encoded record, then the name (nameLen bytes), then, for
// a minted token, its key (kTokenLength bytes).
struct Entry {
  char id[kTokenIdLength];
  uint8_t minted = 0;
  uint8_t skip = 0;  // already stored (--skip-existing)
  uint32_t user = 0;
  uint64_t line = 0;
  const char* data = nullptr;
  uint32_t recordLen = 0;
  uint16_t nameLen = 0;

  std::string_view idView() const { return {id, kTokenIdLength}; }
  std::string_view record() const { return {data, recordLen}; }
  std::string_view name() const { return {data + recordLen, nameLen}; }
  std::string_view key() const { return {data + recordLen + nameLen, kTokenLength}; }
};
static_assert(sizeof(Entry) == 40);

// Id order as LMDB sorts keys (bytewise), on two big-endian loads instead of a memcmp call.
bool entryLess(const Entry& a, const Entry& b) {
  uint64_t x, y;
  std::memcpy(&x, a.id, 8);
  std::memcpy(&y, b.id, 8);
  if (x != y) return __builtin_bswap64(x) < __builtin_bswap64(y);
  uint16_t u, v;
  std::memcpy(&u, a.id + 8, 2);
  std::memcpy(&v, b.id + 8, 2);
  return __builtin_bswap16(u) < __builtin_bswap16(v);
}

// ---- Users ----------------------------------------------------------------------------------

struct UserSlot {
  Uuid id;
  std::string username;  // for users to create
  bool owner = false;
  bool create = false;  // --create-users: made in the first write transaction
};

// The users named by the input, resolved once each, shared by the parsing threads.
class UserDirectory {
 public:
  UserDirectory(KeyDb& db, bool createUsers, int64_t now)
      : db_(db), createUsers_(createUsers), now_(now) {}

  struct Resolved {
    uint32_t index;
    Uuid id;
    bool owner;
  };
  // The user `ref` (a username or uuid) names, or an error for the line. Any thread.
  Result<Resolved> resolve(const std::string& ref) {
    std::lock_guard lock(mu_);
    auto it = byRef_.find(ref);
    if (it == byRef_.end()) {
      auto found = lookup(ref);
      if (found) {
        users_.push_back(std::move(*found));
        it = byRef_.emplace(ref, static_cast<int64_t>(users_.size() - 1)).first;
      } else {
        errors_.push_back(found.error().message);
        it = byRef_.emplace(ref, -static_cast<int64_t>(errors_.size())).first;
      }
    }
    if (it->second < 0) return makeError(errors_[static_cast<size_t>(-it->second - 1)]);
    const UserSlot& u = users_[static_cast<size_t>(it->second)];
    return Resolved{static_cast<uint32_t>(it->second), u.id, u.owner};
  }
  // Once the parsing threads are done: slots do not move after that.
  const UserSlot& at(uint32_t i) const { return users_[i]; }
  const std::vector<UserSlot>& all() const { return users_; }

 private:
  Result<UserSlot> lookup(const std::string& ref) {
    if (!reader_) {
      auto r = db_.reader();
      if (!r) return r.error();
      reader_ = std::move(*r);
    }
    if (auto b = reader_->begin(); !b) return b.error();
    ScopeExit end([&] { reader_->end(); });
    std::optional<UserRecord> u;
    if (auto id = Uuid::parse(ref)) {
      auto r = reader_->user(*id);
      if (!r) return r.error();
      u = std::move(*r);
    }
    if (!u) {
      auto r = reader_->userByName(ref);
      if (!r) return r.error();
      u = std::move(*r);
    }
    if (u) return UserSlot{u->id, {}, hasOwnerRole(u->roles), false};
    if (!createUsers_ || Uuid::parse(ref)) {
      return makeError(
          fmt::format("user \"{}\" not found (create it first, or pass --create-users)", ref));
    }
    if (!isValidUsername(ref)) {
      return makeError(fmt::format(
          "invalid username \"{}\": want 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter "
          "or digit",
          ref));
    }
    return UserSlot{Uuid::random(), ref, false, true};
  }

  KeyDb& db_;
  bool createUsers_;
  int64_t now_;
  std::mutex mu_;
  std::unique_ptr<Reader> reader_;                  // used under mu_ only
  std::unordered_map<std::string, int64_t> byRef_;  // >= 0 slot, < 0 -(error index + 1)
  std::vector<UserSlot> users_;
  std::vector<std::string> errors_;
};

// ---- Field parsing --------------------------------------------------------------------------

// One field's value as the SAX parser saw it.
struct Value {
  enum Kind : uint8_t { None, String, Integer, Strings, Other };
  Kind kind = None;
  std::string text;                // String
  int64_t number = 0;              // Integer
  std::vector<std::string> items;  // Strings: an array of strings
  std::string_view name;           // the field's name as written (aliases differ)
  void clear() {
    kind = None;
    items.clear();
  }
};

enum Field : uint8_t {
  kUser,
  kKey,
  kId,
  kSecret,
  kHashed,
  kName,
  kLoginType,
  kScopes,
  kAllow,
  kLifetime,
  kExpiresAt,
  kCreatedAt,
  kUpdatedAt,
  kLastUsed,
  kFieldCount,
  kUnknown = kFieldCount,
};

struct FieldName {
  std::string_view name;
  Field field;
};
constexpr FieldName kFieldNames[] = {
    {"user", kUser},
    {"username", kUser},
    {"user_id", kUser},
    {"key", kKey},
    {"id", kId},
    {"secret", kSecret},
    {"hashed_secret", kHashed},
    {"name", kName},
    {"token_name", kName},
    {"login_type", kLoginType},
    {"scopes", kScopes},
    {"allow_list", kAllow},
    {"lifetime", kLifetime},
    {"lifetime_seconds", kLifetime},
    {"expires_at", kExpiresAt},
    {"created_at", kCreatedAt},
    {"updated_at", kUpdatedAt},
    {"last_used", kLastUsed},
};

// Collects the fields of one flat JSON object without building a document: a bulk import parses
// millions of lines, and the DOM's maps and strings were most of that cost.
class FieldCollector : public nlohmann::json_sax<Json> {
 public:
  std::array<Value, kFieldCount> fields;
  std::string error;

  void reset() {
    for (Value& v : fields) v.clear();
    error.clear();
    depth_ = 0;
    current_ = nullptr;
    inArray_ = false;
    topIsObject_ = false;
  }
  bool topIsObject() const { return topIsObject_; }

  bool null() override { return other(); }
  bool boolean(bool) override { return other(); }
  bool number_integer(number_integer_t v) override { return integer(v); }
  bool number_unsigned(number_unsigned_t v) override {
    if (v > static_cast<number_unsigned_t>(INT64_MAX)) return other();
    return integer(static_cast<int64_t>(v));
  }
  bool number_float(number_float_t, const string_t&) override { return other(); }
  bool binary(binary_t&) override { return other(); }
  bool string(string_t& v) override {
    if (!current_) return true;
    if (inArray_) {
      current_->items.push_back(std::move(v));
    } else {
      current_->kind = Value::String;
      current_->text = std::move(v);
      current_ = nullptr;
    }
    return true;
  }
  bool start_object(std::size_t) override {
    if (depth_ == 0) topIsObject_ = true;
    if (++depth_ > 1) markOther();
    return true;
  }
  bool end_object() override {
    if (--depth_ == 1 && current_) current_ = nullptr;
    return true;
  }
  bool key(string_t& k) override {
    if (depth_ != 1) return true;
    Field f = kUnknown;
    for (const FieldName& n : kFieldNames) {
      if (n.name == k) {
        f = n.field;
        break;
      }
    }
    if (f == kUnknown) return fail(fmt::format("unknown field \"{}\"", k));
    Value& v = fields[f];
    if (v.kind != Value::None) {
      if (v.name == k) return fail(fmt::format("field \"{}\" is given twice", k));
      return fail(fmt::format("give one of \"{}\" and \"{}\"", v.name, k));
    }
    for (const FieldName& n : kFieldNames)
      if (n.name == k) v.name = n.name;
    current_ = &v;
    v.kind = Value::Other;  // until a value says otherwise
    return true;
  }
  bool start_array(std::size_t) override {
    ++depth_;
    if (depth_ == 2 && current_) {
      current_->kind = Value::Strings;
      inArray_ = true;
      return true;
    }
    markOther();
    return true;
  }
  bool end_array() override {
    if (--depth_ == 1 && inArray_) {
      inArray_ = false;
      current_ = nullptr;
    }
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    // nlohmann's message: "[json.exception.parse_error.101] parse error at line 1, ...".
    std::string what = e.what();
    auto at = what.find("] ");
    error = "not JSON: " + (at == std::string::npos ? what : what.substr(at + 2));
    return false;
  }

 private:
  bool integer(int64_t v) {
    if (!current_ || inArray_) return other();
    current_->kind = Value::Integer;
    current_->number = v;
    current_ = nullptr;
    return true;
  }
  // A value of a kind no field takes (or nested deeper than a list of strings).
  bool other() {
    markOther();
    return true;
  }
  void markOther() {
    if (current_) {
      current_->kind = Value::Other;
      if (!inArray_ || depth_ <= 1) current_ = nullptr;
    }
    if (inArray_) {
      inArray_ = false;
      current_ = nullptr;
    }
  }
  bool fail(std::string message) {
    error = std::move(message);
    return false;
  }
  int depth_ = 0;
  Value* current_ = nullptr;
  bool inArray_ = false;
  bool topIsObject_ = false;
};

Error wrongType(const Value& v, std::string_view want) {
  return makeError(fmt::format("\"{}\": want {}", v.name, want));
}

// Unix seconds (a number) or RFC 3339 ("2024-05-01T12:00:00Z", fractions and offsets allowed).
Result<int64_t> parseTime(const Value& v) {
  if (v.kind == Value::Integer) return v.number;
  if (v.kind != Value::String) return wrongType(v, "Unix seconds or an RFC 3339 time");
  const std::string& s = v.text;
  auto bad = [&] {
    return makeError(fmt::format("\"{}\": \"{}\" is not an RFC 3339 time", v.name, s));
  };
  auto digits = [&](size_t at, size_t n, int& out) {
    if (at + n > s.size()) return false;
    out = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      out = out * 10 + (s[i] - '0');
    }
    return true;
  };
  int year, month, day, hour, minute, second;
  if (s.size() < 20 || !digits(0, 4, year) || s[4] != '-' || !digits(5, 2, month) || s[7] != '-' ||
      !digits(8, 2, day) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      !digits(11, 2, hour) || s[13] != ':' || !digits(14, 2, minute) || s[16] != ':' ||
      !digits(17, 2, second)) {
    return bad();
  }
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60)
    return bad();
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    size_t start = ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start) return bad();
  }
  int64_t offset = 0;
  if (i < s.size() && (s[i] == 'Z' || s[i] == 'z')) {
    ++i;
  } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
    int oh, om;
    if (!digits(i + 1, 2, oh) || i + 3 >= s.size() || s[i + 3] != ':' || !digits(i + 4, 2, om))
      return bad();
    offset = (oh * 60 + om) * 60 * (s[i] == '-' ? -1 : 1);
    i += 6;
  } else {
    return bad();
  }
  if (i != s.size()) return bad();
  tm t{};
  t.tm_year = year - 1900;
  t.tm_mon = month - 1;
  t.tm_mday = day;
  t.tm_hour = hour;
  t.tm_min = minute;
  t.tm_sec = second;
  return static_cast<int64_t>(timegm(&t)) - offset;
}

// An array of strings, or one string (which may hold a comma-separated list).
Result<void> parseList(Value& v, std::vector<std::string>& out) {
  out.clear();
  if (v.kind == Value::String) {
    out.push_back(std::move(v.text));
    return {};
  }
  if (v.kind != Value::Strings) return wrongType(v, "an array of strings");
  out.swap(v.items);
  return {};
}

Result<Digest> parseHexDigest(std::string_view hex) {
  if (hex.starts_with("\\x")) hex.remove_prefix(2);  // PostgreSQL's bytea output
  if (hex.size() != 64) {
    return makeError("\"hashed_secret\": want the 64 hex digits of the secret's SHA-256");
  }
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Digest d;
  for (size_t i = 0; i < d.size(); ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return makeError("\"hashed_secret\": not hexadecimal");
    d[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return d;
}

bool hasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

// Normalises scope and allow lists, remembering the answers: a bulk import repeats a few lists
// millions of times.
class ListMemo {
 public:
  using List = std::shared_ptr<const std::vector<std::string>>;

  Result<List> scopes(const std::vector<std::string>& raw) {
    return lookup(scopes_, raw, [](const std::vector<std::string>& r) {
      return normalizeScopes(splitList(r), false);
    });
  }
  Result<List> allowList(const std::vector<std::string>& raw) {
    return lookup(allow_, raw,
                  [](const std::vector<std::string>& r) -> Result<std::vector<std::string>> {
                    auto a = normalizeAllowList(r);
                    if (!a) return a.error();
                    return allowListStrings(*a);
                  });
  }

 private:
  using Memo = std::unordered_map<std::string, Result<List>>;
  template <class Fn>
  Result<List> lookup(Memo& memo, const std::vector<std::string>& raw, Fn&& normalize) {
    key_.clear();
    for (const std::string& s : raw) key_.append(s).push_back('\x1f');
    if (auto it = memo.find(key_); it != memo.end()) return it->second;
    if (memo.size() >= kMaxMemo) memo.clear();
    auto n = normalize(raw);
    Result<List> r =
        n ? Result<List>(std::make_shared<const std::vector<std::string>>(std::move(*n)))
          : Result<List>(n.error());
    return memo.emplace(key_, std::move(r)).first->second;
  }
  Memo scopes_, allow_;
  std::string key_;
};

// What a parsing thread makes: its tokens (sorted by id once it is done), the bytes they point
// into, and its bad lines.
struct ParseOutput {
  Arena arena;
  std::vector<Entry> entries;
  std::vector<LineError> errors;
  uint64_t badLines = 0;
};

// Everything about a line: the JSON, the key or hash, the lists, the user, the lifetime; then
// the encoded record.
class LineParser {
 public:
  LineParser(UserDirectory& users, const LifetimeConfig& config, int64_t now, ParseOutput& out)
      : users_(users), config_(config), now_(now), out_(out) {}

  void parse(std::string_view text, uint64_t line) {
    if (auto r = parseLine(text, line); !r) {
      ++out_.badLines;
      if (out_.errors.size() < kMaxReportedErrors) out_.errors.push_back({line, r.error().message});
    }
  }

 private:
  Result<void> parseLine(std::string_view text, uint64_t line) {
    FieldCollector& c = collector_;
    c.reset();
    if (!Json::sax_parse(text.begin(), text.end(), &c)) return makeError(c.error);
    if (!c.topIsObject()) return makeError("want a JSON object");
    auto& f = c.fields;
    auto given = [&](Field k) { return f[k].kind != Value::None; };
    auto string = [&](Field k) -> Result<const std::string*> {
      if (!given(k)) return static_cast<const std::string*>(nullptr);
      if (f[k].kind != Value::String) return wrongType(f[k], "a string");
      return &f[k].text;
    };
    auto time = [&](Field k, int64_t& out) -> Result<void> {
      if (!given(k)) return {};
      auto at = parseTime(f[k]);
      if (!at) return at.error();
      out = *at;
      return {};
    };

    TokenRecord& t = record_;
    t.loginType = LoginType::Token;
    t.createdAt = now_;
    t.lastUsed = 0;
    auto userText = string(kUser);
    if (!userText) return userText.error();
    if (!*userText || (*userText)->empty()) {
      return makeError("\"user\" is missing (a username or uuid)");
    }
    userRef_ = **userText;
    auto nameText = string(kName);
    if (!nameText) return nameText.error();
    const bool nameGiven = *nameText != nullptr;
    t.name = nameGiven ? **nameText : std::string();
    auto kind = string(kLoginType);
    if (!kind) return kind.error();
    if (*kind) {
      auto k = parseLoginType(**kind);
      if (!k) {
        return makeError(
            fmt::format("\"login_type\": \"{}\" is not token, password, oidc or github", **kind));
      }
      t.loginType = *k;
    }
    std::optional<int64_t> lifetime, expiresAt;
    if (given(kLifetime)) {
      const Value& v = f[kLifetime];
      if (v.kind == Value::Integer) {
        lifetime = v.number;
      } else if (v.kind == Value::String) {
        auto d = parseDuration(v.text);
        if (!d) return makeError(fmt::format("\"{}\": {}", v.name, d.error().message));
        lifetime = *d;
      } else {
        return wrongType(v, "seconds or a duration such as \"30d\"");
      }
    }
    if (given(kExpiresAt)) {
      expiresAt = 0;
      if (auto r = time(kExpiresAt, *expiresAt); !r) return r;
    }
    if (auto r = time(kCreatedAt, t.createdAt); !r) return r;
    if (auto r = time(kLastUsed, t.lastUsed); !r) return r;
    t.updatedAt = std::max(t.createdAt, now_);
    if (auto r = time(kUpdatedAt, t.updatedAt); !r) return r;

    // Where the secret comes from: exactly one of key, id+secret, id+hashed_secret, or nothing.
    std::string_view minted;
    const bool key = given(kKey), id = given(kId), secret = given(kSecret), hashed = given(kHashed);
    if (key && (id || secret || hashed)) {
      return makeError("give \"key\" alone, or \"id\" with \"secret\" or \"hashed_secret\"");
    }
    if ((secret || hashed) && !id) return makeError("\"secret\" and \"hashed_secret\" need \"id\"");
    if (id && !secret && !hashed) {
      return makeError("\"id\" needs \"secret\" or \"hashed_secret\" (or give neither to mint)");
    }
    if (secret && hashed) return makeError("give \"secret\" or \"hashed_secret\", not both");
    if (key) {
      auto parsed = f[kKey].kind == Value::String ? parseToken(f[kKey].text) : std::nullopt;
      if (!parsed) return makeError("\"key\": not a token <10 of 0-9A-Za-z>-<22 of 0-9A-Za-z>");
      t.id = parsed->id;
      t.secretHash = sha_.digest(parsed->secret);
    } else if (id) {
      if (f[kId].kind != Value::String || !isTokenId(f[kId].text))
        return makeError("\"id\": want 10 characters of 0-9A-Za-z");
      t.id = f[kId].text;
      if (secret) {
        const Value& v = f[kSecret];
        if (v.kind != Value::String || v.text.size() != kSecretLength ||
            !parseToken(t.id + "-" + v.text)) {
          return makeError("\"secret\": want 22 characters of 0-9A-Za-z");
        }
        t.secretHash = sha_.digest(v.text);
      } else {
        if (f[kHashed].kind != Value::String) return wrongType(f[kHashed], "a hex string");
        auto d = parseHexDigest(f[kHashed].text);
        if (!d) return d.error();
        t.secretHash = *d;
      }
    } else {
      minted = minter_.mint();
      t.id = minted.substr(0, kTokenIdLength);
      t.secretHash = sha_.digest(minted.substr(kTokenIdLength + 1));
    }

    const bool session = t.loginType != LoginType::Token;
    if (session && nameGiven) return makeError("a session token (login_type != token) has no name");
    if (nameGiven && t.name.empty()) return makeError("\"name\" is empty");
    if (t.name.size() > kMaxNameBytes) {
      return makeError(fmt::format("\"name\" is longer than {} bytes", kMaxNameBytes));
    }
    if (hasControl(t.name)) return makeError("\"name\" holds control characters");
    if (!session && !nameGiven) t.name.assign("import-").append(t.id);

    raw_.clear();
    if (given(kScopes)) {
      if (auto r = parseList(f[kScopes], raw_); !r) return r;
    }
    auto s = memo_.scopes(raw_);
    if (!s) return s.error();
    raw_.clear();
    if (given(kAllow)) {
      if (auto r = parseList(f[kAllow], raw_); !r) return r;
    }
    auto a = memo_.allowList(raw_);
    if (!a) return a.error();
    if (lifetime && *lifetime <= 0) return makeError("lifetime must be positive");

    auto user = users_.resolve(userRef_);
    if (!user) return user.error();
    t.userId = user->id;
    if (expiresAt) {
      // A migration keeps its expiries as they were, whatever today's caps.
      t.expiresAt = *expiresAt;
      t.lifetimeSeconds = lifetime ? *lifetime : std::max<int64_t>(1, *expiresAt - t.createdAt);
    } else {
      int64_t l = 0;
      if (session) {
        l = lifetime ? *lifetime : config_.sessionDuration;
      } else {
        auto capped = apiTokenLifetime(lifetime, user->owner, config_);
        if (!capped) return capped.error();
        l = *capped;
      }
      t.lifetimeSeconds = l;
      t.expiresAt = t.createdAt + l;
    }

    // The record goes through the shared encoder; the lists are swapped in rather than copied.
    std::swap(t.scopes, scopesBuf_);
    std::swap(t.allowList, allowBuf_);
    t.scopes.assign((*s)->begin(), (*s)->end());
    t.allowList.assign((*a)->begin(), (*a)->end());
    std::string encoded = encodeToken(t);
    const std::string_view name = session ? std::string_view() : std::string_view(t.name);
    char* data = out_.arena.alloc(encoded.size() + name.size() + minted.size());
    std::memcpy(data, encoded.data(), encoded.size());
    std::memcpy(data + encoded.size(), name.data(), name.size());
    std::memcpy(data + encoded.size() + name.size(), minted.data(), minted.size());
    Entry& e = out_.entries.emplace_back();
    std::memcpy(e.id, t.id.data(), kTokenIdLength);
    e.minted = minted.empty() ? 0 : 1;
    e.user = user->index;
    e.line = line;
    e.data = data;
    e.recordLen = static_cast<uint32_t>(encoded.size());
    e.nameLen = static_cast<uint16_t>(name.size());
    return {};
  }

  UserDirectory& users_;
  const LifetimeConfig& config_;
  int64_t now_;
  ParseOutput& out_;
  Sha256 sha_;
  TokenMinter minter_{TokenMinter::kBulkPool};  // the one minter, with a pool for bulk
  FieldCollector collector_;
  ListMemo memo_;
  TokenRecord record_;
  std::string userRef_;
  std::vector<std::string> raw_, scopesBuf_, allowBuf_;
};

// ---- Reading: blocks of whole lines to the parsing threads -----------------------------------

struct Block {
  uint64_t firstLine = 0;
  std::string bytes;  // whole lines
};

class BlockQueue {
 public:
  explicit BlockQueue(size_t capacity) : capacity_(capacity) {}
  void push(Block b) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return q_.size() < capacity_; });
    q_.push_back(std::move(b));
    cv_.notify_all();
  }
  void close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }
  std::optional<Block> pop() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return std::nullopt;
    Block b = std::move(q_.front());
    q_.pop_front();
    cv_.notify_all();
    return b;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Block> q_;
  size_t capacity_;
  bool closed_ = false;
};

void parseBlock(const Block& b, LineParser& parser) {
  std::string_view rest = b.bytes;
  uint64_t line = b.firstLine;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view text = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t") != std::string_view::npos) parser.parse(text, line);
    ++line;
  }
}

// Reads `in` into blocks of whole lines. Returns the number of lines, or an error.
Result<uint64_t> readBlocks(FILE* in, BlockQueue& q) {
  std::string carry;
  uint64_t line = 1;
  for (;;) {
    std::string buf = std::move(carry);
    carry.clear();
    size_t have = buf.size();
    buf.resize(std::max(have + kBlockBytes, kBlockBytes));
    size_t n = std::fread(buf.data() + have, 1, buf.size() - have, in);
    buf.resize(have + n);
    if (n == 0) {
      if (std::ferror(in)) {
        return makeError(fmt::format("Failed to read line {}: {}", line, std::strerror(errno)));
      }
      if (buf.empty()) return line - 1;
      q.push(Block{line, std::move(buf)});  // a last line without '\n'
      return line;
    }
    size_t lastNl = buf.rfind('\n');
    if (lastNl == std::string::npos) {
      if (buf.size() > kMaxLineBytes) {
        return makeError(fmt::format("line {} is longer than {} bytes", line, kMaxLineBytes));
      }
      carry = std::move(buf);
      continue;
    }
    carry.assign(buf, lastNl + 1);
    buf.resize(lastNl + 1);
    uint64_t lines = static_cast<uint64_t>(std::count(buf.begin(), buf.end(), '\n'));
    q.push(Block{line, std::move(buf)});
    line += lines;
  }
}

std::string perSecond(double count, double seconds) {
  return seconds > 0 ? fmt::format("{:.0f}", count / seconds) : "-";
}

double since(int64_t startNs) {
  return static_cast<double>(monotonicNanos() - startNs) / 1e9;
}

// CPU seconds this process has used, every thread: on a shared machine the import's own cost.
double cpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return s(u.ru_utime) + s(u.ru_stime);
}

// Prints the first bad lines (in line order) and how many there were.
int refuse(std::vector<LineError>& errors, uint64_t bad, const char* what) {
  std::sort(errors.begin(), errors.end());
  for (size_t i = 0; i < errors.size() && i < kMaxReportedErrors; ++i) {
    fmt::print(stderr, "tokenctl: line {}: {}\n", errors[i].line, errors[i].message);
  }
  fmt::print(stderr, "tokenctl: refused the import: {} bad line{}{}; nothing was written\n", bad,
             bad == 1 ? "" : "s", what);
  return kExitFailed;
}

}  // namespace

void addImportCommand(CLI::App& app, ImportCommand& cmd) {
  ImportOptions& o = cmd.options;
  cmd.command = app.add_subcommand(
      "import",
      "Bulk-load tokens from JSON lines (operator mode only).\n"
      "One JSON object a line, in the shape `tokens list -o json` prints:\n"
      "  user (or username, user_id)   username or uuid (required)\n"
      "  key                           the token \"<id>-<secret>\"; or id with secret, or id with\n"
      "                                hashed_secret (hex SHA-256 of the secret, as Coder stores\n"
      "                                it); with none of them a token is minted and its key\n"
      "                                printed once, one a line, in input order\n"
      "  name (or token_name)          default \"import-<id>\"; unique per user (token kind)\n"
      "  login_type                    token (default), password, oidc, github\n"
      "  scopes, allow_list            arrays of strings; default coder:all and *:*\n"
      "  lifetime (or lifetime_seconds) seconds or \"30d\"; default and cap as tokens create\n"
      "  expires_at, created_at, last_used, updated_at  Unix seconds or RFC 3339; an explicit\n"
      "                                expires_at is kept as given (no cap: migrations)\n"
      "The whole input is checked first (also against the database): any bad line refuses the\n"
      "import before anything is written, and the bad lines are named. Then the tokens are\n"
      "written in id order, --batch per transaction; a batch that fails is rolled back whole and\n"
      "the message says how to finish. Needs about 400 bytes of memory per token.\n"
      "Example line: {\"user\":\"alice\",\"name\":\"ci\",\"scopes\":[\"workspace:read\"],"
      "\"lifetime\":\"30d\"}");
  cmd.command->add_option("file", o.input, "JSON lines to read; - for stdin (default)");
  cmd.command->add_option("--batch", o.batch, "Tokens per write transaction (default 50000)")
      ->check(CLI::Range(size_t{1}, size_t{10'000'000}));
  cmd.command->add_option("--keys-out", o.keysOut,
                          "Write minted keys to this new file (created mode 0600; an existing "
                          "file or a symlink is refused) instead of stdout");
  cmd.command->add_flag("--create-users", o.createUsers,
                        "Create the users named by username that do not exist (member role)");
  cmd.command->add_flag("--skip-existing", o.skipExisting,
                        "Skip tokens already stored with the same id, user and secret (to finish "
                        "an import that stopped part way)");
  cmd.command->add_flag("--dry-run", o.dryRun,
                        "Check every line, also against the database; write nothing");
  cmd.command->add_option("--threads", o.threads, "Parsing threads (default: one per core)")
      ->check(CLI::Range(1u, 64u));
  cmd.command->add_flag("-q,--quiet", o.quiet, "No summary on stderr");
}

int runImport(const std::string& dbDir, const ImportOptions& o) {
  auto fail = [](const std::string& message) {
    fmt::print(stderr, "tokenctl: {}\n", message);
    return kExitFailed;
  };
  auto config = lifetimeConfigFromEnv();
  if (!config) return fail(config.error().message);

  FILE* in = stdin;
  if (o.input != "-") {
    in = std::fopen(o.input.c_str(), "re");
    if (!in) return fail(fmt::format("Failed to open {}: {}", o.input, std::strerror(errno)));
  }
  ScopeExit closeIn([&] {
    if (in != stdin) std::fclose(in);
  });

  KeyDbOptions dbOptions;
  dbOptions.maxMapSize = o.maxDbSize;
  auto db = KeyDb::open(dbDir, dbOptions);
  if (!db) return fail(db.error().message);
  if (auto replica = isReplicaDir(**db); !replica || *replica)
    return fail(replica ? kReplicaWriteRefusal : replica.error().message);

  // 1. Read and parse, on every core.
  const int64_t now = clockNow();
  const int64_t start = monotonicNanos();
  unsigned threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  UserDirectory users(**db, o.createUsers, now);
  std::vector<ParseOutput> outputs(threads);
  BlockQueue queue(2 * threads);
  std::vector<std::thread> parsers;
  for (unsigned i = 0; i < threads; ++i) {
    parsers.emplace_back([&, i] {
      LineParser parser(users, *config, now, outputs[i]);
      while (auto b = queue.pop()) parseBlock(*b, parser);
      std::sort(outputs[i].entries.begin(), outputs[i].entries.end(), entryLess);
    });
  }
  auto lines = readBlocks(in, queue);
  queue.close();
  for (auto& t : parsers) t.join();
  if (!lines) return fail(lines.error().message);

  std::vector<LineError> errors;
  uint64_t bad = 0;
  size_t total = 0;
  for (ParseOutput& p : outputs) {
    errors.insert(errors.end(), p.errors.begin(), p.errors.end());
    bad += p.badLines;
    total += p.entries.size();
  }
  if (bad > 0) return refuse(errors, bad, "");
  const double parseSeconds = since(start), parseCpu = cpuSeconds();

  // 2. One sorted list, checked as a whole and against the database.
  std::vector<Entry> entries;
  entries.reserve(total);
  for (ParseOutput& p : outputs) {
    size_t mid = entries.size();
    entries.insert(entries.end(), p.entries.begin(), p.entries.end());
    std::vector<Entry>().swap(p.entries);
    std::inplace_merge(entries.begin(), entries.begin() + static_cast<ptrdiff_t>(mid),
                       entries.end(), entryLess);
  }
  auto note = [&](uint64_t line, std::string message) {
    ++bad;
    if (errors.size() < kMaxReportedErrors) errors.push_back({line, std::move(message)});
  };
  for (size_t i = 1; i < entries.size(); ++i) {
    const Entry &a = entries[i - 1], &b = entries[i];
    if (std::memcmp(a.id, b.id, kTokenIdLength) == 0) {
      note(std::max(a.line, b.line),
           fmt::format("token id \"{}\" is also on line {}", b.idView(), std::min(a.line, b.line)));
    }
  }
  {
    // A user's token names, each once: sort (user, name hash), compare names on equal hashes.
    struct NameKey {
      uint32_t user;
      uint64_t hash;
      uint32_t index;
    };
    std::vector<NameKey> names;
    for (size_t i = 0; i < entries.size(); ++i) {
      if (entries[i].nameLen == 0) continue;
      names.push_back({entries[i].user, std::hash<std::string_view>{}(entries[i].name()),
                       static_cast<uint32_t>(i)});
    }
    std::sort(names.begin(), names.end(), [](const NameKey& a, const NameKey& b) {
      return std::tie(a.user, a.hash, a.index) < std::tie(b.user, b.hash, b.index);
    });
    for (size_t i = 0; i < names.size(); ++i) {
      for (size_t j = i + 1;
           j < names.size() && names[j].user == names[i].user && names[j].hash == names[i].hash;
           ++j) {
        const Entry &a = entries[names[i].index], &b = entries[names[j].index];
        if (a.name() == b.name()) {
          note(std::max(a.line, b.line), fmt::format("A token with name \"{}\" is also on line {}",
                                                     a.name(), std::min(a.line, b.line)));
        }
      }
    }
  }
  if (bad > 0) return refuse(errors, bad, " (within the input)");
  {
    auto reader = (*db)->reader();
    if (!reader) return fail(reader.error().message);
    Reader& r = **reader;
    if (auto b = r.begin(); !b) return fail(b.error().message);
    ScopeExit end([&] { r.end(); });
    for (Entry& e : entries) {
      const UserSlot& u = users.at(e.user);
      auto existing = r.tokenBytes(e.idView());
      if (!existing) return fail(existing.error().message);
      if (*existing) {
        if (o.skipExisting) {
          auto stored = decodeToken(**existing);
          auto mine = decodeToken(e.record());
          if (stored && mine && stored->userId == mine->userId &&
              digestEquals(stored->secretHash.data(), mine->secretHash.data())) {
            e.skip = 1;
            continue;
          }
        }
        note(e.line, fmt::format("token id \"{}\" already exists", e.idView()));
        continue;
      }
      if (e.nameLen == 0 || u.create) continue;
      auto named = r.tokenByName(u.id, e.name());
      if (!named) return fail(named.error().message);
      if (*named) {
        note(e.line, fmt::format("A token with name \"{}\" already exists.", e.name()));
      }
    }
  }
  if (bad > 0) return refuse(errors, bad, " (against the database)");
  const double checkSeconds = since(start) - parseSeconds, checkCpu = cpuSeconds() - parseCpu;

  // Where the minted keys go, opened before anything is written: a file that cannot be made
  // refuses the import while it can still be refused whole. A new file only, mode 0600, never
  // through a symlink: the keys are plaintext secrets.
  FILE* keysFile = nullptr;
  ScopeExit closeKeys([&] {
    if (keysFile) std::fclose(keysFile);
  });
  const bool anyMinted =
      std::any_of(entries.begin(), entries.end(), [](const Entry& e) { return e.minted; });
  if (!o.dryRun && !o.keysOut.empty() && anyMinted) {
    int fd = ::open(o.keysOut.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST) {
      return fail(fmt::format(
          "refused the import: --keys-out {} already exists (minted keys go only to a new file, "
          "never over an existing file or through a symlink: name a path that does not exist); "
          "nothing was written",
          o.keysOut));
    }
    if (fd < 0 || !(keysFile = ::fdopen(fd, "w"))) {
      int err = errno;
      if (fd >= 0) ::close(fd);
      return fail(fmt::format("Failed to create {}: {}; nothing was written", o.keysOut,
                              std::strerror(err)));
    }
  }

  // 3. Write, in id order, --batch tokens a transaction.
  size_t written = 0, skipped = 0, usersCreated = 0, transactions = 0;
  size_t done = 0;  // entries [0, done) are committed (or skipped)
  std::vector<NewTokenRef> refs;
  std::string failure;
  const int64_t writeStart = monotonicNanos();
  if (!o.dryRun) {
    bool first = true;
    while (done < entries.size()) {
      refs.clear();
      size_t end = done, inBatch = 0;
      for (; end < entries.size() && inBatch < o.batch; ++end) {
        const Entry& e = entries[end];
        if (e.skip) continue;
        refs.push_back({e.idView(), e.record(), &users.at(e.user).id, e.name()});
        ++inBatch;
      }
      // What the batch adds, doubled for half-full index pages and copied branch pages: a batch
      // is refused with "the key database is full" rather than let into the reserve for deletes.
      size_t growth = 0;
      for (const NewTokenRef& t : refs) growth += 2 * (t.encoded.size() + t.name.size() + 96);
      size_t failedAt = refs.size();
      size_t created = 0;
      auto r = (*db)->update([&](Writer& w) -> Result<void> {
        created = 0;
        failedAt = refs.size();
        if (auto room = w.requireRoom(growth); !room) return room;
        if (first) {
          for (const UserSlot& u : users.all()) {
            if (!u.create) continue;
            UserRecord rec{u.id, u.username, {}, UserStatus::Active, now, now};
            if (auto p = w.putUser(rec); !p) return p;
            ++created;
          }
        }
        return w.insertNewTokens(refs, failedAt);
      });
      if (!r) {
        failure = r.error().message;
        if (failedAt < refs.size()) {
          // Name the line of the token the database refused.
          for (size_t i = done; i < end; ++i) {
            if (entries[i].idView() == refs[failedAt].id) {
              failure = fmt::format("line {}: {}", entries[i].line, failure);
              break;
            }
          }
        }
        break;
      }
      first = false;
      usersCreated += created;
      written += refs.size();
      skipped += (end - done) - refs.size();
      done = end;
      ++transactions;
    }
  }
  const double writeSeconds = since(writeStart), writeCpu = cpuSeconds() - parseCpu - checkCpu;

  // Minted keys, in input order, of the committed tokens only.
  uint64_t minted = 0;
  if (!o.dryRun) {
    std::vector<std::pair<uint64_t, const char*>> keys;
    for (size_t i = 0; i < done; ++i) {
      const Entry& e = entries[i];
      if (e.minted && !e.skip) keys.emplace_back(e.line, e.key().data());
    }
    std::sort(keys.begin(), keys.end());
    FILE* out = keysFile ? keysFile : stdout;
    std::string buf;
    buf.reserve(kTokenLength + 1);
    for (const auto& [line, key] : keys) {
      buf.assign(key, kTokenLength).push_back('\n');
      std::fwrite(buf.data(), 1, buf.size(), out);
    }
    minted = keys.size();
    bool ok = std::fflush(out) == 0;
    if (keysFile) {
      ok = std::fclose(keysFile) == 0 && ok;
      keysFile = nullptr;
      // Made by this run and left empty (no minted token was committed): a rerun may use it.
      if (ok && keys.empty()) ::unlink(o.keysOut.c_str());
    }
    if (!ok) return fail(fmt::format("Failed to write the minted keys: {}", std::strerror(errno)));
  }

  if (!failure.empty()) {
    fmt::print(stderr, "tokenctl: {}\n", failure);
    fmt::print(stderr,
               "tokenctl: the import stopped: the failed batch was rolled back; {} of {} tokens "
               "(the first in id order) were written before it{}. Rerun the same input with "
               "--skip-existing to write the rest (lines without a key mint new ones{}).\n",
               written, entries.size(), minted ? " and their minted keys printed" : "",
               o.keysOut.empty() ? "" : "; give a new --keys-out file");
    return kExitFailed;
  }
  if (!o.quiet) {
    const double s = since(start);
    if (o.dryRun) {
      fmt::print(stderr,
                 "tokenctl: checked {} tokens from {} lines in {:.2f} s: all good (dry run: "
                 "nothing written)\n",
                 entries.size(), *lines, s);
    } else {
      fmt::print(stderr,
                 "tokenctl: imported {} tokens ({} minted, {} skipped) from {} lines in {:.2f} s "
                 "({} tokens/s; parse {:.2f} s, check {:.2f} s, write {:.2f} s in {} "
                 "transactions; CPU parse {:.2f} s, check {:.2f} s, write {:.2f} s), {} users "
                 "created\n",
                 written, minted, skipped, *lines, s, perSecond(static_cast<double>(written), s),
                 parseSeconds, checkSeconds, writeSeconds, transactions, parseCpu, checkCpu,
                 writeCpu, usersCreated);
    }
  }
  return 0;
}

}  // namespace tokend::tools
