// Security tests that need root (they drop to other uids and groups): the segment goes only to
// allowed peers, read-only, by uid, primary or supplementary group; directories owned by another
// user are refused. Not root: the whole executable exits 77 (SKIP), never a silent pass.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"
#include "tests/support/http_client.h"

using namespace tokend::test;
using tokend::UniqueFd;
namespace bp = tokend::daemon;

namespace {

// tokend refusing to start: its exit status (-1 when it started instead) and stderr.
RunResult refusal(const std::vector<std::string>& args) {
  static TempDir logs;
  std::vector<std::string> argv = {programPath("TOKEND")};
  argv.insert(argv.end(), args.begin(), args.end());
  return runWithin(argv, logs.path(), std::chrono::seconds(5));
}

// Becomes `id` (uid and gid) with only `groups` as supplementary groups: root's group 0 must not
// come along, or the child could use the socket's group permission.
bool dropTo(uid_t id, const std::vector<gid_t>& groups = {}) {
  return ::setgroups(groups.size(), groups.data()) == 0 && ::setgid(id) == 0 && ::setuid(id) == 0;
}

// What a peer of another uid sees when it asks for the segment (and, if it got one, whether it
// could map it writable): run in a child that drops to `uid` with supplementary `groups`.
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

Attach attachAs(const std::string& socket, uid_t uid, const std::vector<gid_t>& groups = {}) {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    Attach a;
    if (uid != ::getuid() && !dropTo(uid, groups)) _exit(3);
    UniqueFd fd = connectUnix(socket);
    if (!fd) _exit(4);
    std::string req;
    bp::encodeShmAttach(req, 5);
    sendAll(fd.get(), req);
    Received got = recvWithFd(fd.get());
    if (!got.bytes.empty()) {
      auto p = bp::parseFrame(got.bytes);
      if (p.status == bp::ParseStatus::Complete) {
        a.opcode = static_cast<int>(p.frame.header.opcode);
        if (auto e = bp::decodeError(p.frame.payload)) a.error = static_cast<int>(e->code);
      }
    }
    if (got.fd) {
      const int seg = got.fd.get();
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

TEST_SUITE("SecurityRoot") {
  TEST_CASE("the segment goes only to allowed peers, and only read-only") {
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

  TEST_CASE("--shm-allow-gid admits a peer by a supplementary group, as at connect()") {
    TempDir dir;
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    const std::string socket = dir / "tokend.sock";
    const uid_t nobody = 65534;
    Daemon d({"--socket", socket, "--socket-mode", "0666", "--shm-allow-gid", "4242"});
    waitForMode(socket, 0666);
    // Primary group nobody, 4242 only among the supplementary ones (`usermod -aG`).
    Attach member = attachAs(socket, nobody, {4241, 4242});
    INFO("opcode ", member.opcode, ", error ", member.error);
    CHECK(member.opcode == static_cast<int>(bp::Opcode::ShmGranted));
    CHECK(member.gotFd);
    CHECK(member.readOnlyFlags);
    CHECK(member.sharedWriteRefused);
    CHECK(member.usageAccepted == 0);
    // Other groups are not enough.
    Attach other = attachAs(socket, nobody, {4241, 4243});
    CHECK(other.opcode == static_cast<int>(bp::Opcode::Error));
    CHECK(other.error == static_cast<int>(bp::ErrorCode::NotPermitted));
    CHECK(!other.gotFd);
    CHECK(other.usageAccepted == 0);
    // Many groups (more than one getsockopt buffer's worth) still find it.
    std::vector<gid_t> many;
    for (gid_t g = 5000; g < 5200; ++g) many.push_back(g);
    many.push_back(4242);
    Attach lots = attachAs(socket, nobody, many);
    CHECK(lots.gotFd);
  }

  TEST_CASE("a data dir, socket directory or directory above owned by another user is refused") {
    const uid_t nobody = 65534;
    TempDir dir;
    const std::string data = dir / "data";
    REQUIRE(::mkdir(data.c_str(), 0700) == 0);
    REQUIRE(::chown(data.c_str(), nobody, nobody) == 0);
    RunResult r = refusal({"--data-dir", data});
    CHECK(r.status == 1);
    CHECK(r.err.find("the data dir " + data +
                     " is owned by uid 65534, neither tokend's uid 0 nor "
                     "root") != std::string::npos);
    CHECK(r.err.find("chown 0 " + data) != std::string::npos);
    REQUIRE(::chown(data.c_str(), 0, 0) == 0);

    const std::string sockDir = dir / "sock";
    REQUIRE(::mkdir(sockDir.c_str(), 0755) == 0);
    REQUIRE(::chown(sockDir.c_str(), nobody, nobody) == 0);
    RunResult s = refusal({"--data-dir", data, "--socket", sockDir + "/t.sock"});
    CHECK(s.status == 1);
    CHECK(s.err.find("the socket directory " + sockDir + " is owned by uid 65534") !=
          std::string::npos);

    const std::string above = dir / "above";
    REQUIRE(::mkdir(above.c_str(), 0755) == 0);
    REQUIRE(::chown(above.c_str(), nobody, nobody) == 0);
    RunResult a = refusal({"--data-dir", above + "/data"});
    CHECK(a.status == 1);
    CHECK(a.err.find(above + " (above the data dir " + above + "/data) is owned by uid 65534") !=
          std::string::npos);
  }
}

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::fprintf(stderr, "SKIP: these tests drop to other uids and groups, which needs root\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
