// Security tests (docs/security.md): who can reach the socket and the segment, what they may do,
// and that no token secret leaks into logs, metrics, error messages, listings or the database.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <set>
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

unsigned modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

RunResult userCtl(const Daemon& d, const std::string& token, std::vector<std::string> args) {
  std::vector<std::string> argv = {programPath("TOKENCTL"), "--socket", d.socket(), "--token",
                                   token};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv);
}

// Becomes `id` (uid and gid) with no supplementary groups: root's group 0 must not come along,
// or the child could use the socket's group permission.
bool dropTo(uid_t id) {
  return ::setgroups(0, nullptr) == 0 && ::setgid(id) == 0 && ::setuid(id) == 0;
}

// What a peer of another uid sees when it asks for the segment (and, if it got one, whether it
// could map it writable): run in a child that drops to `uid`.
struct Attach {
  int opcode = -1;
  int error = -1;
  bool gotFd = false;
  bool readOnlyFlags = false;
  bool sharedWriteRefused = false;
  bool reopenWriteRefused = false;
  bool readable = false;
  uint32_t usageAccepted = 0xffffffff;
};

Attach attachAs(const std::string& socket, uid_t uid) {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    Attach a;
    if (uid != ::getuid() && !dropTo(uid)) _exit(3);
    UniqueFd fd = connectUnix(socket);
    if (!fd) _exit(4);
    std::string req;
    bp::encodeShmAttach(req, 5);
    sendAll(fd.get(), req);
    char buf[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd.get(), &msg, MSG_CMSG_CLOEXEC);
    if (n > 0) {
      auto p = bp::parseFrame(std::string_view(buf, static_cast<size_t>(n)));
      if (p.status == bp::ParseStatus::Complete) {
        a.opcode = static_cast<int>(p.frame.header.opcode);
        if (auto e = bp::decodeError(p.frame.payload)) a.error = static_cast<int>(e->code);
      }
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int seg = -1;
      std::memcpy(&seg, CMSG_DATA(c), sizeof seg);
      a.gotFd = true;
      a.readOnlyFlags = (::fcntl(seg, F_GETFL) & O_ACCMODE) == O_RDONLY;
      struct stat st {};
      ::fstat(seg, &st);
      void* w = ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, seg, 0);
      a.sharedWriteRefused = w == MAP_FAILED;
      void* r = ::mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, seg, 0);
      a.readable = r != MAP_FAILED && ::mprotect(r, st.st_size, PROT_READ | PROT_WRITE) != 0;
      // Reopening the descriptor read-write through /proc does not help either (the seals).
      int rw = ::open(("/proc/self/fd/" + std::to_string(seg)).c_str(), O_RDWR);
      void* w2 = rw < 0 ? MAP_FAILED
                        : ::mmap(nullptr, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
      a.reopenWriteRefused = w2 == MAP_FAILED && (rw < 0 || ::write(rw, "x", 1) < 0);
    }
    // A usage report (which extends sessions) is only taken from trusted peers, and even from
    // them not for an id nobody verified (usage_report_test.cpp): every peer has 0 accepted.
    std::vector<bp::UsageEntry> uses(1);
    uses[0].tokenId = "AAAAAAAAAA";
    uses[0].lastUsed = ::time(nullptr);
    std::string report;
    if (bp::encodeUsageReport(report, 6, uses)) {
      sendAll(fd.get(), report);
      std::string in = readBytes(fd.get(), bp::kFrameHeaderSize + 4, 3000);
      auto p = bp::parseFrame(in);
      if (p.status == bp::ParseStatus::Complete && p.frame.header.opcode == bp::Opcode::UsageAck) {
        if (auto ack = bp::decodeUsageAck(p.frame.payload)) a.usageAccepted = *ack;
      }
    }
    if (::write(pipefd[1], &a, sizeof a) != sizeof a) _exit(5);
    _exit(0);
  }
  ::close(pipefd[1]);
  Attach a;
  ssize_t n = ::read(pipefd[0], &a, sizeof a);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  INFO("the child (uid ", uid, ") ended with status ", status,
       " (3: could not drop privileges, 4: could not connect)");
  REQUIRE(n == static_cast<ssize_t>(sizeof a));
  return a;
}

// tokend binds its socket under umask 0177 and opens it up to --socket-mode right after; the
// test harness knows it is up once root can connect, which is before that chmod.
void waitForMode(const std::string& socket, unsigned mode) {
  for (int i = 0; i < 400; ++i) {
    struct stat st {};
    if (::stat(socket.c_str(), &st) == 0 && (st.st_mode & 07777) == mode) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

TEST_SUITE("Security") {
  TEST_CASE(
      "the socket is created 0660 by default, owned by the daemon's user; --socket-mode is "
      "honoured") {
    {
      Daemon d;
      CHECK(modeOf(d.socket()) == 0660);
      struct stat st {};
      REQUIRE(::stat(d.socket().c_str(), &st) == 0);
      CHECK(S_ISSOCK(st.st_mode));
      CHECK(st.st_uid == ::getuid());
      CHECK(st.st_gid == ::getgid());
      // The database is the daemon's alone.
      CHECK(modeOf(d.dataDir()) == 0700);
      CHECK((modeOf(d.dataDir() + "/data.mdb") & 077) == 0);
      CHECK((modeOf(d.dataDir() + "/lock.mdb") & 077) == 0);
    }
    for (std::string mode : {"0600", "0666", "600"}) {
      Daemon d({"--socket-mode", mode});
      CAPTURE(mode);
      CHECK(modeOf(d.socket()) == std::stoul(mode, nullptr, 8));
    }
    // The socket path belongs to one daemon at a time (a lock, not a connect probe): a second
    // tokend on it refuses to start, the first goes on serving.
    {
      Daemon d;
      TempDir other;
      RunResult second =
          run({programPath("TOKEND"), "--data-dir", other / "data", "--socket", d.socket()});
      CHECK(second.status == 1);
      CHECK(second.err.find("another tokend is serving") != std::string::npos);
      CHECK(d.text("PING") == "PONG");
    }
    TempDir dir;
    RunResult bad =
        run({programPath("TOKEND"), "--data-dir", dir / "data", "--socket-mode", "0999"});
    CHECK(bad.status == 2);
    CHECK(bad.err.find("--socket-mode") != std::string::npos);
  }

  TEST_CASE("the segment goes only to allowed peers, and only read-only") {
    if (::getuid() != 0) {
      MESSAGE("SKIP: dropping to another uid needs root");
      return;
    }
    // A socket any local user can reach, in a directory any user can traverse.
    TempDir dir;
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    const std::string socket = dir / "tokend.sock";
    const uid_t nobody = 65534;
    {
      Daemon d({"--socket", socket, "--socket-mode", "0666"});
      waitForMode(socket, 0666);
      Attach other = attachAs(socket, nobody);
      CHECK(other.opcode == static_cast<int>(bp::Opcode::Error));
      CHECK(other.error == static_cast<int>(bp::ErrorCode::NotPermitted));
      CHECK(!other.gotFd);
      CHECK(other.usageAccepted == 0);
      Attach self = attachAs(socket, ::getuid());
      CHECK(self.opcode == static_cast<int>(bp::Opcode::ShmGranted));
      CHECK(self.gotFd);
      CHECK(self.readOnlyFlags);
      CHECK(self.sharedWriteRefused);
      CHECK(self.readable);
      CHECK(self.reopenWriteRefused);
      CHECK(self.usageAccepted == 0);
      HttpReply m = httpRequest(socket, "GET", "/metrics");
      CHECK(m.body.find("tokend_shm_refusals_total 1") != std::string::npos);
      // The refused peer's report was refused for having no segment, ours for the unknown id.
      CHECK(m.body.find("tokend_usage_reports_refused_total{reason=\"not_attached\"} 1") !=
            std::string::npos);
      CHECK(m.body.find("tokend_usage_reports_refused_total{reason=\"not_cached\"} 1") !=
            std::string::npos);
      CHECK(d.stop() == 0);
    }
    {
      Daemon d(
          {"--socket", socket, "--socket-mode", "0666", "--shm-allow-uid", std::to_string(nobody)});
      waitForMode(socket, 0666);
      Attach other = attachAs(socket, nobody);
      CHECK(other.opcode == static_cast<int>(bp::Opcode::ShmGranted));
      CHECK(other.gotFd);
      CHECK(other.readOnlyFlags);
      CHECK(other.sharedWriteRefused);
      CHECK(other.reopenWriteRefused);
      CHECK(other.usageAccepted == 0);
    }
    {
      Daemon d(
          {"--socket", socket, "--socket-mode", "0666", "--shm-allow-gid", std::to_string(nobody)});
      waitForMode(socket, 0666);
      Attach other = attachAs(socket, nobody);
      INFO("opcode ", other.opcode, ", error ", other.error);
      CHECK(other.gotFd);
    }
    // With the default mode (0660, owner root), another user cannot even connect.
    {
      Daemon d({"--socket", socket});
      int pipefd[2];
      REQUIRE(::pipe(pipefd) == 0);
      pid_t pid = ::fork();
      if (pid == 0) {
        if (!dropTo(nobody)) _exit(3);
        UniqueFd fd = connectUnix(socket);
        char refused = fd ? 0 : 1;
        _exit(::write(pipefd[1], &refused, 1) == 1 ? 0 : 4);
      }
      ::close(pipefd[1]);
      char refused = 0;
      CHECK(::read(pipefd[0], &refused, 1) == 1);
      ::close(pipefd[0]);
      ::waitpid(pid, nullptr, 0);
      CHECK(refused == 1);
    }
  }

  TEST_CASE("no token secret appears in logs, metrics, errors, listings or the database") {
    Daemon d({"--log-level", "debug", "--writeback-interval-ms", "20", "--threads", "2"});
    std::vector<std::string> tokens = {d.adminToken()};
    std::string seen;  // every output a secret must not be in
    auto keep = [&](const std::string& s) { seen += s + "\n"; };

    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    d.ctlOk({"users", "create", "mia"});
    tokens.push_back(d.ctlOk({"tokens", "create", "--user", "boss", "--name", "b1"}));
    tokens.push_back(d.ctlOk({"tokens", "create", "--user", "mia", "--name", "m1", "--scope",
                              "workspace:read", "--allow", "workspace:*"}));
    RunResult json = d.ctl({"tokens", "create", "--user", "mia", "--name", "m2", "-o", "json"});
    REQUIRE(json.status == 0);
    tokens.push_back(Json::parse(json.out)["key"]);
    tokens.push_back(d.ctlOk({"sessions", "create", "--user", "mia", "--login-type", "github"}));
    RunResult mine = userCtl(d, tokens[1], {"tokens", "create", "--name", "via-socket"});
    REQUIRE(mine.status == 0);
    tokens.push_back(mine.out.substr(0, 33));
    keep(mine.err);
    HttpReply s = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", tokens[3],
                              "{\"login_type\":\"oidc\"}");
    REQUIRE(s.status == 201);
    tokens.push_back(Json::parse(s.body)["key"]);

    // Presented secrets that do not match are secrets too (someone's mistyped token).
    std::vector<std::string> presented;
    for (const std::string& t : tokens) presented.push_back(t.substr(0, 11) + "Zz" + t.substr(13));

    // Use everything every way, good and bad.
    for (const auto& list : {tokens, presented}) {
      for (const std::string& t : list) {
        keep(d.text("VERIFY " + t));
        keep(d.text("VERIFY " + t +
                    " workspace:read workspace:aaaaaaaa-0000-4000-8000-000000000001"));
        keep(d.text("VERIFY " + t + "x"));  // malformed
        HttpReply v = httpRequest(d.socket(), "GET", "/v1/verify?perm=template:read", t);
        for (const auto& [k, val] : v.headers) keep(k + ": " + val);
        keep(v.body);
        HttpReply q = httpRequest(d.socket(), "GET", "/v1/verify?access_token=" + t);
        for (const auto& [k, val] : q.headers) keep(k + ": " + val);
        HttpReply api = httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens", t);
        keep(api.body);
        HttpReply bad = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", t, "{oops");
        keep(bad.body);
        RunResult check = d.ctl({"check", t, "workspace:read"});
        keep(check.out + check.err);
        RunResult viaSocket = userCtl(d, t, {"tokens", "list", "-o", "json"});
        keep(viaSocket.out + viaSocket.err);
        RunResult view = d.ctl({"tokens", "view", t});
        keep(view.out + view.err);
      }
    }
    for (const char* fmt : {"table", "json"}) {
      RunResult all = d.ctl({"tokens", "list", "--all", "--include-expired", "-o", fmt});
      keep(all.out + all.err);
    }
    RunResult dup = d.ctl({"tokens", "create", "--user", "boss", "--name", "b1"});
    keep(dup.out + dup.err);
    RunResult removed = d.ctl({"tokens", "remove", tokens[1]});
    keep(removed.out + removed.err);
    keep(httpRequest(d.socket(), "GET", "/metrics").body);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // a write-back round
    REQUIRE(d.stop() == 0);
    keep(d.log());
    const std::string db = readFile(d.dataDir() + "/data.mdb");
    REQUIRE(db.size() > 0);

    for (const auto& list : {tokens, presented}) {
      for (const std::string& t : list) {
        const std::string secret = t.substr(11);
        CAPTURE(t);
        CHECK(seen.find(secret) == std::string::npos);
        CHECK(db.find(secret) == std::string::npos);  // only SHA-256(secret) is stored
      }
    }
    // The daemon logged something at debug level, so the check above looked at real output.
    CHECK(d.log().find("listening") != std::string::npos);
  }

  TEST_CASE("user mode: members manage only their own tokens, with public scopes") {
    Daemon d({"--threads", "2"});
    d.ctlOk({"users", "create", "boss", "--role", "owner"});
    d.ctlOk({"users", "create", "mia"});
    d.ctlOk({"users", "create", "ned"});
    const std::string boss = d.ctlOk({"tokens", "create", "--user", "boss", "--name", "all"});
    const std::string mia = d.ctlOk({"tokens", "create", "--user", "mia", "--name", "all"});
    const std::string ned = d.ctlOk({"tokens", "create", "--user", "ned", "--name", "all"});
    const std::string readOnly =
        d.ctlOk({"tokens", "create", "--user", "mia", "--name", "ro", "--scope", "api_key:read"});
    const std::string nedId = ned.substr(0, 10);
    // Covered in tests/daemon/daemon_test.cpp ("the management API and tokenctl in user mode"):
    // own tokens, public scopes only, --user needs owner, no api_key permission -> refused.
    // The gaps:
    // A member cannot see, expire or delete another user's tokens, by name or by id.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/ned/keys/tokens", mia).status == 403);
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/ned/keys/tokens/all", mia).status == 403);
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/ned/keys/" + nedId, mia).status == 403);
    CHECK(
        httpRequest(d.socket(), "PUT", "/api/v2/users/ned/keys/" + nedId + "/expire", mia).status ==
        403);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/ned/keys/" + nedId, mia).status == 403);
    // ... nor reach it through her own path.
    CHECK(
        httpRequest(d.socket(), "PUT", "/api/v2/users/me/keys/" + nedId + "/expire", mia).status ==
        404);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/me/keys/" + nedId, mia).status == 404);
    CHECK(d.text("VERIFY " + ned).rfind("OK ", 0) == 0);
    // ... nor list everyone's, nor make sessions for others.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens?include_all=true", mia)
              .status == 403);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/ned/keys", mia, "{}").status == 403);
    RunResult list = userCtl(d, mia, {"tokens", "list", "-o", "json"});
    REQUIRE(list.status == 0);
    for (const auto& t : Json::parse(list.out)) CHECK(t["username"] == "mia");
    // A member cannot give herself the owner role, make users, or suspend others.
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/me/roles", mia, "{\"roles\":[\"owner\"]}")
              .status == 403);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users", mia, "{\"username\":\"eve\"}").status ==
          403);
    CHECK(httpRequest(d.socket(), "PUT", "/api/v2/users/ned/status/suspend", mia).status == 403);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/boss", mia).status == 403);
    // Non-public scopes are refused, also inside a comma list and through the alias forms.
    for (std::string scope : {"system:read", "workspace:read,system:*", "*:*", "workspace:fly"}) {
      HttpReply r = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia,
                                Json{{"scopes", {scope}}}.dump());
      CAPTURE(scope);
      CHECK(r.status == 400);
    }
    // A lifetime over the member cap is refused; the owner's own cap applies to the owner.
    HttpReply longLife =
        httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", boss,
                    "{\"lifetime\":" + std::to_string(200LL * 3600 * 1000000000) + "}");
    CHECK(longLife.status == 400);
    // A token that may only read keys cannot create, expire or delete them.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens", readOnly).status == 200);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", readOnly, "{}").status ==
          403);
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", readOnly, "{}").status == 403);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/me/keys/" + mia.substr(0, 10), readOnly)
              .status == 403);
    // A suspended user's token manages nothing.
    d.ctlOk({"users", "suspend", "ned"});
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/me/keys/tokens", ned).status == 401);
    // An owner can do all of it for others.
    CHECK(httpRequest(d.socket(), "GET", "/api/v2/users/mia/keys/tokens", boss).status == 200);
    HttpReply forMia = httpRequest(d.socket(), "POST", "/api/v2/users/mia/keys/tokens", boss,
                                   "{\"token_name\":\"from-boss\"}");
    CHECK(forMia.status == 201);
    CHECK(httpRequest(d.socket(), "DELETE", "/api/v2/users/ned/keys/" + nedId, boss).status == 204);
    // Bodies of the wrong shape are refused with 400, never an internal error.
    for (std::string body : {"{\"login_type\":5}", "{\"login_type\":null}", "[]",
                             "{\"scopes\":\"x\"}", "{\"token_name\":{}}", "{\"lifetime\":1.5}"}) {
      HttpReply r = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys", mia, body);
      CAPTURE(body);
      CHECK(r.status < 500);
      HttpReply t = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia, body);
      CHECK(t.status < 500);
    }
    // Token names are shown to others (an owner's list of every token): no terminal escapes,
    // no line breaks, no invalid UTF-8 (from tokenctl, whose arguments are bytes).
    for (std::string name : {"\\u001b]0;owned\\u0007", "two\\nlines", "del\\u007f", "c1\\u0085"}) {
      HttpReply r = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia,
                                std::string("{\"token_name\":\"") + name + "\"}");
      CAPTURE(name);
      CHECK(r.status == 400);
    }
    for (std::string name : {"\x1b[31mred", "bad\xff", "tab\there"}) {
      RunResult r = d.ctl({"tokens", "create", "--user", "mia", "--name", name});
      CAPTURE(name);
      CHECK(r.status != 0);
      CHECK(r.err.find("printable") != std::string::npos);
    }
    CHECK(httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", mia,
                      "{\"token_name\":\"caf\u00e9 \u2615\"}")
              .status == 201);
    HttpReply u = httpRequest(d.socket(), "POST", "/api/v2/users", boss, "{\"username\":7}");
    CHECK(u.status == 400);
    CHECK(d.text("PING") == "PONG");
  }
}
