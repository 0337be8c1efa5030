// The verification decision.
#include "verifier/verify.h"

#include <algorithm>
#include <cstring>

#include "verifier/lifetime.h"

namespace tokend::verifier {

Query parseQuery(std::string_view permission, std::string_view object, std::string_view owner) {
  Query q;
  if (!permission.empty()) {
    auto bit = catalog::findPermission(permission);
    q.hasPermission = true;
    if (bit) {
      q.permission = *bit;
    } else {
      q.bad = true;
    }
  }
  if (!object.empty() && object != "-") {
    q.hasObject = true;
    auto colon = object.find(':');
    auto type = colon == std::string_view::npos ? std::nullopt
                                                : catalog::findResource(object.substr(0, colon));
    auto id =
        colon == std::string_view::npos ? std::nullopt : Uuid::parse(object.substr(colon + 1));
    if (type && id) {
      q.object = ObjectRef{static_cast<uint16_t>(*type), *id};
    } else {
      q.bad = true;
    }
  }
  if (!owner.empty()) {
    q.hasOwner = true;
    if (auto id = Uuid::parse(owner)) {
      q.owner = *id;
    } else {
      q.bad = true;
    }
  }
  return q;
}

Reason decide(const TokenFacts& t, const Digest& presented, const Query& q, int64_t now) {
  if (!digestEquals(t.secretHash, presented.data())) return Reason::BadSecret;
  if (isExpired(t.expiresAt, now)) return Reason::Expired;
  if (!t.userActive) return Reason::UserInactive;
  if (q.bad) return Reason::BadRequest;
  if (!q.hasPermission) return Reason::Ok;
  if (!t.grant->scopes.test(q.permission)) return Reason::Scope;
  if (!allowListAdmits(t.allow, catalog::resourceOf(q.permission),
                       q.hasObject ? &q.object : nullptr)) {
    return Reason::AllowList;
  }
  if (t.grant->site.test(q.permission)) return Reason::Ok;
  if (t.grant->owned.test(q.permission) && q.hasOwner && q.owner == t.userId) return Reason::Ok;
  return Reason::Role;
}

Result<void> compileToken(const TokenRecord& t, const UserRecord& u, CompiledToken& out) {
  // The cache and every answer copy exactly kTokenIdLength bytes of the id.
  if (!isTokenId(t.id)) return makeError("token record: id is not a token id", -EBADMSG);
  if (t.userId != u.id) return makeError("token record " + t.id + ": user mismatch", -EBADMSG);
  auto scopes = compileScopes(t.scopes);
  if (!scopes) return makeError("token record " + t.id + ": " + scopes.error().message, -EBADMSG);
  std::copy_n(t.id.data(), kTokenIdLength, out.id.data());
  out.secretHash = t.secretHash;
  out.userId = t.userId;
  out.loginType = t.loginType;
  out.userActive = u.status == UserStatus::Active;
  out.expiresAt = t.expiresAt;
  out.lifetimeSeconds = t.lifetimeSeconds;
  out.lastUsed = t.lastUsed;
  out.grant = compileGrant(*scopes, u.roles);
  out.usernameLength = static_cast<uint8_t>(std::min(u.username.size(), out.username.size()));
  std::memcpy(out.username.data(), u.username.data(), out.usernameLength);
  out.allowCount = 0;
  for (const std::string& entry : t.allowList) {
    auto e = parseAllowEntry(entry);
    if (!e) return makeError("token record " + t.id + ": " + e.error().message, -EBADMSG);
    if (out.allowCount == kMaxAllowEntries) break;
    out.allow[out.allowCount++] = *e;
  }
  if (t.allowList.empty()) out.allow[out.allowCount++] = AllowEntry{};
  return {};
}

Result<bool> loadToken(Txn& txn, std::string_view id, CompiledToken& out) {
  auto rec = txn.token(id);
  if (!rec) return rec.error();
  if (!*rec) return false;
  const TokenRecord& t = **rec;
  if (t.id != id)
    return makeError("token record under key " + std::string(id) + " has another id", -EBADMSG);
  auto user = txn.user(t.userId);
  if (!user) return user.error();
  if (!*user) return false;
  if (auto r = compileToken(t, **user, out); !r) return r.error();
  return true;
}

void fillVerdict(const CompiledToken& t, Reason reason, Verdict& out) {
  out.reason = reason;
  out.userId = t.userId;
  out.tokenId = t.id;
  out.loginType = t.loginType;
  out.expiresAt = t.expiresAt;
  out.usernameLength = t.usernameLength;
  out.username = t.username;
}

Result<Verdict> verify(Txn& txn, Sha256& sha, std::string_view token, const Query& query,
                       int64_t now, CompiledToken& scratch) {
  Verdict v;
  if (token.empty()) {
    v.reason = Reason::Missing;
    return v;
  }
  auto parsed = parseToken(token);
  if (!parsed) {
    v.reason = Reason::Malformed;
    return v;
  }
  auto found = loadToken(txn, parsed->id, scratch);
  if (!found) return found.error();
  if (!*found) {
    v.reason = Reason::Unknown;
    return v;
  }
  Reason r = decide(scratch.facts(), sha.digest(parsed->secret), query, now);
  fillVerdict(scratch, r, v);
  v.owned = r == Reason::Ok && restsOnOwner(scratch.grant.site, query);
  return v;
}

}  // namespace tokend::verifier
