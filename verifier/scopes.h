// Scopes and roles: validating, normalising and compiling them into permission bitsets.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "verifier/catalog.h"

namespace tokend::verifier {

// Splits each value on commas, trims blanks, drops empty items: "--scope a,b --scope c" -> a b c.
std::vector<std::string> splitList(std::span<const std::string> values);

// Validates scope names (resource:action, resource:*, composites, specials, aliases), resolves
// aliases, drops duplicates and sorts. No scope means {"coder:all"}. With `publicOnly`, only the
// catalog's publicly requestable scopes pass (composites and specials are public; a low-level
// pair must be in the public list, resource:* must be listed as '*').
// Refuses with: invalid or unsupported API key scope: "<name>"
Result<std::vector<std::string>> normalizeScopes(std::span<const std::string> names,
                                                 bool publicOnly);

// Compiles valid scope names into the permissions they grant; an empty list grants coder:all.
Result<PermSet> compileScopes(std::span<const std::string> names);

// Validates role names against the catalog, drops "member" (every user holds it), dedupes, sorts.
// Refuses with: unknown role "<name>"
Result<std::vector<std::string>> normalizeRoles(std::span<const std::string> names);
bool hasOwnerRole(std::span<const std::string> roles);

// What a user's roles grant: on any object (site) and on objects they own (owned), member
// included. Unknown role names (from a newer catalog) grant nothing.
struct RolePerms {
  PermSet site;
  PermSet owned;
};
RolePerms rolePermissions(std::span<const std::string> roles);

// The compiled permissions of one token of one user: what its scopes grant, and of that what
// the user's roles allow on any object and on owned objects.
struct Grant {
  PermSet scopes;
  PermSet site;
  PermSet owned;
};
Grant compileGrant(const PermSet& scopes, std::span<const std::string> roles);

}  // namespace tokend::verifier
