// Encoding compiled tokens into cache entries and deciding from cache hits.
#include "shm/codec.h"

#include <algorithm>
#include <cstring>

#include "verifier/lifetime.h"

namespace tokend::shm {

using ModelAllow = verifier::AllowEntry;

void encodeEntry(const verifier::CompiledToken& t, CacheEntry& out) {
  std::memset(&out, 0, sizeof out);
  std::memcpy(out.tokenId, t.id.data(), kTokenIdLength);
  out.loginType = static_cast<uint8_t>(t.loginType);
  out.flags = t.userActive ? kFlagUserActive : 0;
  std::memcpy(out.userId, t.userId.bytes.data(), kUuidLength);
  std::memcpy(out.secretHash, t.secretHash.data(), kSecretHashLength);
  out.expiresAt = t.expiresAt;
  out.lifetimeSeconds = t.lifetimeSeconds;
  out.lastUsed = t.lastUsed;
  std::copy(t.grant.scopes.w.begin(), t.grant.scopes.w.end(), out.scopes);
  std::copy(t.grant.site.w.begin(), t.grant.site.w.end(), out.site);
  std::copy(t.grant.owned.w.begin(), t.grant.owned.w.end(), out.owned);
  out.usernameLen = static_cast<uint8_t>(std::min<size_t>(t.usernameLength, kUsernameMax));
  std::memcpy(out.username, t.username.data(), out.usernameLen);
  if (t.allowCount > kInlineAllow) {
    out.flags |= kFlagAllowOverflow;
    return;
  }
  out.allowCount = static_cast<uint8_t>(t.allowCount);
  for (size_t i = 0; i < t.allowCount; ++i) {
    const ModelAllow& a = t.allow[i];
    out.allow[i].type = a.type;
    out.allow[i].anyId = a.anyId ? 1 : 0;
    std::memcpy(out.allow[i].id, a.id.bytes.data(), kUuidLength);
  }
}

std::optional<verifier::Reason> decideFromEntry(const CacheEntry& e,
                                                const verifier::Digest& presentedHash,
                                                const verifier::Query& query, int64_t now) {
  if (verifier::isExpired(e.expiresAt, now)) return std::nullopt;
  bool overflow = (e.flags & kFlagAllowOverflow) != 0;
  if (overflow && query.hasPermission) return std::nullopt;

  verifier::Grant grant;
  std::copy(e.scopes, e.scopes + kPermWords, grant.scopes.w.begin());
  std::copy(e.site, e.site + kPermWords, grant.site.w.begin());
  std::copy(e.owned, e.owned + kPermWords, grant.owned.w.begin());
  ModelAllow allow[kInlineAllow];
  size_t count = overflow ? 0 : std::min<size_t>(e.allowCount, kInlineAllow);
  for (size_t i = 0; i < count; ++i) {
    allow[i].type = e.allow[i].type;
    allow[i].anyId = e.allow[i].anyId != 0;
    std::memcpy(allow[i].id.bytes.data(), e.allow[i].id, kUuidLength);
  }
  verifier::TokenFacts facts;
  facts.secretHash = e.secretHash;
  std::memcpy(facts.userId.bytes.data(), e.userId, kUuidLength);
  facts.expiresAt = e.expiresAt;
  facts.userActive = (e.flags & kFlagUserActive) != 0;
  facts.grant = &grant;
  facts.allow = std::span<const ModelAllow>(allow, count);
  return verifier::decide(facts, presentedHash, query, now);
}

bool grantOwned(const CacheEntry& e, const verifier::Query& query) {
  return verifier::restsOnOwner(verifier::PermSet::fromWords(e.site), query);
}

}  // namespace tokend::shm
