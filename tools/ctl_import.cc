// tokenctl import: JSON lines in, tokens out in batched write transactions (see ctl_import.h).
#include "tools/ctl_import.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "base/clock.h"
#include "base/duration.h"
#include "base/scope_exit.h"
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
// Distinct scope and allow lists remembered, normalised, by the parser: imports hold few.
constexpr size_t kMaxMemo = 4096;
constexpr int kCancelled = -ECANCELED;  // the dry run's way out of update() without a commit

// One input line, parsed and checked as far as it can be without the database.
struct Prepared {
  uint64_t line = 0;
  std::string error;  // not empty: the line is refused
  std::string userRef;
  TokenRecord record;  // userId, name (when defaulted), expiresAt and lifetime set by the writer
  bool nameGiven = false;
  std::optional<int64_t> lifetime;
  std::optional<int64_t> expiresAt;
  bool createdGiven = false;
  bool updatedGiven = false;
  std::string key;  // a minted token: printed once its batch is committed
};

struct Batch {
  std::vector<Prepared> items;
  uint64_t firstLine = 0;
  uint64_t lastLine = 0;
};

// ---- Field parsing -------------------------------------------------------------------------

// Unix seconds (a number) or RFC 3339 ("2024-05-01T12:00:00Z", fractions and offsets allowed).
Result<int64_t> parseTime(const Json& v, std::string_view field) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (!v.is_string()) {
    return makeError(fmt::format("\"{}\": want Unix seconds or an RFC 3339 time", field));
  }
  const std::string& s = v.get_ref<const std::string&>();
  auto bad = [&] {
    return makeError(fmt::format("\"{}\": \"{}\" is not an RFC 3339 time", field, s));
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
  tm t{};
  int year, month, day, hour, minute, second;
  if (!digits(0, 4, year) || s.size() < 20 || s[4] != '-' || !digits(5, 2, month) || s[7] != '-' ||
      !digits(8, 2, day) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      !digits(11, 2, hour) || s[13] != ':' || !digits(14, 2, minute) || s[16] != ':' ||
      !digits(17, 2, second)) {
    return bad();
  }
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60)
    return bad();
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    ++i;
    size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start) return bad();
  }
  int offset = 0;
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
  t.tm_year = year - 1900;
  t.tm_mon = month - 1;
  t.tm_mday = day;
  t.tm_hour = hour;
  t.tm_min = minute;
  t.tm_sec = second;
  return static_cast<int64_t>(timegm(&t)) - offset;
}

// Seconds (a number) or a duration ("720h", "30d").
Result<int64_t> parseLifetime(const Json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_string()) return parseDuration(v.get_ref<const std::string&>());
  return makeError("\"lifetime\": want seconds or a duration such as \"30d\"");
}

// An array of strings, or one string (which may hold a comma-separated list).
Result<std::vector<std::string>> parseList(const Json& v, std::string_view field) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
    return out;
  }
  if (!v.is_array()) return makeError(fmt::format("\"{}\": want an array of strings", field));
  for (const Json& item : v) {
    if (!item.is_string()) return makeError(fmt::format("\"{}\": want an array of strings", field));
    out.push_back(item.get<std::string>());
  }
  return out;
}

Result<Digest> parseHexDigest(std::string_view hex) {
  if (hex.starts_with("\\x")) hex.remove_prefix(2);  // PostgreSQL's bytea output
  if (hex.size() != 64) {
    return makeError("\"hashed_secret\": want the 64 hex digits of the secret's SHA-256");
  }
  Digest d;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < d.size(); ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return makeError("\"hashed_secret\": not hexadecimal");
    d[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return d;
}

// Normalises scope and allow lists, remembering the answers: a bulk import repeats a few lists
// millions of times.
class ListMemo {
 public:
  Result<std::vector<std::string>> scopes(const std::vector<std::string>& raw) {
    return lookup(scopes_, raw, [](const std::vector<std::string>& r) {
      return normalizeScopes(splitList(r), false);
    });
  }
  Result<std::vector<std::string>> allowList(const std::vector<std::string>& raw) {
    return lookup(allow_, raw,
                  [](const std::vector<std::string>& r) -> Result<std::vector<std::string>> {
                    auto a = normalizeAllowList(r);
                    if (!a) return a.error();
                    return allowListStrings(*a);
                  });
  }

 private:
  using Memo = std::unordered_map<std::string, Result<std::vector<std::string>>>;
  template <class Fn>
  Result<std::vector<std::string>> lookup(Memo& memo, const std::vector<std::string>& raw,
                                          Fn&& normalize) {
    key_.clear();
    for (const std::string& s : raw) key_.append(s).push_back('\x1f');
    if (auto it = memo.find(key_); it != memo.end()) return it->second;
    if (memo.size() >= kMaxMemo) memo.clear();
    return memo.emplace(key_, normalize(raw)).first->second;
  }
  Memo scopes_, allow_;
  std::string key_;
};

// Everything about a line that needs no database: the JSON, the key or hash, the lists.
class LineParser {
 public:
  explicit LineParser(int64_t now) : now_(now) {}

  void parse(std::string_view text, Prepared& p) {
    Json j;
    try {
      j = Json::parse(text);
    } catch (const Json::parse_error& e) {
      // nlohmann's message: "[json.exception.parse_error.101] parse error at line 1, ...".
      std::string what = e.what();
      auto at = what.find("] ");
      p.error = "not JSON: " + (at == std::string::npos ? what : what.substr(at + 2));
      return;
    }
    if (!j.is_object()) {
      p.error = "want a JSON object";
      return;
    }
    if (auto r = fill(j, p); !r) p.error = r.error().message;
  }

 private:
  Result<void> fill(const Json& j, Prepared& p) {
    TokenRecord& t = p.record;
    const Json *key = nullptr, *id = nullptr, *secret = nullptr, *hashed = nullptr;
    const Json *scopes = nullptr, *allow = nullptr;
    for (const auto& [name, v] : j.items()) {
      auto str = [&, &name = name, &v = v](std::string& out) -> Result<void> {
        if (!v.is_string()) return makeError(fmt::format("\"{}\": want a string", name));
        out = v.get<std::string>();
        return {};
      };
      if (name == "user" || name == "username" || name == "user_id") {
        if (!p.userRef.empty()) return makeError("give one of \"user\", \"username\", \"user_id\"");
        if (auto r = str(p.userRef); !r) return r;
        if (p.userRef.empty()) return makeError(fmt::format("\"{}\" is empty", name));
      } else if (name == "key") {
        key = &v;
      } else if (name == "id") {
        id = &v;
      } else if (name == "secret") {
        secret = &v;
      } else if (name == "hashed_secret") {
        hashed = &v;
      } else if (name == "name" || name == "token_name") {
        if (p.nameGiven) return makeError("give one of \"name\", \"token_name\"");
        if (auto r = str(t.name); !r) return r;
        p.nameGiven = true;
      } else if (name == "login_type") {
        std::string kind;
        if (auto r = str(kind); !r) return r;
        auto k = parseLoginType(kind);
        if (!k) {
          return makeError(
              fmt::format("\"login_type\": \"{}\" is not token, password, oidc or github", kind));
        }
        t.loginType = *k;
      } else if (name == "scopes") {
        scopes = &v;
      } else if (name == "allow_list") {
        allow = &v;
      } else if (name == "lifetime" || name == "lifetime_seconds") {
        if (p.lifetime) return makeError("give one of \"lifetime\", \"lifetime_seconds\"");
        auto l = parseLifetime(v);
        if (!l) return l.error();
        p.lifetime = *l;
      } else if (name == "expires_at") {
        auto e = parseTime(v, name);
        if (!e) return e.error();
        p.expiresAt = *e;
      } else if (name == "created_at") {
        auto c = parseTime(v, name);
        if (!c) return c.error();
        t.createdAt = *c;
        p.createdGiven = true;
      } else if (name == "updated_at") {
        auto u = parseTime(v, name);
        if (!u) return u.error();
        t.updatedAt = *u;
        p.updatedGiven = true;
      } else if (name == "last_used") {
        auto u = parseTime(v, name);
        if (!u) return u.error();
        t.lastUsed = *u;
      } else {
        return makeError(fmt::format("unknown field \"{}\"", name));
      }
    }
    if (p.userRef.empty()) return makeError("\"user\" is missing (a username or uuid)");
    if (!p.createdGiven) t.createdAt = now_;
    if (!p.updatedGiven) t.updatedAt = now_;

    // Where the secret comes from: exactly one of key, id+secret, id+hashed_secret, or nothing.
    if (key && (id || secret || hashed)) {
      return makeError("give \"key\" alone, or \"id\" with \"secret\" or \"hashed_secret\"");
    }
    if ((secret || hashed) && !id) return makeError("\"secret\" and \"hashed_secret\" need \"id\"");
    if (id && !secret && !hashed) {
      return makeError("\"id\" needs \"secret\" or \"hashed_secret\" (or give neither to mint)");
    }
    if (secret && hashed) return makeError("give \"secret\" or \"hashed_secret\", not both");
    if (key) {
      if (!key->is_string()) return makeError("\"key\": want a string");
      auto parsed = parseToken(key->get_ref<const std::string&>());
      if (!parsed) return makeError("\"key\": not a token <10 of 0-9A-Za-z>-<22 of 0-9A-Za-z>");
      t.id = parsed->id;
      t.secretHash = sha_.digest(parsed->secret);
    } else if (id) {
      if (!id->is_string() || !isTokenId(id->get_ref<const std::string&>()))
        return makeError("\"id\": want 10 characters of 0-9A-Za-z");
      t.id = id->get<std::string>();
      if (secret) {
        const std::string* s =
            secret->is_string() ? &secret->get_ref<const std::string&>() : nullptr;
        if (!s || !parseToken(t.id + "-" + *s))
          return makeError("\"secret\": want 22 characters of 0-9A-Za-z");
        t.secretHash = sha_.digest(*s);
      } else {
        if (!hashed->is_string()) return makeError("\"hashed_secret\": want a hex string");
        auto d = parseHexDigest(hashed->get_ref<const std::string&>());
        if (!d) return d.error();
        t.secretHash = *d;
      }
    } else {
      NewToken nt = mintToken();
      t.id = nt.id;
      t.secretHash = sha_.digest(nt.secret);
      p.key = nt.text();
    }

    const bool session = t.loginType != LoginType::Token;
    if (session && p.nameGiven)
      return makeError("a session token (login_type != token) has no name");
    if (p.nameGiven && t.name.empty()) return makeError("\"name\" is empty");
    if (t.name.size() > 64) return makeError("\"name\" is longer than 64 characters");
    std::vector<std::string> raw;
    if (scopes) {
      auto l = parseList(*scopes, "scopes");
      if (!l) return l.error();
      raw = std::move(*l);
    }
    auto s = memo_.scopes(raw);
    if (!s) return s.error();
    t.scopes = *s;
    raw.clear();
    if (allow) {
      auto l = parseList(*allow, "allow_list");
      if (!l) return l.error();
      raw = std::move(*l);
    }
    auto a = memo_.allowList(raw);
    if (!a) return a.error();
    t.allowList = *a;
    if (p.lifetime && *p.lifetime <= 0) return makeError("lifetime must be positive");
    return {};
  }

  int64_t now_;
  Sha256 sha_;
  ListMemo memo_;
};

// ---- The reading thread --------------------------------------------------------------------

// Batches handed from the reading thread to the writing one; at most `kAhead` wait, so memory
// stays at a few batches whatever the input's size.
class BatchQueue {
 public:
  static constexpr size_t kAhead = 2;

  // Blocks while kAhead batches wait. False when the consumer gave up.
  bool push(Batch b) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return q_.size() < kAhead || stopped_; });
    if (stopped_) return false;
    q_.push_back(std::move(b));
    cv_.notify_all();
    return true;
  }
  void finish(std::optional<std::string> error) {
    std::lock_guard lock(mu_);
    done_ = true;
    readError_ = std::move(error);
    cv_.notify_all();
  }
  // The next batch; nullopt at the end of the input.
  std::optional<Batch> pop() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !q_.empty() || done_; });
    if (q_.empty()) return std::nullopt;
    Batch b = std::move(q_.front());
    q_.pop_front();
    cv_.notify_all();
    return b;
  }
  void stop() {
    std::lock_guard lock(mu_);
    stopped_ = true;
    cv_.notify_all();
  }
  std::optional<std::string> readError() {
    std::lock_guard lock(mu_);
    return readError_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Batch> q_;
  bool done_ = false;
  bool stopped_ = false;
  std::optional<std::string> readError_;
};

void readBatches(FILE* in, const ImportOptions& o, int64_t now, BatchQueue& q) {
  LineParser parser(now);
  char* buf = nullptr;
  size_t cap = 0;
  ScopeExit freeBuf([&] { std::free(buf); });
  uint64_t lineNo = 0;
  Batch batch;
  batch.items.reserve(o.batch);
  for (;;) {
    errno = 0;
    ssize_t n = ::getline(&buf, &cap, in);
    if (n < 0) {
      if (errno != 0 && !std::feof(in)) {
        q.finish(fmt::format("Failed to read line {}: {}", lineNo + 1, std::strerror(errno)));
        return;
      }
      break;
    }
    ++lineNo;
    if (lineNo < o.fromLine) continue;
    std::string_view text(buf, static_cast<size_t>(n));
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    if (text.find_first_not_of(" \t") == std::string_view::npos) continue;
    if (batch.items.empty()) batch.firstLine = lineNo;
    batch.lastLine = lineNo;
    Prepared& p = batch.items.emplace_back();
    p.line = lineNo;
    parser.parse(text, p);
    if (batch.items.size() == o.batch) {
      if (!q.push(std::move(batch))) return;
      batch = Batch{};
      batch.items.reserve(o.batch);
    }
  }
  if (!batch.items.empty() && !q.push(std::move(batch))) return;
  q.finish(std::nullopt);
}

// ---- The writing side ----------------------------------------------------------------------

struct UserInfo {
  Uuid id;
  bool owner = false;
};

struct LineError {
  uint64_t line;
  std::string message;
};

class Importer {
 public:
  Importer(KeyDb& db, const LifetimeConfig& config, const ImportOptions& o)
      : db_(db), config_(config), o_(o) {}

  // Writes one batch in one transaction. False when it was refused (errors_ says why) or the
  // database failed (dbError_).
  bool write(Batch& b, int64_t now) {
    order_.resize(b.items.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
    for (const Prepared& p : b.items) {
      if (!p.error.empty()) note(p.line, p.error);
    }
    if (!errors_.empty()) return false;
    // Id order: each B-tree page the batch touches is visited once, in order.
    std::sort(order_.begin(), order_.end(),
              [&](size_t x, size_t y) { return b.items[x].record.id < b.items[y].record.id; });
    for (size_t i = 1; i < order_.size(); ++i) {
      const Prepared& x = b.items[order_[i - 1]];
      const Prepared& y = b.items[order_[i]];
      if (x.record.id == y.record.id) {
        const Prepared& later = x.line > y.line ? x : y;
        note(later.line, fmt::format("token id \"{}\" is also on line {}", later.record.id,
                                     std::min(x.line, y.line)));
      }
    }
    if (!errors_.empty()) return false;

    size_t created = 0;
    auto r = db_.update([&](Writer& w) -> Result<void> {
      errors_.clear();
      created = 0;
      std::unordered_map<std::string, UserInfo> users;
      std::unordered_set<std::string> names;  // user uuid + name, within this batch
      for (size_t i : order_) {
        Prepared& p = b.items[i];
        TokenRecord& t = p.record;
        auto u = users.find(p.userRef);
        if (u == users.end()) {
          auto resolved = resolveUser(w, p.userRef, now, created);
          if (!resolved) {
            if (resolved.error().code != -ENOENT) return resolved.error();
            note(p.line, resolved.error().message);
            continue;
          }
          u = users.emplace(p.userRef, *resolved).first;
        }
        t.userId = u->second.id;
        if (auto e = settle(p, u->second.owner); !e) {
          note(p.line, e.error().message);
          continue;
        }
        if (t.loginType == LoginType::Token) {
          std::string key(reinterpret_cast<const char*>(t.userId.bytes.data()), 16);
          key += t.name;
          if (!names.insert(std::move(key)).second) {
            note(p.line, fmt::format("A token with name \"{}\" already exists.", t.name));
            continue;
          }
        }
        auto existing = w.tokenBytes(t.id);
        if (!existing) return existing.error();
        if (*existing) {
          note(p.line, fmt::format("token id \"{}\" already exists", t.id));
          continue;
        }
        if (!errors_.empty()) continue;  // refused anyway: only look for more bad lines
        if (auto put = w.putToken(t); !put) {
          if (put.error().code != -EEXIST) return put.error();
          note(p.line, put.error().message);
        }
        if (errors_.size() >= kMaxReportedErrors) break;
      }
      if (!errors_.empty()) return makeError("refused", -EINVAL);
      if (o_.dryRun) return makeError("dry run", kCancelled);
      return {};
    });
    if (!r && r.error().code == kCancelled) {
      usersCreated_ += created;
      return true;
    }
    if (!r && errors_.empty()) dbError_ = r.error().message;
    if (!r) return false;
    usersCreated_ += created;
    return true;
  }

  const std::vector<LineError>& errors() const { return errors_; }
  const std::string& dbError() const { return dbError_; }
  size_t usersCreated() const { return usersCreated_; }

 private:
  void note(uint64_t line, std::string message) {
    if (errors_.size() < kMaxReportedErrors) errors_.push_back({line, std::move(message)});
  }

  Result<UserInfo> resolveUser(Writer& w, const std::string& ref, int64_t now, size_t& created) {
    std::optional<UserRecord> found;
    if (auto id = Uuid::parse(ref)) {
      auto u = w.user(*id);
      if (!u) return u.error();
      found = std::move(*u);
    }
    if (!found) {
      auto u = w.userByName(ref);
      if (!u) return u.error();
      found = std::move(*u);
    }
    if (found) return UserInfo{found->id, hasOwnerRole(found->roles)};
    if (!o_.createUsers || Uuid::parse(ref)) {
      return makeError(
          fmt::format("user \"{}\" not found (create it first, or pass --create-users)", ref),
          -ENOENT);
    }
    if (!isValidUsername(ref)) {
      return makeError(
          fmt::format("invalid username \"{}\": want 1 to 32 of a-z, 0-9, '-' and '_'", ref),
          -ENOENT);
    }
    UserRecord u{Uuid::random(), ref, {}, UserStatus::Active, now, now};
    if (auto r = w.putUser(u); !r) return r.error();
    ++created;
    return UserInfo{u.id, false};
  }

  // What needs the user: the default name, the lifetime (capped for API tokens unless the input
  // carries its own expiry) and the expiry.
  Result<void> settle(Prepared& p, bool owner) {
    TokenRecord& t = p.record;
    const bool session = t.loginType != LoginType::Token;
    if (!session && !p.nameGiven) t.name = "import-" + t.id;
    if (p.expiresAt) {
      t.expiresAt = *p.expiresAt;
      t.lifetimeSeconds =
          p.lifetime ? *p.lifetime : std::max<int64_t>(1, *p.expiresAt - t.createdAt);
      return {};
    }
    int64_t lifetime = 0;
    if (session) {
      lifetime = p.lifetime ? *p.lifetime : config_.sessionDuration;
    } else {
      auto l = apiTokenLifetime(p.lifetime, owner, config_);
      if (!l) return l.error();
      lifetime = *l;
    }
    t.lifetimeSeconds = lifetime;
    t.expiresAt = t.createdAt + lifetime;
    return {};
  }

  KeyDb& db_;
  LifetimeConfig config_;
  const ImportOptions& o_;
  std::vector<size_t> order_;
  std::vector<LineError> errors_;
  std::string dbError_;
  size_t usersCreated_ = 0;
};

std::string rate(double count, double seconds) {
  return seconds > 0 ? fmt::format("{:.0f}", count / seconds) : "-";
}

}  // namespace

void addImportCommand(CLI::App& app, ImportCommand& cmd) {
  ImportOptions& o = cmd.options;
  cmd.command = app.add_subcommand(
      "import",
      "Bulk-load tokens from JSON lines (operator mode only), in one write transaction per batch.\n"
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
      "A batch with a bad line is refused whole (nothing of it is written) and every bad line of\n"
      "it is named; earlier batches stay written and the message says how to resume.\n"
      "Example: "
      "{\"user\":\"alice\",\"name\":\"ci\",\"scopes\":[\"workspace:read\"],\"lifetime\":\"30d\"}");
  cmd.command->add_option("file", o.input, "JSON lines to read; - for stdin (default)");
  cmd.command->add_option("--batch", o.batch, "Lines per write transaction (default 50000)")
      ->check(CLI::Range(size_t{1}, size_t{10'000'000}));
  cmd.command->add_option("--keys-out", o.keysOut,
                          "Write minted keys to this file (mode 0600) instead of stdout");
  cmd.command->add_flag("--create-users", o.createUsers,
                        "Create users named by a line that do not exist (member role)");
  cmd.command->add_option("--from-line", o.fromLine, "Skip the lines before this one (resume)")
      ->check(CLI::Range(uint64_t{1}, UINT64_MAX));
  cmd.command->add_flag("--dry-run", o.dryRun,
                        "Check every line against the database; write nothing");
  cmd.command->add_flag("-q,--quiet", o.quiet, "No progress lines on stderr");
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
  static char inBuf[1 << 20];
  std::setvbuf(in, inBuf, _IOFBF, sizeof inBuf);

  FILE* keys = stdout;
  if (!o.keysOut.empty()) {
    int fd = ::open(o.keysOut.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || !(keys = ::fdopen(fd, "w"))) {
      if (fd >= 0) ::close(fd);
      return fail(fmt::format("Failed to open {}: {}", o.keysOut, std::strerror(errno)));
    }
  }
  ScopeExit closeKeys([&] {
    if (keys != stdout) std::fclose(keys);
  });

  auto db = KeyDb::open(dbDir);
  if (!db) return fail(db.error().message);

  const int64_t now = clockNow();
  const int64_t start = monotonicNanos();
  BatchQueue queue;
  std::thread reader([&] { readBatches(in, o, now, queue); });
  ScopeExit joinReader([&] {
    queue.stop();
    reader.join();
  });

  Importer importer(**db, *config, o);
  uint64_t imported = 0, minted = 0, firstLine = 0, lastDone = 0;
  size_t batches = 0;
  while (auto batch = queue.pop()) {
    if (firstLine == 0) firstLine = batch->firstLine;
    if (!importer.write(*batch, now)) {
      std::string done = imported == 0 ? "nothing was imported before it"
                                       : fmt::format("lines {}-{} ({} tokens) were imported",
                                                     firstLine, lastDone, imported);
      if (!importer.dbError().empty()) {
        fmt::print(stderr, "tokenctl: {}\n", importer.dbError());
      }
      for (const LineError& e : importer.errors()) {
        fmt::print(stderr, "tokenctl: line {}: {}\n", e.line, e.message);
      }
      fmt::print(stderr,
                 "tokenctl: refused the batch of lines {}-{}: nothing of it was written; {}. "
                 "Fix it and rerun with --from-line {}\n",
                 batch->firstLine, batch->lastLine, done, batch->firstLine);
      return kExitFailed;
    }
    for (const Prepared& p : batch->items) {
      if (!p.key.empty() && !o.dryRun) {
        std::fwrite(p.key.data(), 1, p.key.size(), keys);
        std::fputc('\n', keys);
        ++minted;
      }
    }
    imported += batch->items.size();
    lastDone = batch->lastLine;
    ++batches;
    if (!o.quiet && batches % 20 == 0) {
      double s = static_cast<double>(monotonicNanos() - start) / 1e9;
      fmt::print(stderr, "tokenctl: {} tokens in {:.1f} s ({} tokens/s)\n", imported, s,
                 rate(static_cast<double>(imported), s));
    }
  }
  if (auto e = queue.readError()) return fail(*e);
  if (std::fflush(keys) != 0)
    return fail(fmt::format("Failed to write the keys: {}", std::strerror(errno)));
  double s = static_cast<double>(monotonicNanos() - start) / 1e9;
  if (!o.quiet || o.dryRun) {
    fmt::print(stderr,
               "tokenctl: {} {} tokens ({} minted) from lines {}-{} in {:.2f} s ({} tokens/s), "
               "{} transactions, {} users created\n",
               o.dryRun ? "checked (dry run, nothing written)" : "imported", imported, minted,
               firstLine, lastDone, s, rate(static_cast<double>(imported), s), batches,
               importer.usersCreated());
  }
  return 0;
}

}  // namespace tokend::tools
