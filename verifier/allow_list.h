// Allow lists: the objects a token may touch, as type:uuid, type:* or *:*, exclusive.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/uuid.h"
#include "verifier/catalog.h"

namespace tokend::verifier {

inline constexpr size_t kMaxAllowEntries = 128;

struct AllowEntry {
  uint16_t type = catalog::kAnyResource;  // a catalog resource index, or kAnyResource for "*"
  bool anyId = true;
  Uuid id;

  std::string toString() const;
  friend bool operator==(const AllowEntry&, const AllowEntry&) = default;
};

// An object named by a request: "workspace:<uuid>".
struct ObjectRef {
  uint16_t type = 0;
  Uuid id;
};

// Parses "type:uuid", "type:*" or "*:*". Refuses an unknown type or an id that is no UUID, with
// a message naming the entry.
Result<AllowEntry> parseAllowEntry(std::string_view text);

// Parses and normalises a list (values may hold comma-separated entries; none means "*:*"):
// "*:*" absorbs everything, "type:*" absorbs that type's ids, duplicates are dropped, the result is
// sorted by its text form. More than kMaxAllowEntries entries (after normalising) is refused.
Result<std::vector<AllowEntry>> normalizeAllowList(std::span<const std::string> values);
std::vector<std::string> allowListStrings(std::span<const AllowEntry> list);

// Exclusive matching: an object is admitted by "*:*", "<its type>:*" or its exact entry. A
// request naming no object is admitted only by "*:*" or "<resource>:*" for the permission's
// resource (creating a thing has no id yet).
bool allowListAdmits(std::span<const AllowEntry> list, int permissionResource,
                     const ObjectRef* object);

}  // namespace tokend::verifier
