// libFuzzer target: scope and role names (tokenctl --scope, the API's "scopes" and "roles"):
// validation, aliases, normalisation, compilation.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_support.h"
#include "verifier/scopes.h"

using namespace tokend::verifier;
using tokend::fuzz::lines;
using tokend::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;  // the API body is bounded; longer lists only cost time
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // Newline-separated values, each of which may hold a comma-separated list.
  std::vector<std::string> names = splitList(lines(in));
  for (const std::string& n : names) {
    require(!n.empty() && n.find(',') == std::string::npos);
    require(n.front() != ' ' && n.back() != ' ');
  }

  auto all = normalizeScopes(names, false);
  auto pub = normalizeScopes(names, true);
  // Whatever the public subset accepts, the full catalog accepts, to the same normal form.
  if (pub) require(all && *all == *pub);
  if (all) {
    require(!all->empty());
    // Normal forms are fixed points, and compile to what the raw names compile to.
    auto again = normalizeScopes(*all, false);
    require(again && *again == *all);
    auto raw = compileScopes(names);
    auto normal = compileScopes(*all);
    require(raw && normal && *raw == *normal);
    // Roles narrow what scopes grant, never widen it.
    Grant g = compileGrant(*normal, std::vector<std::string>{"owner"});
    require(normal->contains(g.site) && normal->contains(g.owned));
  } else {
    require(all.error().message.starts_with("invalid or unsupported API key scope: \""));
  }

  auto roles = normalizeRoles(names);
  if (roles) {
    auto again = normalizeRoles(*roles);
    require(again && *again == *roles);
    RolePerms p = rolePermissions(*roles);
    (void)p;
  }
  return 0;
}
