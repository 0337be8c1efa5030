// Management operations on users and tokens.
#include "verifier/manage.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>

#include "verifier/allow_list.h"
#include "verifier/reach.h"
#include "verifier/scopes.h"
#include "verifier/token.h"

namespace tokend::verifier {
namespace {

constexpr const char* kAdjectives[] = {
    "amber", "bold",  "brisk", "calm",   "clever", "crisp", "eager", "fair",  "gentle", "glad",
    "grand", "happy", "keen",  "lively", "lucky",  "merry", "noble", "proud", "quick",  "quiet",
    "rapid", "sharp", "shiny", "steady", "sunny",  "swift", "tidy",  "vivid", "warm",   "wise"};
constexpr const char* kNouns[] = {"badger", "beacon", "cedar",   "comet", "falcon", "fern",
                                  "harbor", "heron",  "lantern", "maple", "meadow", "otter",
                                  "pebble", "pine",   "quartz",  "raven", "river",  "sparrow",
                                  "spruce", "summit", "tiger",   "tulip", "walnut", "willow",
                                  "wren",   "zephyr", "aspen",   "birch", "canyon", "delta"};

uint32_t randomU32() {
  uint32_t v = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof v) != 1) std::abort();
  return v;
}

// `ref` must already be fit to show (redactTokenRef for token refs).
Error notFound(std::string_view what, std::string_view ref) {
  return makeError(fmt::format("{} \"{}\" not found", what, ref), -ENOENT);
}

// Whether a user other than `id` is an active owner.
Result<bool> anotherActiveOwner(Txn& txn, const Uuid& id) {
  auto all = txn.users();
  if (!all) return all.error();
  return std::any_of(all->begin(), all->end(),
                     [&](const UserRecord& u) { return u.id != id && isActiveOwner(u); });
}

// Refuses to `verb` `u` when that leaves no active owner: nobody could administer owners, or the
// site, through the API any more (only operator mode could repair it).
Result<void> keepAnOwner(Txn& txn, const UserRecord& u, std::string_view verb) {
  if (!isActiveOwner(u)) return {};
  auto other = anotherActiveOwner(txn, u.id);
  if (!other) return other.error();
  if (*other) return {};
  return makeError(fmt::format("cannot {} \"{}\": they are the last active owner; make another "
                               "user an owner first",
                               verb, u.username),
                   -EPERM);
}

void wipe(std::string& s) {
  OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

Result<UserRecord> readUser(Txn& txn, std::string_view ref) {
  if (auto id = Uuid::parse(ref)) {
    auto u = txn.user(*id);
    if (!u) return u.error();
    if (*u) return std::move(**u);
  }
  auto u = txn.userByName(ref);
  if (!u) return u.error();
  // No username is shaped like a token (33 characters, upper case): such a ref is one pasted in
  // the wrong place, and a valid name is shown as typed.
  if (!*u) return notFound("user", isValidUsername(ref) ? std::string(ref) : redactTokenRef(ref));
  return std::move(**u);
}

Result<TokenRecord> readToken(Txn& txn, std::string_view ref, std::optional<Uuid> user) {
  std::string_view id = ref;
  if (auto parsed = parseToken(ref)) id = parsed->id;
  if (isTokenId(id)) {
    auto t = txn.token(id);
    if (!t) return t.error();
    if (*t && (!user || (*t)->userId == *user)) return std::move(**t);
  }
  if (user) {
    auto t = txn.tokenByName(*user, ref);
    if (!t) return t.error();
    if (!*t) return notFound("token", redactTokenRef(ref));
    return std::move(**t);
  }
  auto all = txn.tokens(std::nullopt);
  if (!all) return all.error();
  std::vector<TokenRecord> matches;
  for (TokenRecord& t : *all)
    if (t.loginType == LoginType::Token && t.name == ref) matches.push_back(std::move(t));
  if (matches.empty()) return notFound("token", redactTokenRef(ref));
  if (matches.size() > 1) {
    return makeError(
        fmt::format("token name \"{}\" is ambiguous: {} users hold it; name the user with --user",
                    redactTokenRef(ref), matches.size()));
  }
  return std::move(matches.front());
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF) without C0 or
// C1 control characters or DEL.
bool isPrintableUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f) return false;
      ++i;
      continue;
    }
    size_t n = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc2 ? 1 : 0;
    if (n == 0 || c > 0xf4 || i + n >= s.size()) return false;
    uint32_t cp = c & (0x3f >> n);
    for (size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
      return false;
    i += n + 1;
  }
  return true;
}

// The creating token's record, read in the write transaction that creates `t`, and the rules.
Result<void> withinReach(Txn& txn, std::string_view creatorId, const TokenRecord& t) {
  auto creator = txn.token(creatorId);
  if (!creator) return creator.error();
  if (!*creator) return makeError("Forbidden: the creating token no longer exists.", -EPERM);
  return checkCreation(**creator, t);
}

// Gives `t` a fresh id and secret, stores it and sets `key` to the whole token. update() may run
// a transaction again (a grown map): the key of a try that did not commit is wiped, not left in
// freed memory.
Result<void> mint(TokenRecord& t, std::string& key, Writer& w) {
  wipe(key);
  Sha256 sha;
  NewToken nt = mintToken();
  t.id = nt.id;
  t.secretHash = sha.digest(nt.secret);
  key = nt.text();
  wipe(nt.secret);
  return w.putToken(t);
}

}  // namespace

Result<void> Manager::writable() const {
  if (readOnly_.empty()) return {};
  return makeError(readOnly_, -EROFS);
}

bool isValidUsername(std::string_view n) {
  if (n.empty() || n.size() > 32) return false;
  auto lowerAlnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!lowerAlnum(n[0])) return false;
  return std::all_of(n.begin() + 1, n.end(),
                     [&](char c) { return lowerAlnum(c) || c == '-' || c == '_'; });
}

std::string randomTokenName() {
  uint32_t r = randomU32();
  return fmt::format("{}-{}-{:04}", kAdjectives[r % std::size(kAdjectives)],
                     kNouns[(r / 32) % std::size(kNouns)], (r / 1024) % 10000);
}

Result<UserRecord> Manager::createUser(std::string_view username,
                                       const std::vector<std::string>& roles, int64_t now) {
  if (auto w = writable(); !w) return w.error();
  if (!isValidUsername(username)) {
    return makeError(fmt::format(
        "invalid username \"{}\": want 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter "
        "or digit",
        username));
  }
  auto normalized = normalizeRoles(splitList(roles));
  if (!normalized) return normalized.error();
  UserRecord u{Uuid::random(), std::string(username), *normalized, UserStatus::Active, now, now};
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto existing = w.userByName(username);
    if (!existing) return existing.error();
    if (*existing) return makeError(fmt::format("user \"{}\" already exists", username), -EEXIST);
    if (auto room = w.requireRoom(); !room) return room;
    return w.putUser(u);
  });
  if (!r) return r.error();
  return u;
}

Result<UserRecord> Manager::user(std::string_view ref) {
  auto reader = db_.reader();
  if (!reader) return reader.error();
  if (auto b = (*reader)->begin(); !b) return b.error();
  auto u = readUser(**reader, ref);
  (*reader)->end();
  return u;
}

Result<std::vector<UserRecord>> Manager::users() {
  auto reader = db_.reader();
  if (!reader) return reader.error();
  if (auto b = (*reader)->begin(); !b) return b.error();
  auto all = (*reader)->users();
  (*reader)->end();
  return all;
}

Result<UserRecord> Manager::setStatus(std::string_view ref, UserStatus status, int64_t now) {
  if (auto w = writable(); !w) return w.error();
  UserRecord out;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto u = readUser(w, ref);
    if (!u) return u.error();
    if (status == UserStatus::Suspended) {
      if (auto keep = keepAnOwner(w, *u, "suspend"); !keep) return keep;
    }
    u->status = status;
    u->updatedAt = now;
    out = *u;
    return w.putUser(*u);
  });
  if (!r) return r.error();
  return out;
}

Result<UserRecord> Manager::setRoles(std::string_view ref, const std::vector<std::string>& roles,
                                     int64_t now) {
  if (auto w = writable(); !w) return w.error();
  auto normalized = normalizeRoles(splitList(roles));
  if (!normalized) return normalized.error();
  UserRecord out;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto u = readUser(w, ref);
    if (!u) return u.error();
    const bool promoted = !hasOwnerRole(u->roles) && hasOwnerRole(*normalized);
    if (!hasOwnerRole(*normalized)) {
      if (auto keep = keepAnOwner(w, *u, "take the owner role from"); !keep) return keep;
    }
    u->roles = *normalized;
    u->updatedAt = now;
    out = *u;
    if (auto p = w.putUser(*u); !p) return p;
    if (!promoted) return {};
    // Owner permissions come from the user's roles at verify time, so a token made under the
    // member cap would otherwise carry them for as long as it was made for (L4).
    auto tokens = w.tokens(u->id);
    if (!tokens) return tokens.error();
    const int64_t cap = now + config_.maxAdminTokenLifetime;
    for (TokenRecord& t : *tokens) {
      if (t.expiresAt <= cap) continue;
      t.expiresAt = cap;
      t.updatedAt = now;
      if (auto p = w.putToken(t); !p) return p;
    }
    return {};
  });
  if (!r) return r.error();
  return out;
}

Result<UserRecord> Manager::deleteUser(std::string_view ref) {
  if (auto w = writable(); !w) return w.error();
  UserRecord out;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto u = readUser(w, ref);
    if (!u) return u.error();
    if (auto keep = keepAnOwner(w, *u, "delete"); !keep) return keep;
    out = *u;
    return w.deleteUser(u->id);
  });
  if (!r) return r.error();
  return out;
}

Result<CreatedToken> Manager::createToken(const CreateTokenRequest& req, int64_t now) {
  if (auto w = writable(); !w) return w.error();
  auto scopes = normalizeScopes(splitList(req.scopes), req.publicOnly);
  if (!scopes) return scopes.error();
  auto allow = normalizeAllowList(req.allowList);
  if (!allow) return allow.error();
  if (req.name && req.name->empty()) return makeError("token name must not be empty");
  if (req.name && req.name->size() > 64)
    return makeError("token name is longer than 64 characters");
  // Names are shown in listings, tables and JSON to other people (an owner listing every
  // user's tokens): no terminal escapes, no line breaks, nothing JSON cannot carry.
  if (req.name && !isPrintableUtf8(*req.name))
    return makeError("token name must be printable UTF-8 text without control characters");

  CreatedToken out;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto u = w.user(req.user);
    if (!u) return u.error();
    if (!*u) return notFound("user", req.user.toString());
    auto lifetime = apiTokenLifetime(req.lifetime, hasOwnerRole((*u)->roles), config_);
    if (!lifetime) return lifetime.error();
    TokenRecord& t = out.record;
    t = TokenRecord{};
    t.userId = req.user;
    t.loginType = LoginType::Token;
    t.name = req.name ? *req.name : randomTokenName();
    t.scopes = *scopes;
    t.allowList = allowListStrings(*allow);
    t.createdAt = t.updatedAt = now;
    t.lifetimeSeconds = *lifetime;
    t.expiresAt = now + *lifetime;
    t.lastUsed = 0;
    if (req.creator) {
      if (auto reach = withinReach(w, *req.creator, t); !reach) return reach;
    }
    if (auto room = w.requireRoom(); !room) return room;
    return mint(t, out.key, w);
  });
  if (!r) return r.error();
  return out;
}

Result<CreatedToken> Manager::createSession(const Uuid& user, LoginType kind, int64_t now,
                                            std::optional<std::string> creator) {
  if (auto w = writable(); !w) return w.error();
  if (kind == LoginType::Token)
    return makeError("a session's login type is password, oidc or github");
  CreatedToken out;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto u = w.user(user);
    if (!u) return u.error();
    if (!*u) return notFound("user", user.toString());
    TokenRecord& t = out.record;
    t = TokenRecord{};
    t.userId = user;
    t.loginType = kind;
    t.scopes = {"coder:all"};
    t.allowList = {"*:*"};
    t.createdAt = t.updatedAt = now;
    t.lifetimeSeconds = config_.sessionDuration;
    t.expiresAt = now + config_.sessionDuration;
    if (creator) {
      if (auto reach = withinReach(w, *creator, t); !reach) return reach;
    }
    if (auto room = w.requireRoom(); !room) return room;
    return mint(t, out.key, w);
  });
  if (!r) return r.error();
  return out;
}

Result<std::vector<TokenRecord>> Manager::tokens(std::optional<Uuid> user, bool includeExpired,
                                                 int64_t now) {
  auto reader = db_.reader();
  if (!reader) return reader.error();
  if (auto b = (*reader)->begin(); !b) return b.error();
  auto all = (*reader)->tokens(user);
  (*reader)->end();
  if (!all) return all.error();
  if (!includeExpired) {
    std::erase_if(*all, [&](const TokenRecord& t) { return isExpired(t.expiresAt, now); });
  }
  return all;
}

Result<TokenRecord> Manager::findToken(std::string_view ref, std::optional<Uuid> user) {
  auto reader = db_.reader();
  if (!reader) return reader.error();
  if (auto b = (*reader)->begin(); !b) return b.error();
  auto t = readToken(**reader, ref, user);
  (*reader)->end();
  return t;
}

Result<TokenRecord> Manager::expireToken(std::string_view ref, std::optional<Uuid> user,
                                         int64_t now) {
  if (auto w = writable(); !w) return w.error();
  TokenRecord out;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto t = readToken(w, ref, user);
    if (!t) return t.error();
    // One second back: a token whose expiry equals now is still valid (SPEC 3), and a removed
    // token must be refused at once.
    t->expiresAt = std::min(t->expiresAt, now - 1);
    t->updatedAt = now;
    out = *t;
    return w.putToken(*t);
  });
  if (!r) return r.error();
  return out;
}

Result<TokenRecord> Manager::deleteToken(std::string_view ref, std::optional<Uuid> user) {
  if (auto w = writable(); !w) return w.error();
  TokenRecord out;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    auto t = readToken(w, ref, user);
    if (!t) return t.error();
    out = *t;
    return w.deleteToken(t->id);
  });
  if (!r) return r.error();
  return out;
}

}  // namespace tokend::verifier
