// The bridge between the token model and the cache's raw layout: encoding a compiled token into a
// CacheEntry, and deciding a verification from a cache hit. The one place shm/ meets verifier/;
// used by the daemon (fills and hits) and by libtokend (the fast path), so both decide alike.
#pragma once

#include <optional>

#include "shm/cache.h"
#include "verifier/verify.h"

namespace tokend::shm {

static_assert(kTokenIdLength == verifier::kTokenIdLength);
static_assert(kPermWords == verifier::kPermWords);
static_assert(kAllowAnyType == verifier::catalog::kAnyResource);

// Fills `out` from `token`. An allow list longer than kInlineAllow sets kFlagAllowOverflow.
void encodeEntry(const verifier::CompiledToken& token, CacheEntry& out);

// The verdict a cache hit gives, or nullopt when the entry cannot decide alone: the token looks
// expired (the cached expiry is a lower bound), or an object check needs an allow list too long
// to inline. `presentedHash` is SHA-256 of the presented secret.
std::optional<verifier::Reason> decideFromEntry(const CacheEntry& entry,
                                                const verifier::Digest& presentedHash,
                                                const verifier::Query& query, int64_t now);

// For an `ok` verdict decided from or filled into `entry`: whether it rests on the caller's word
// about the owner (verifier::restsOnOwner over the entry's site permissions).
bool grantOwned(const CacheEntry& entry, const verifier::Query& query);

}  // namespace tokend::shm
