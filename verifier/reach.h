// The reach of a caller (SPEC 8): what a token may create, and who may change an owner, as pure
// rules over records, so that the management API and the tests apply the same ones.
//
// A token only creates what it could do itself:
// - the new token's scopes compile to a subset of the creating token's scopes (the bitsets, so
//   "workspace:read" is within "workspace:*", and "coder:all" only within an all-powerful token);
// - every entry of the new allow list is admitted by the creating token's list: "*:*" only by
//   "*:*", "<type>:*" by itself or "*:*", "<type>:<uuid>" by itself, "<type>:*" or "*:*";
// - a creating token that is neither a session nor a full token (coder:all with "*:*") cannot
//   make one that expires after itself, so a narrow token cannot outlive itself through successors
//   (a logged-in user's session still creates a 30-day token);
// - only a session or a full token creates a session (itself coder:all with "*:*").
// Operator mode (tokenctl --db) has no creating token and is not bound by these rules.
//
// Refusals carry -EPERM (a 403 in the management API) and a message naming what exceeded.
#pragma once

#include <span>
#include <string>

#include "base/result.h"
#include "verifier/records.h"

namespace tokend::verifier {

// A session (any login type but token), or a token of every permission with allow list "*:*".
// Records that do not compile (an unknown scope or entry) are neither.
bool isSession(const TokenRecord& t);
bool isFullToken(const TokenRecord& t);

// Whether `creator` may create `created` (its loginType, scopes, allowList and expiresAt filled
// in, normalised). Ok, or -EPERM naming the first rule broken: the kind, then each scope, each
// allow-list entry, then the expiry.
Result<void> checkCreation(const TokenRecord& creator, const TokenRecord& created);

// A change to a user through the management API.
enum class UserChange { Suspend, Activate, Delete, SetRoles };

// Whether `actor` (the calling token's user) may make `change` to `target`: only an owner may
// suspend, activate, delete or change the roles of an owner, or grant the owner role (`newRoles`,
// for SetRoles); nobody suspends themselves ("You cannot suspend yourself.", -EINVAL as in Coder).
// Other refusals are -EPERM. Whether the permission itself (user:update, ...) is held is the
// caller's check; that the last active owner stays is the Manager's (in its write transaction).
Result<void> checkUserChange(const UserRecord& actor, const UserRecord& target, UserChange change,
                             std::span<const std::string> newRoles = {});

// An active user holding the owner role.
bool isActiveOwner(const UserRecord& u);

}  // namespace tokend::verifier
