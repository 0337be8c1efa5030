// The reach of a caller: the rules of what a token may create and who may change an owner.
#include "verifier/reach.h"

#include <fmt/format.h>

#include <algorithm>

#include "verifier/allow_list.h"
#include "verifier/api_json.h"
#include "verifier/scopes.h"

namespace tokend::verifier {
namespace {

Error forbidden(std::string message) {
  return makeError(std::move(message), -EPERM);
}

// A record's list as a message shows it; an empty one is what it means (`none`).
std::string joined(std::span<const std::string> items, const char* none) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ",") + s;
  return out.empty() ? std::string(none) : out;
}

// The first permission of `wanted` that `held` lacks.
std::string_view firstMissing(const PermSet& held, const PermSet& wanted) {
  for (int b = 0; b < catalog::permissionCount(); ++b)
    if (wanted.test(b) && !held.test(b)) return catalog::permissionName(b);
  return {};
}

bool admits(const AllowEntry& have, const AllowEntry& want) {
  if (have.type == catalog::kAnyResource) return true;
  if (want.type == catalog::kAnyResource || have.type != want.type) return false;
  return have.anyId || (!want.anyId && have.id == want.id);
}

}  // namespace

bool isSession(const TokenRecord& t) {
  return t.loginType != LoginType::Token;
}

bool isFullToken(const TokenRecord& t) {
  auto scopes = compileScopes(t.scopes);
  if (!scopes || *scopes != catalog::allPermissions()) return false;
  auto allow = normalizeAllowList(t.allowList);
  return allow && allow->size() == 1 && allow->front().type == catalog::kAnyResource;
}

Result<void> checkCreation(const TokenRecord& creator, const TokenRecord& created) {
  const bool full = isFullToken(creator);
  if (isSession(created) && !isSession(creator) && !full) {
    return forbidden(fmt::format(
        "Forbidden: only a session or a coder:all token with allow list *:* may create a "
        "session; this token has scopes {} and allow list {}.",
        joined(creator.scopes, "coder:all"), joined(creator.allowList, "*:*")));
  }

  auto held = compileScopes(creator.scopes);
  if (!held) {
    return makeError(
        fmt::format("the creating token's scopes do not compile: {}", held.error().message),
        -EBADMSG);
  }
  const std::vector<std::string> wanted =
      created.scopes.empty() ? std::vector<std::string>{"coder:all"} : created.scopes;
  for (const std::string& scope : wanted) {
    auto p = compileScopes(std::span<const std::string>(&scope, 1));
    if (!p) return p.error();
    if (!held->contains(*p)) {
      return forbidden(fmt::format(
          "Forbidden: scope \"{}\" is beyond the creating token's scopes ({}): it grants {}, "
          "which that token does not hold. A token can only create tokens within its own scopes.",
          scope, joined(creator.scopes, "coder:all"), firstMissing(*held, *p)));
    }
  }

  auto have = normalizeAllowList(creator.allowList);
  if (!have) {
    return makeError(
        fmt::format("the creating token's allow list does not parse: {}", have.error().message),
        -EBADMSG);
  }
  auto want = normalizeAllowList(created.allowList);
  if (!want) return want.error();
  for (const AllowEntry& e : *want) {
    bool ok =
        std::any_of(have->begin(), have->end(), [&](const AllowEntry& h) { return admits(h, e); });
    if (!ok) {
      return forbidden(fmt::format(
          "Forbidden: allow-list entry \"{}\" is beyond the creating token's allow list ({}). "
          "A token can only create tokens within its own allow list.",
          e.toString(), joined(creator.allowList, "*:*")));
    }
  }

  if (!isSession(creator) && !full && created.expiresAt > creator.expiresAt) {
    return forbidden(fmt::format(
        "Forbidden: the new token would expire at {}, after the creating token, which expires "
        "at {}; ask for a shorter lifetime (only a session or a coder:all token with allow list "
        "*:* creates tokens that outlive it).",
        formatTime(created.expiresAt), formatTime(creator.expiresAt)));
  }
  return {};
}

bool isActiveOwner(const UserRecord& u) {
  return u.status == UserStatus::Active && hasOwnerRole(u.roles);
}

Result<void> checkUserChange(const UserRecord& actor, const UserRecord& target, UserChange change,
                             std::span<const std::string> newRoles) {
  // Coder's own words and status (400) for the lock-out everyone can make by mistake.
  if (change == UserChange::Suspend && actor.id == target.id)
    return makeError("You cannot suspend yourself.", -EINVAL);
  if (hasOwnerRole(actor.roles)) return {};
  const bool ownerTarget = hasOwnerRole(target.roles);
  switch (change) {
    case UserChange::Suspend:
      if (ownerTarget) return forbidden("Only owners may suspend an owner.");
      break;
    case UserChange::Activate:
      if (ownerTarget) return forbidden("Only owners may activate an owner.");
      break;
    case UserChange::Delete:
      if (ownerTarget) return forbidden("Only owners may delete an owner.");
      break;
    case UserChange::SetRoles:
      if (ownerTarget || hasOwnerRole(splitList(newRoles)))
        return forbidden("Only owners may grant or take the owner role.");
      break;
  }
  return {};
}

}  // namespace tokend::verifier
