// libtokend's fast path and the socket give identical verdicts, for every reason code.
#include <doctest/doctest.h>
#include <tokend/client.h>

#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/client/daemon.h"

using tokend::test::Daemon;

namespace {

std::string show(const tokend_result& r) {
  return std::string(r.reason) + " " + std::to_string(r.http_status) + " " +
         std::to_string(r.allowed) + " [" + r.user_id + " " + r.username + " " + r.token_id + " " +
         r.login_type + " " + std::to_string(r.expires_at) + "]" + (r.owned ? " owned" : "");
}

bool same(const tokend_result& a, const tokend_result& b) {
  return a.allowed == b.allowed && a.http_status == b.http_status &&
         std::strcmp(a.reason, b.reason) == 0 && std::strcmp(a.user_id, b.user_id) == 0 &&
         std::strcmp(a.username, b.username) == 0 && std::strcmp(a.token_id, b.token_id) == 0 &&
         std::strcmp(a.login_type, b.login_type) == 0 && a.expires_at == b.expires_at &&
         a.owned == b.owned;
}

struct Req {
  std::string perm, object, owner;
  const char* p() const { return perm.empty() ? nullptr : perm.c_str(); }
  const char* o() const { return object.empty() ? nullptr : object.c_str(); }
  const char* w() const { return owner.empty() ? nullptr : owner.c_str(); }
};

}  // namespace

TEST_SUITE("Equivalence") {
  TEST_CASE("the fast path and the socket give identical results for every reason code") {
    Daemon d;
    d.start();
    const std::string eve = d.ctl({"users", "create", "eve"});
    const std::string frank = d.ctl({"users", "create", "frank"});
    const std::string w1 = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    const std::string w2 = "6f1c2b0e-9a4d-4f3b-8a51-1f0e2d3c4b5a";

    std::map<std::string, std::string> toks;
    toks["all"] = d.ctl({"tokens", "create", "--user", "eve"});
    toks["scoped"] = d.ctl({"tokens", "create", "--user", "eve", "--scope", "workspace:read"});
    toks["allow-one"] = d.ctl({"tokens", "create", "--user", "eve", "--allow", "workspace:" + w1});
    toks["allow-type"] = d.ctl({"tokens", "create", "--user", "eve", "--allow", "workspace:*"});
    // More entries than a cache slot holds inline: object checks go to the daemon.
    std::vector<std::string> big = {"tokens", "create", "--user", "eve"};
    for (int i = 0; i < 10; ++i) {
      big.push_back("--allow");
      big.push_back("workspace:3f2504e0-4f89-41d3-9a0c-0305e82c33" + std::to_string(10 + i));
    }
    toks["allow-many"] = d.ctl(big);
    toks["session"] = d.ctl({"sessions", "create", "--user", "eve", "--login-type", "oidc"});
    toks["expired"] = d.ctl({"tokens", "create", "--user", "eve"});
    d.ctl({"tokens", "remove", toks["expired"].substr(0, 10)});
    toks["deleted"] = d.ctl({"tokens", "create", "--user", "eve"});
    d.ctl({"tokens", "remove", toks["deleted"].substr(0, 10), "--delete"});
    toks["suspended"] = d.ctl({"tokens", "create", "--user", "frank"});
    d.ctl({"users", "suspend", "frank"});
    toks["admin"] = d.adminToken();
    toks["bad-secret"] = toks["all"].substr(0, 11) + "0000000000000000000000";
    toks["unknown"] = "ZZZZZZZZZZ-0000000000000000000000";
    toks["missing"] = "";
    toks["malformed"] = "abc-def";

    const std::vector<Req> reqs = {
        {},
        {"workspace:read", "", eve},
        {"workspace:read", "workspace:" + w1, eve},
        {"workspace:read", "workspace:" + w2, eve},
        {"workspace:read", "-", eve},
        {"workspace:read", "", ""},
        {"workspace:read", "", frank},
        {"template:delete", "", ""},
        {"template:read", "template:" + w1, ""},
        {"user:read", "", eve},
        {"nope:nope", "", ""},
        {"workspace:read", "workspace:not-a-uuid", eve},
        {"workspace:read", "", "not-a-uuid"},
        {"workspace:*", "", eve},
    };

    tokend_client* fast = nullptr;
    tokend_client* slow = nullptr;
    REQUIRE(tokend_open(d.socket().c_str(), &fast) == 0);
    REQUIRE(tokend_open_ex(d.socket().c_str(), TOKEND_OPEN_NO_SHM, &slow) == 0);
    REQUIRE(tokend_shm_state(fast) == TOKEND_SHM_MAPPED);
    REQUIRE(tokend_shm_state(slow) == TOKEND_SHM_OFF);

    // Fill the cache: the first sight of a token goes to the daemon either way.
    tokend_result r;
    for (const auto& [name, tok] : toks)
      REQUIRE(tokend_verify(fast, tok.c_str(), 0, 0, 0, &r) == 0);

    std::set<std::string> reasons;
    std::set<std::string> reasonsViaShm;
    int viaShm = 0, total = 0, ownedViaShm = 0, siteViaShm = 0;
    for (const auto& [name, tok] : toks) {
      for (const Req& q : reqs) {
        tokend_result a, b;
        REQUIRE(tokend_verify(fast, tok.c_str(), q.p(), q.o(), q.w(), &a) == 0);
        REQUIRE(tokend_verify(slow, tok.c_str(), q.p(), q.o(), q.w(), &b) == 0);
        INFO(name, " ", q.perm, " ", q.object, " ", q.owner, ": fast ", show(a), " via_shm ",
             a.via_shm, ", socket ", show(b));
        CHECK(same(a, b));
        CHECK(b.via_shm == 0);
        reasons.insert(a.reason);
        if (a.via_shm) reasonsViaShm.insert(a.reason);
        viaShm += a.via_shm;
        // Both kinds of grant of a permission decided in shared memory, so that `owned` is
        // compared where it can differ.
        if (a.via_shm && a.allowed && q.p()) (a.owned ? ownedViaShm : siteViaShm) += 1;
        ++total;
      }
    }
    // The table covers every reason code, and the fast path decided all that it can decide.
    CHECK(reasons == std::set<std::string>{"ok", "missing", "malformed", "unknown", "bad_secret",
                                           "expired", "user_inactive", "scope", "allow_list",
                                           "role", "bad_request"});
    CHECK(reasonsViaShm == std::set<std::string>{"ok", "missing", "malformed", "bad_secret",
                                                 "user_inactive", "scope", "allow_list", "role",
                                                 "bad_request"});
    MESSAGE(viaShm, " of ", total, " answers came from shared memory");
    CHECK(ownedViaShm > 0);
    CHECK(siteViaShm > 0);
    // The daemon may drop entries now and then (its changelog rounds), so not all of them.
    CHECK(viaShm * 2 > total);

    // The same through batches, with the fast path turned off on the same handle.
    std::vector<tokend_request> batch;
    for (const auto& [name, tok] : toks)
      for (const Req& q : reqs) batch.push_back({tok.c_str(), q.p(), q.o(), q.w()});
    std::vector<tokend_result> fastRes(batch.size()), slowRes(batch.size());
    REQUIRE(tokend_verify_batch(fast, batch.data(), batch.size(), fastRes.data()) == 0);
    REQUIRE(tokend_set_fast_path(fast, 0) == 0);
    REQUIRE(tokend_verify_batch(fast, batch.data(), batch.size(), slowRes.data()) == 0);
    for (size_t i = 0; i < batch.size(); ++i) {
      INFO(i, ": fast ", show(fastRes[i]), ", socket ", show(slowRes[i]));
      CHECK(same(fastRes[i], slowRes[i]));
      CHECK(slowRes[i].via_shm == 0);
    }
    tokend_close(fast);
    tokend_close(slow);
    d.stop();
  }
}
