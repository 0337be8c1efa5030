// Tests for scope and role validation and compilation against the catalog.
#include "verifier/scopes.h"

#include <doctest/doctest.h>

using namespace tokend::verifier;
using V = std::vector<std::string>;

namespace {
int bit(const char* name) {
  return *catalog::findPermission(name);
}
}  // namespace

TEST_SUITE("Scopes") {
  TEST_CASE("the catalog has every resource:action pair of the TSV, each with its own bit") {
    CHECK(catalog::permissionCount() == 199);
    CHECK(catalog::resourceCount() == 55);
    CHECK(catalog::permissionName(bit("workspace:read")) == "workspace:read");
    CHECK_FALSE(catalog::findPermission("workspace:fly"));
    CHECK_FALSE(catalog::findPermission("workspace:*"));
    CHECK(catalog::resourceName(catalog::resourceOf(bit("template:use"))) == "template");
  }

  TEST_CASE("low-level pairs, wildcards, composites, specials and aliases compile") {
    auto one = compileScopes(V{"workspace:read"});
    REQUIRE(one);
    CHECK(one->count() == 1);
    CHECK(one->test(bit("workspace:read")));

    auto wild = compileScopes(V{"template:*"});
    REQUIRE(wild);
    CHECK(wild->count() == 6);
    CHECK(wild->test(bit("template:view_insights")));

    auto access = compileScopes(V{"coder:workspaces.access"});
    REQUIRE(access);
    CHECK(access->count() == 5);
    CHECK(access->test(bit("workspace:ssh")));
    CHECK_FALSE(access->test(bit("workspace:update")));

    CHECK(compileScopes(V{"coder:all"})->count() == 199);
    CHECK(compileScopes(V{"all"})->count() == 199);
    CHECK(compileScopes(V{})->count() == 199);
    auto app = compileScopes(V{"application_connect"});
    REQUIRE(app);
    CHECK(app->count() == 1);
    CHECK(app->test(bit("workspace:application_connect")));
  }

  TEST_CASE("multiple scopes combine by union") {
    auto s = compileScopes(V{"workspace:read", "template:*"});
    REQUIRE(s);
    CHECK(s->count() == 7);
  }

  TEST_CASE("unknown scopes and *:* are refused with the SPEC's message") {
    for (const char* bad :
         {"*:*", "workspace:fly", "nothing:read", "workspace", "coder:nope", ""}) {
      CAPTURE(bad);
      auto r = normalizeScopes(V{bad}, false);
      REQUIRE_FALSE(r);
      CHECK(r.error().message ==
            std::string("invalid or unsupported API key scope: \"") + bad + "\"");
    }
  }

  TEST_CASE("normalising resolves aliases, drops duplicates, sorts, defaults to coder:all") {
    CHECK(*normalizeScopes(V{"workspace:read", "all", "workspace:read"}, false) ==
          V{"coder:all", "workspace:read"});
    CHECK(*normalizeScopes(V{}, false) == V{"coder:all"});
  }

  TEST_CASE("only publicly requestable scopes pass in user mode") {
    CHECK(normalizeScopes(V{"workspace:read", "template:*", "coder:workspaces.create"}, true));
    CHECK(normalizeScopes(V{"user:read_personal", "api_key:*", "user:*", "all"}, true));
    for (const char* notPublic : {"system:read", "workspace:share", "user:delete",
                                  "chat_model_config:*", "license:create"}) {
      CAPTURE(notPublic);
      auto r = normalizeScopes(V{notPublic}, true);
      REQUIRE_FALSE(r);
      CHECK(r.error().message.find(notPublic) != std::string::npos);
      CHECK(normalizeScopes(V{notPublic}, false));
    }
  }

  TEST_CASE("lists split on commas and trim blanks") {
    CHECK(splitList(V{"a,b", " c , ,d", ""}) == V{"a", "b", "c", "d"});
  }

  TEST_CASE("roles: member is implied, owner holds everything, unknown roles are refused") {
    auto r = normalizeRoles(V{"owner", "member", "auditor", "owner"});
    REQUIRE(r);
    CHECK(*r == V{"auditor", "owner"});
    auto bad = normalizeRoles(V{"root"});
    REQUIRE_FALSE(bad);
    CHECK(bad.error().message.find("unknown role \"root\"") == 0);

    RolePerms member = rolePermissions(V{});
    CHECK(member.site.test(bit("template:read")));
    CHECK_FALSE(member.site.test(bit("workspace:read")));
    CHECK(member.owned.test(bit("workspace:read")));
    CHECK(member.owned.test(bit("api_key:create")));

    RolePerms owner = rolePermissions(V{"owner"});
    CHECK(owner.site.count() == 199);
    CHECK(hasOwnerRole(V{"auditor", "owner"}));
    CHECK_FALSE(hasOwnerRole(V{"auditor"}));
  }

  TEST_CASE("a grant never exceeds its scopes nor its user's roles") {
    Grant g = compileGrant(*compileScopes(V{"coder:all"}), V{});
    CHECK(g.scopes.count() == 199);
    CHECK_FALSE(g.site.test(bit("system:read")));
    CHECK_FALSE(g.owned.test(bit("system:read")));
    CHECK(g.owned.test(bit("workspace:update")));
    CHECK(catalog::roleSite(*catalog::findRole("member")).contains(g.site));

    Grant narrow = compileGrant(*compileScopes(V{"workspace:read"}), V{"owner"});
    CHECK(narrow.site.count() == 1);
  }
}
