// Usage reports (binary USAGE_REPORT, SPEC 9) cannot extend someone else's session: a report is
// taken only from a connection that was handed the segment, for a token whose cache entry this
// daemon filled and saw verified with its secret lately, for a use made while the token was
// valid and no more than a few minutes ago (docs/protocol.md, docs/security.md M7).
//
// Each forged report is a hand-built frame carrying a token id and no secret. Its effect is read
// back from the database (tokenctl tokens view) after a write-back round that is known to have
// run after the report: a witness token verified after the report's ack must show its own use,
// and the write-back takes every use received before it (daemon/service.cc flushUses).
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using tokend::UniqueFd;
using Json = nlohmann::json;
namespace bp = tokend::daemon;

namespace {

constexpr const char* kNever = "1970-01-01T00:00:00Z";

struct Times {
  std::string expiresAt;
  std::string lastUsed;
};

Times timesOf(const Daemon& d, const std::string& token) {
  const Json j = Json::parse(d.ctlOk({"tokens", "view", token.substr(0, 10), "-o", "json"}));
  return {j["expires_at"].get<std::string>(), j["last_used"].get<std::string>()};
}

// A session of `user` created `agoSeconds` in the past (tokenctl's clock moved back).
std::string oldSession(const Daemon& d, const std::string& user, long agoSeconds) {
  RunResult r = d.ctl({"sessions", "create", "--user", user},
                      {{"TOKEND_CLOCK_OFFSET", std::to_string(-agoSeconds)}});
  REQUIRE(r.status == 0);
  std::string t = r.out;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  REQUIRE(t.size() == 33);
  return t;
}

// A binary-protocol connection, optionally handed the segment first (SHM_ATTACH, as libtokend's
// monitor does before it reports).
class Peer {
 public:
  explicit Peer(const std::string& socket, bool attach) : fd_(connectUnix(socket)) {
    REQUIRE(fd_);
    if (!attach) return;
    std::string req;
    bp::encodeShmAttach(req, 1);
    REQUIRE(sendAll(fd_.get(), req));
    Received got = recvWithFd(fd_.get(), 256);
    REQUIRE(!got.bytes.empty());
    auto p = bp::parseFrame(got.bytes);
    REQUIRE(p.status == bp::ParseStatus::Complete);
    REQUIRE(p.frame.header.opcode == bp::Opcode::ShmGranted);
    REQUIRE(got.fd);
  }

  // Sends one USAGE_REPORT of (token id, time) pairs; returns the ack's accepted count.
  uint32_t report(const std::vector<std::pair<std::string, int64_t>>& uses) {
    std::vector<bp::UsageEntry> entries;
    for (const auto& [token, at] : uses)
      entries.push_back({std::string_view(token).substr(0, 10), at});
    std::string frame;
    REQUIRE(bp::encodeUsageReport(frame, ++requestId_, entries));
    REQUIRE(sendAll(fd_.get(), frame));
    const std::string in = readBytes(fd_.get(), bp::kFrameHeaderSize + 4, 3000);
    auto p = bp::parseFrame(in);
    REQUIRE(p.status == bp::ParseStatus::Complete);
    REQUIRE(p.frame.header.opcode == bp::Opcode::UsageAck);
    REQUIRE(p.frame.header.requestId == requestId_);
    auto ack = bp::decodeUsageAck(p.frame.payload);
    REQUIRE(ack);
    return *ack;
  }

 private:
  UniqueFd fd_;
  uint64_t requestId_ = 100;
};

uint64_t metric(const std::string& socket, const std::string& name) {
  const HttpReply m = httpRequest(socket, "GET", "/metrics");
  REQUIRE(m.status == 200);
  // Sums every series of `name` (labelled or not).
  uint64_t sum = 0;
  size_t at = 0;
  while ((at = m.body.find("\n" + name, at)) != std::string::npos) {
    const size_t eol = m.body.find('\n', at + 1);
    const std::string line = m.body.substr(at + 1, eol - at - 1);
    at = eol;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    sum += std::stoull(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// Verifies `witness` (an API token whose last_used is due) and waits until the write-back has
// committed that use: every use received before this call has then been written too.
void awaitWriteback(const Daemon& d, const std::string& witness) {
  REQUIRE(timesOf(d, witness).lastUsed == kNever);
  REQUIRE(d.text("VERIFY " + witness).rfind("OK ", 0) == 0);
  bool written = false;
  for (int i = 0; i < 250 && !written; ++i) {
    written = timesOf(d, witness).lastUsed != kNever;
    if (!written) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE(written);
}

}  // namespace

TEST_SUITE("Security") {
  TEST_CASE("a forged usage report changes neither expires_at nor last_used; an honest one does") {
    Daemon d({"--writeback-interval-ms", "20"});
    d.ctlOk({"users", "create", "ann"});
    const std::string witness = d.ctlOk({"tokens", "create", "--user", "ann", "--name", "w"});
    // Sessions made two hours ago: 22 h left, so a use now is due both a last_used write and the
    // sliding refresh (to now + 24 h). One more expired an hour ago.
    const std::string absent = oldSession(d, "ann", 7200);
    const std::string badSecret = oldSession(d, "ann", 7200);
    const std::string unattached = oldSession(d, "ann", 7200);
    const std::string honest = oldSession(d, "ann", 7200);
    const std::string expired = oldSession(d, "ann", 25 * 3600);
    const std::string revived = oldSession(d, "ann", 25 * 3600);
    const std::vector<std::string> forgedTargets = {absent, badSecret, unattached, expired,
                                                    revived};
    std::vector<Times> before;
    for (const auto& t : forgedTargets) before.push_back(timesOf(d, t));
    // Let the changelog watcher see the creations, so that fills below are not dropped as stale.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const uint64_t refusedBefore = metric(d.socket(), "tokend_usage_reports_refused_total");

    Peer attacker(d.socket(), true);
    const int64_t now = ::time(nullptr);
    uint64_t forgedEntries = 0;

    // 1. Nobody ever verified this session here: no cache entry. Times now, in the future and
    //    far in the past.
    CHECK(attacker.report({{absent, now}, {absent, now + 3600}, {absent, now - 80000}}) == 0);
    forgedEntries += 3;

    // 2. The entry exists, filled by a verification that presented a wrong secret: that proves
    //    nothing, the report is refused.
    {
      const uint64_t inserts = metric(d.socket(), "tokend_cache_inserts_total");
      const std::string wrong = badSecret.substr(0, 11) + std::string(22, 'x');
      REQUIRE(d.text("VERIFY " + wrong) == "DENY bad_secret 401");
      CHECK(metric(d.socket(), "tokend_cache_inserts_total") == inserts + 1);
      CHECK(attacker.report({{badSecret, now}, {badSecret, now + 60}}) == 0);
      forgedEntries += 2;
    }

    // 3. A use of an expired session, dated now and a minute ago: refused, even though this
    //    daemon verified it (with its secret) a moment ago. And one dated two hours ago, when it
    //    was still valid (alone, so that it is that session's latest use): refused, the session
    //    is not revived with a new lifetime from then.
    REQUIRE(d.text("VERIFY " + expired) == "DENY expired 401");
    CHECK(attacker.report({{expired, now}, {expired, now - 60}}) == 0);
    REQUIRE(d.text("VERIFY " + revived) == "DENY expired 401");
    CHECK(attacker.report({{revived, now - 7200}}) == 0);
    forgedEntries += 3;

    // 4. Verified with its secret, but reported on a connection that was never handed the
    //    segment: only a peer that could have read the entry reports its uses.
    REQUIRE(d.text("VERIFY " + unattached + " template:delete") == "DENY role 403");
    {
      Peer plain(d.socket(), false);
      CHECK(plain.report({{unattached, now}}) == 0);
      forgedEntries += 1;
    }

    awaitWriteback(d, witness);
    for (size_t i = 0; i < forgedTargets.size(); ++i) {
      CAPTURE(i);
      const Times after = timesOf(d, forgedTargets[i]);
      CHECK(after.expiresAt == before[i].expiresAt);
      CHECK(after.lastUsed == before[i].lastUsed);
    }
    CHECK(metric(d.socket(), "tokend_usage_reports_refused_total") ==
          refusedBefore + forgedEntries);

    // The honest case, as libtokend's fast path does it: the daemon verified the session with its
    // secret (a denial, which writes nothing itself), the client then allowed a use from the
    // segment and reports it. The ack counts it, last_used is written and the session slides.
    const Times honestBefore = timesOf(d, honest);
    uint32_t accepted = 0;
    for (int attempt = 0; attempt < 20 && accepted == 0; ++attempt) {
      // A fill can be dropped if an invalidation races it: verify again until the entry holds.
      REQUIRE(d.text("VERIFY " + honest + " template:delete") == "DENY role 403");
      accepted = attacker.report({{honest, ::time(nullptr)}});
      if (accepted == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK(accepted == 1);
    bool written = false;
    for (int i = 0; i < 250 && !written; ++i) {
      written = timesOf(d, honest).lastUsed != honestBefore.lastUsed;
      if (!written) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK(written);
    const Times honestAfter = timesOf(d, honest);
    CHECK(honestAfter.lastUsed != kNever);
    // ISO 8601 in UTC compares as text: the expiry moved on (22 h left became 24 h).
    CHECK(honestAfter.expiresAt > honestBefore.expiresAt);
    CHECK(d.stop() == 0);
  }
}
