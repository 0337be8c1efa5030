// The verification decision: token + optional permission/object/owner -> a verdict (SPEC 6).
//
// decide() is pure: it sees only the facts of one token and the request, and the clock is passed
// in. verify() adds the one key-database read. The order of the checks is the contract:
// malformed, unknown, bad_secret, expired, user_inactive, then bad_request, scope, allow_list,
// role.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "base/result.h"
#include "base/uuid.h"
#include "verifier/allow_list.h"
#include "verifier/keydb.h"
#include "verifier/reason.h"
#include "verifier/records.h"
#include "verifier/scopes.h"
#include "verifier/token.h"

namespace tokend::verifier {

// A parsed request: what is asked of the token. `bad` when any part does not parse or is not in
// the catalog (the bad_request verdict, reported after authentication).
struct Query {
  bool hasPermission = false;
  int permission = 0;
  bool hasObject = false;
  ObjectRef object;
  bool hasOwner = false;
  Uuid owner;
  bool bad = false;
};

// Empty strings (and "-" for the object) mean absent.
Query parseQuery(std::string_view permission, std::string_view object, std::string_view owner);

// What a decision needs to know of one token, from the database or from a cache slot.
struct TokenFacts {
  const uint8_t* secretHash = nullptr;  // 32 bytes
  Uuid userId;
  int64_t expiresAt = 0;
  bool userActive = true;
  const Grant* grant = nullptr;
  std::span<const AllowEntry> allow;
};

Reason decide(const TokenFacts& token, const Digest& presentedHash, const Query& query,
              int64_t now);

// Whether an `ok` verdict for `query` rests on the caller's word about the owner (SPEC 6): a
// permission was asked and the token's user holds it only as an owned role permission, so decide()
// granted it because the query named that user as the owner. `site` is the token's Grant::site.
// tokend cannot know who owns an object: every protocol marks such a grant "owned".
constexpr bool restsOnOwner(const PermSet& site, const Query& query) {
  return query.hasPermission && !site.test(query.permission);
}

// Everything known of one token after the database read, compiled. Large (the allow list is
// inline), so keep one per thread and reuse it.
struct CompiledToken {
  std::array<char, kTokenIdLength> id{};
  Digest secretHash{};
  Uuid userId;
  LoginType loginType = LoginType::Token;
  bool userActive = true;
  int64_t expiresAt = 0;
  int64_t lifetimeSeconds = 0;
  int64_t lastUsed = 0;
  Grant grant;
  uint8_t usernameLength = 0;
  std::array<char, 32> username{};
  uint16_t allowCount = 0;
  std::array<AllowEntry, kMaxAllowEntries> allow{};

  std::string_view usernameView() const { return {username.data(), usernameLength}; }
  std::string_view idView() const { return {id.data(), id.size()}; }
  TokenFacts facts() const {
    return TokenFacts{
        secretHash.data(), userId, expiresAt,
        userActive,        &grant, std::span<const AllowEntry>(allow.data(), allowCount)};
  }
};

// Compiles a token record and its user's record into `out`. Errors (-EBADMSG) for records that
// decode but break the model (a corrupt or hand-edited database): an id that is not a token id,
// a token of another user, an unknown scope, a bad allow-list entry.
Result<void> compileToken(const TokenRecord& token, const UserRecord& user, CompiledToken& out);

// Reads token `id` and its user and compiles them into `out`. Returns false when there is no such
// token (or its user is gone); an error when a record is corrupt or the read fails.
Result<bool> loadToken(Txn& txn, std::string_view id, CompiledToken& out);

struct Verdict {
  Reason reason = Reason::Missing;
  // Filled when the token was found (reason past `unknown`):
  Uuid userId;
  std::array<char, kTokenIdLength> tokenId{};
  LoginType loginType = LoginType::Token;
  int64_t expiresAt = 0;
  uint8_t usernameLength = 0;
  std::array<char, 32> username{};
  bool owned = false;  // allowed only on the caller's word about the owner (restsOnOwner)

  bool allowed() const { return reason == Reason::Ok; }
  std::string_view usernameView() const { return {username.data(), usernameLength}; }
  std::string_view tokenIdView() const { return {tokenId.data(), tokenId.size()}; }
};

void fillVerdict(const CompiledToken& token, Reason reason, Verdict& out);

// The whole decision over one key-database read. `scratch` is reused per thread.
Result<Verdict> verify(Txn& txn, Sha256& sha, std::string_view token, const Query& query,
                       int64_t now, CompiledToken& scratch);

}  // namespace tokend::verifier
