// Tests for allow-list parsing, normalisation and exclusive matching.
#include "verifier/allow_list.h"

#include <doctest/doctest.h>

using namespace tokend::verifier;
using V = std::vector<std::string>;

namespace {
const char* kA = "aaaaaaaa-0000-4000-8000-000000000001";
const char* kB = "bbbbbbbb-0000-4000-8000-000000000002";
std::string ws(const char* id) {
  return std::string("workspace:") + id;
}
ObjectRef object(const char* type, const char* id) {
  return ObjectRef{static_cast<uint16_t>(*catalog::findResource(type)), *tokend::Uuid::parse(id)};
}
int res(const char* type) {
  return *catalog::findResource(type);
}
}  // namespace

TEST_SUITE("AllowList") {
  TEST_CASE("entries parse as type:uuid, type:* and *:*") {
    CHECK(parseAllowEntry(ws(kA))->toString() == ws(kA));
    CHECK(parseAllowEntry("template:*")->toString() == "template:*");
    CHECK(parseAllowEntry("*:*")->toString() == "*:*");
  }

  TEST_CASE("bad entries are refused with a message naming the entry") {
    for (const char* bad : {"widget:*", "workspace:1234", "workspace",
                            "*:aaaaaaaa-0000-4000-8000-000000000001", ":*", "workspace:"}) {
      CAPTURE(bad);
      auto r = normalizeAllowList(V{bad});
      REQUIRE_FALSE(r);
      CHECK(r.error().message.find(std::string("\"") + bad + "\"") != std::string::npos);
    }
  }

  TEST_CASE("normalising: *:* absorbs all, type:* absorbs ids, duplicates dropped, sorted") {
    CHECK(allowListStrings(*normalizeAllowList(V{})) == V{"*:*"});
    CHECK(allowListStrings(*normalizeAllowList(V{ws(kA), "*:*"})) == V{"*:*"});
    CHECK(allowListStrings(*normalizeAllowList(V{ws(kB), ws(kA), "workspace:*", "template:*"})) ==
          V{"template:*", "workspace:*"});
    CHECK(allowListStrings(*normalizeAllowList(V{ws(kB) + "," + ws(kA), ws(kB)})) ==
          V{ws(kA), ws(kB)});
  }

  TEST_CASE("at most 128 entries") {
    V many;
    for (int i = 0; i < 129; ++i) {
      char id[37];
      snprintf(id, sizeof id, "aaaaaaaa-0000-4000-8000-%012d", i);
      many.push_back(ws(id));
    }
    auto r = normalizeAllowList(many);
    REQUIRE_FALSE(r);
    CHECK(r.error().message == "allow_list has 129 entries; at most 128 are allowed");
    many.pop_back();
    CHECK(normalizeAllowList(many)->size() == 128);
  }

  TEST_CASE("matching is exclusive") {
    auto list = *normalizeAllowList(V{ws(kA)});
    ObjectRef a = object("workspace", kA), b = object("workspace", kB);
    ObjectRef tmpl = object("template", kA);
    CHECK(allowListAdmits(list, res("workspace"), &a));
    CHECK_FALSE(allowListAdmits(list, res("workspace"), &b));
    CHECK_FALSE(allowListAdmits(list, res("template"), &tmpl));
    // No object: only *:* or <resource>:* admit (creating has no id yet).
    CHECK_FALSE(allowListAdmits(list, res("workspace"), nullptr));

    auto typeWide = *normalizeAllowList(V{"workspace:*"});
    CHECK(allowListAdmits(typeWide, res("workspace"), &b));
    CHECK(allowListAdmits(typeWide, res("workspace"), nullptr));
    CHECK_FALSE(allowListAdmits(typeWide, res("template"), nullptr));

    auto all = *normalizeAllowList(V{"*:*"});
    CHECK(allowListAdmits(all, res("template"), &tmpl));
    CHECK(allowListAdmits(all, res("template"), nullptr));
  }
}
