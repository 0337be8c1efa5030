// Scope and role validation and compilation.
#include "verifier/scopes.h"

#include <fmt/format.h>

#include <algorithm>

namespace tokend::verifier {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

Error badScope(std::string_view name) {
  return makeError(fmt::format("invalid or unsupported API key scope: \"{}\"", name));
}

// The permissions of one scope name (aliases already resolved), or nullopt if it is none.
std::optional<PermSet> scopePermissions(std::string_view name) {
  if (auto bundle = catalog::findBundle(name)) return bundle;
  auto colon = name.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view resource = name.substr(0, colon), action = name.substr(colon + 1);
  if (action == "*") {
    auto r = catalog::findResource(resource);
    if (!r) return std::nullopt;
    return catalog::resourcePermissions(*r);
  }
  auto bit = catalog::findPermission(name);
  if (!bit) return std::nullopt;
  PermSet s;
  s.set(*bit);
  return s;
}

bool isPublic(std::string_view name) {
  if (catalog::findBundle(name)) return true;
  auto colon = name.find(':');
  std::string_view resource = name.substr(0, colon), action = name.substr(colon + 1);
  if (action == "*") {
    auto r = catalog::findResource(resource);
    return r && catalog::publicWildcard(*r);
  }
  auto bit = catalog::findPermission(name);
  return bit && catalog::publicPermissions().test(*bit);
}

}  // namespace

std::vector<std::string> splitList(std::span<const std::string> values) {
  std::vector<std::string> out;
  for (const std::string& v : values) {
    std::string_view rest = v;
    while (true) {
      auto comma = rest.find(',');
      std::string_view item = trim(rest.substr(0, comma));
      if (!item.empty()) out.emplace_back(item);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return out;
}

Result<std::vector<std::string>> normalizeScopes(std::span<const std::string> names,
                                                 bool publicOnly) {
  std::vector<std::string> out;
  for (const std::string& raw : names) {
    std::string_view name = catalog::resolveAlias(raw);
    if (!scopePermissions(name)) return badScope(raw);
    if (publicOnly && !isPublic(name)) return badScope(raw);
    out.emplace_back(name);
  }
  if (out.empty()) out.emplace_back("coder:all");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Result<PermSet> compileScopes(std::span<const std::string> names) {
  if (names.empty()) return catalog::allPermissions();
  PermSet all;
  for (const std::string& raw : names) {
    auto p = scopePermissions(catalog::resolveAlias(raw));
    if (!p) return badScope(raw);
    all |= *p;
  }
  return all;
}

Result<std::vector<std::string>> normalizeRoles(std::span<const std::string> names) {
  std::vector<std::string> out;
  for (const std::string& name : names) {
    if (!catalog::findRole(name)) {
      std::string known;
      for (int i = 0; i < catalog::roleCount(); ++i)
        known += fmt::format("{}{}", i ? ", " : "", catalog::roleName(i));
      return makeError(fmt::format("unknown role \"{}\" (known roles: {})", name, known));
    }
    if (name != "member") out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool hasOwnerRole(std::span<const std::string> roles) {
  return std::find(roles.begin(), roles.end(), "owner") != roles.end();
}

RolePerms rolePermissions(std::span<const std::string> roles) {
  static const int kMember = *catalog::findRole("member");
  RolePerms p{catalog::roleSite(kMember), catalog::roleOwned(kMember)};
  for (const std::string& name : roles) {
    if (auto r = catalog::findRole(name)) {
      p.site |= catalog::roleSite(*r);
      p.owned |= catalog::roleOwned(*r);
    }
  }
  return p;
}

Grant compileGrant(const PermSet& scopes, std::span<const std::string> roles) {
  RolePerms r = rolePermissions(roles);
  return Grant{scopes, scopes & r.site, scopes & r.owned};
}

}  // namespace tokend::verifier
