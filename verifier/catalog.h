// The compiled scope and role catalog (from catalog/scopes.tsv at build time) and PermSet.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace tokend::verifier {

inline constexpr int kPermWords = 4;

// A set of catalog permissions, one bit per (resource, action) pair.
struct PermSet {
  std::array<uint64_t, kPermWords> w{};

  constexpr void set(int bit) { w[bit >> 6] |= uint64_t{1} << (bit & 63); }
  constexpr bool test(int bit) const { return (w[bit >> 6] >> (bit & 63)) & 1; }
  constexpr bool empty() const { return (w[0] | w[1] | w[2] | w[3]) == 0; }
  int count() const;
  constexpr PermSet& operator|=(const PermSet& o) {
    for (int i = 0; i < kPermWords; ++i) w[i] |= o.w[i];
    return *this;
  }
  constexpr PermSet& operator&=(const PermSet& o) {
    for (int i = 0; i < kPermWords; ++i) w[i] &= o.w[i];
    return *this;
  }
  friend constexpr PermSet operator|(PermSet a, const PermSet& b) { return a |= b; }
  friend constexpr PermSet operator&(PermSet a, const PermSet& b) { return a &= b; }
  friend constexpr bool operator==(const PermSet&, const PermSet&) = default;
  // True when every bit of `o` is in this set.
  constexpr bool contains(const PermSet& o) const {
    for (int i = 0; i < kPermWords; ++i)
      if ((o.w[i] & ~w[i]) != 0) return false;
    return true;
  }
  static constexpr PermSet fromWords(const uint64_t (&words)[kPermWords]) {
    PermSet s;
    for (int i = 0; i < kPermWords; ++i) s.w[i] = words[i];
    return s;
  }
};

namespace catalog {

inline constexpr uint16_t kAnyResource = 0xFFFF;

uint64_t version();
int permissionCount();
int resourceCount();
std::string_view resourceName(int resource);
// "resource:action" of a permission bit.
std::string_view permissionName(int bit);
int resourceOf(int bit);

// A permission "resource:action" (exact pair, no wildcard) to its bit.
std::optional<int> findPermission(std::string_view name);
std::optional<int> findResource(std::string_view name);
// Every permission of one resource.
PermSet resourcePermissions(int resource);
PermSet allPermissions();
// The publicly requestable permissions.
PermSet publicPermissions();
bool publicWildcard(int resource);

// Named bundles: composites ("coder:workspaces.access") and specials ("coder:all").
std::optional<PermSet> findBundle(std::string_view name);
// Input aliases ("all" -> "coder:all"); returns the name itself when it is no alias.
std::string_view resolveAlias(std::string_view name);

// Roles: what a user may do at all.
int roleCount();
std::string_view roleName(int role);
std::optional<int> findRole(std::string_view name);
PermSet roleSite(int role);
PermSet roleOwned(int role);

}  // namespace catalog
}  // namespace tokend::verifier
