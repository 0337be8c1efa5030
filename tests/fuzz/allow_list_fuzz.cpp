// libFuzzer target: allow-list entries and lists (tokenctl --allow, the API's "allow_list", and
// the entries stored in token records), their normal form, and exclusive matching.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_support.h"
#include "verifier/allow_list.h"

using namespace tokend::verifier;
using tokend::fuzz::lines;
using tokend::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 16384) return 0;
  std::string_view in(reinterpret_cast<const char*>(data), size);

  // One entry: what parses prints back to text that parses to the same entry.
  auto one = parseAllowEntry(in);
  if (one) {
    std::string text = one->toString();
    auto again = parseAllowEntry(text);
    require(again && *again == *one && again->toString() == text);
    require(one->type == catalog::kAnyResource || one->type < catalog::resourceCount());
  } else {
    require(one.error().message.starts_with("invalid allow_list entry"));
  }

  // A list: normalising is idempotent, bounded and keeps *:* alone.
  std::vector<std::string> values = lines(in);
  auto list = normalizeAllowList(values);
  if (!list) return 0;
  require(!list->empty() && list->size() <= kMaxAllowEntries);
  std::vector<std::string> text = allowListStrings(*list);
  auto again = normalizeAllowList(text);
  require(again && *again == *list);
  bool any = false;
  for (const AllowEntry& e : *list) any |= e.type == catalog::kAnyResource;
  require(!any || list->size() == 1);

  // Matching: every exact entry admits its own object; "*:*" admits everything.
  for (const AllowEntry& e : *list) {
    if (e.type == catalog::kAnyResource) {
      ObjectRef o{0, {}};
      require(allowListAdmits(*list, 0, &o) && allowListAdmits(*list, 0, nullptr));
      continue;
    }
    ObjectRef o{e.type, e.id};
    require(allowListAdmits(*list, e.type, &o));
    if (e.anyId) require(allowListAdmits(*list, e.type, nullptr));
  }
  // An object of a type the list does not name is refused (unless *:*).
  if (!any && size >= 2) {
    uint16_t type =
        static_cast<uint16_t>((data[0] | (data[1] << 8)) % (catalog::resourceCount() + 1));
    bool named = false;
    for (const AllowEntry& e : *list) named |= e.type == type;
    ObjectRef o{type, {}};
    if (!named) require(!allowListAdmits(*list, type, &o));
  }
  return 0;
}
