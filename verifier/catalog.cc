// Lookups over the generated catalog tables.
#include "verifier/catalog.h"

#include <algorithm>
#include <bit>

#include "verifier/catalog_data.h"

namespace tokend::verifier {

namespace d = catalog::data;

int PermSet::count() const {
  int n = 0;
  for (uint64_t x : w) n += std::popcount(x);
  return n;
}

namespace catalog {

uint64_t version() {
  return d::kVersion;
}
int permissionCount() {
  return d::kPermissionCount;
}
int resourceCount() {
  return d::kResourceCount;
}
std::string_view resourceName(int r) {
  return d::kResources[r];
}
std::string_view permissionName(int bit) {
  return d::kPairs[bit].name;
}
int resourceOf(int bit) {
  return d::kPairs[bit].resource;
}

std::optional<int> findPermission(std::string_view name) {
  auto* end = std::end(d::kSortedPairs);
  auto* it = std::lower_bound(std::begin(d::kSortedPairs), end, name,
                              [](const d::Named& n, std::string_view v) { return n.name < v; });
  if (it == end || it->name != name) return std::nullopt;
  return it->bit;
}

std::optional<int> findResource(std::string_view name) {
  for (int i = 0; i < d::kResourceCount; ++i)
    if (d::kResources[i] == name) return i;
  return std::nullopt;
}

PermSet resourcePermissions(int r) {
  PermSet s;
  for (int b = d::kResourceFirstBit[r]; b < d::kResourceFirstBit[r + 1]; ++b) s.set(b);
  return s;
}

PermSet allPermissions() {
  PermSet s;
  for (int b = 0; b < d::kPermissionCount; ++b) s.set(b);
  return s;
}

PermSet publicPermissions() {
  return PermSet::fromWords(d::kPublic);
}

bool publicWildcard(int r) {
  return std::find(std::begin(d::kPublicWildcard), std::end(d::kPublicWildcard), r) !=
         std::end(d::kPublicWildcard);
}

std::optional<PermSet> findBundle(std::string_view name) {
  for (const auto& b : d::kComposites)
    if (b.name == name) return PermSet::fromWords(b.bits);
  for (const auto& b : d::kSpecials)
    if (b.name == name) return PermSet::fromWords(b.bits);
  return std::nullopt;
}

std::string_view resolveAlias(std::string_view name) {
  for (const auto& a : d::kAliases)
    if (a.alias == name) return a.target;
  return name;
}

int roleCount() {
  return static_cast<int>(std::size(d::kRoles));
}
std::string_view roleName(int role) {
  return d::kRoles[role].name;
}
std::optional<int> findRole(std::string_view name) {
  for (int i = 0; i < roleCount(); ++i)
    if (d::kRoles[i].name == name) return i;
  return std::nullopt;
}
PermSet roleSite(int role) {
  return PermSet::fromWords(d::kRoles[role].site);
}
PermSet roleOwned(int role) {
  return PermSet::fromWords(d::kRoles[role].owned);
}

}  // namespace catalog
}  // namespace tokend::verifier
