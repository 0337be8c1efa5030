// Allow-list parsing, normalisation and matching.
#include "verifier/allow_list.h"

#include <fmt/format.h>

#include <algorithm>

#include "verifier/scopes.h"

namespace tokend::verifier {

std::string AllowEntry::toString() const {
  std::string type_name =
      type == catalog::kAnyResource ? "*" : std::string(catalog::resourceName(type));
  return type_name + ":" + (anyId ? std::string("*") : id.toString());
}

Result<AllowEntry> parseAllowEntry(std::string_view text) {
  auto colon = text.find(':');
  if (colon == std::string_view::npos) {
    return makeError(
        fmt::format("invalid allow_list entry \"{}\": want <type>:<uuid>, <type>:* or *:*", text));
  }
  std::string_view type = text.substr(0, colon), id = text.substr(colon + 1);
  AllowEntry e;
  if (type == "*") {
    if (id != "*") {
      return makeError(fmt::format(
          "invalid allow_list entry \"{}\": a wildcard type needs a wildcard id (*:*)", text));
    }
    return e;
  }
  auto r = catalog::findResource(type);
  if (!r) {
    return makeError(
        fmt::format("invalid allow_list entry \"{}\": unknown resource type \"{}\"", text, type));
  }
  e.type = static_cast<uint16_t>(*r);
  if (id == "*") return e;
  auto uuid = Uuid::parse(id);
  if (!uuid) {
    return makeError(
        fmt::format("invalid allow_list entry \"{}\": id \"{}\" is not a UUID", text, id));
  }
  e.anyId = false;
  e.id = *uuid;
  return e;
}

Result<std::vector<AllowEntry>> normalizeAllowList(std::span<const std::string> values) {
  std::vector<AllowEntry> parsed;
  bool everything = false;
  for (const std::string& item : splitList(values)) {
    auto e = parseAllowEntry(item);
    if (!e) return e.error();
    everything |= e->type == catalog::kAnyResource;
    parsed.push_back(*e);
  }
  if (parsed.empty() || everything) return std::vector<AllowEntry>{AllowEntry{}};
  std::vector<AllowEntry> out;
  for (const AllowEntry& e : parsed) {
    bool absorbed = std::any_of(parsed.begin(), parsed.end(), [&](const AllowEntry& o) {
      return o.type == e.type && o.anyId && !e.anyId;
    });
    if (!absorbed && std::find(out.begin(), out.end(), e) == out.end()) out.push_back(e);
  }
  if (out.size() > kMaxAllowEntries) {
    return makeError(fmt::format("allow_list has {} entries; at most {} are allowed", out.size(),
                                 kMaxAllowEntries));
  }
  std::sort(out.begin(), out.end(),
            [](const AllowEntry& a, const AllowEntry& b) { return a.toString() < b.toString(); });
  return out;
}

std::vector<std::string> allowListStrings(std::span<const AllowEntry> list) {
  std::vector<std::string> out;
  out.reserve(list.size());
  for (const AllowEntry& e : list) out.push_back(e.toString());
  return out;
}

bool allowListAdmits(std::span<const AllowEntry> list, int permissionResource,
                     const ObjectRef* object) {
  for (const AllowEntry& e : list) {
    if (e.type == catalog::kAnyResource) return true;
    if (object == nullptr) {
      if (e.anyId && e.type == permissionResource) return true;
      continue;
    }
    if (e.type == object->type && (e.anyId || e.id == object->id)) return true;
  }
  return false;
}

}  // namespace tokend::verifier
