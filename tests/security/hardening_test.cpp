// Hardening tests (docs/security.md, "Review 2026-12: directories, dumps and test hooks"): the
// directories tokend trusts, the data-dir lock, where the first token goes, core dumps, the
// segment kept out of core files and withheld when it cannot be sealed or the clock is moved.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "base/clock.h"
#include "daemon/binary_protocol.h"
#include "tests/support/daemon.h"

using namespace tokend::test;
using tokend::UniqueFd;
namespace bp = tokend::daemon;

namespace {

unsigned modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

// tokend refusing to start: its exit status (-1 when it started instead) and stderr.
RunResult refusal(const std::vector<std::string>& args) {
  static TempDir logs;
  std::vector<std::string> argv = {programPath("TOKEND")};
  argv.insert(argv.end(), args.begin(), args.end());
  return runWithin(argv, logs.path(), std::chrono::seconds(5));
}

// What SHM_ATTACH (after a HELLO) gets from the daemon on `socket`, asked by this process.
struct Attach {
  uint32_t helloFeatures = 0;
  int opcode = -1;
  int error = -1;
  bool gotFd = false;
};

Attach attach(const std::string& socket) {
  Attach a;
  UniqueFd fd = connectUnix(socket);
  REQUIRE(fd);
  std::string req;
  bp::Hello hello;
  hello.features = bp::kFeatureShm | bp::kFeatureUsageReport;
  hello.software = "hardening_test";
  bp::encodeHello(req, 1, hello);
  REQUIRE(sendAll(fd.get(), req));
  std::string in;
  for (int i = 0; i < 50; ++i) {
    in += readBytes(fd.get(), bp::kFrameHeaderSize, 200);
    auto p = bp::parseFrame(in);
    if (p.status != bp::ParseStatus::Complete) continue;
    REQUIRE(p.frame.header.opcode == bp::Opcode::Hello);
    auto h = bp::decodeHello(p.frame.payload);
    REQUIRE(h);
    a.helloFeatures = h->features;
    break;
  }
  req.clear();
  bp::encodeShmAttach(req, 2);
  REQUIRE(sendAll(fd.get(), req));
  Received got = recvWithFd(fd.get());
  REQUIRE(!got.bytes.empty());
  auto p = bp::parseFrame(got.bytes);
  REQUIRE(p.status == bp::ParseStatus::Complete);
  a.opcode = static_cast<int>(p.frame.header.opcode);
  if (auto e = bp::decodeError(p.frame.payload)) a.error = static_cast<int>(e->code);
  a.gotFd = static_cast<bool>(got.fd);
  return a;
}

// The VmFlags of the mapping in /proc/<pid>/smaps whose header line contains `name`, or "".
std::string vmFlagsOf(pid_t pid, const std::string& name) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps");
  std::string line;
  bool in = false;
  while (std::getline(f, line)) {
    const bool header = !line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
                        line.find(':') > line.find(' ');
    if (header) in = line.find(name) != std::string::npos;
    if (in && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

// The io_uring provided-buffer rings (256 x 4 KiB and a page of ring, one per worker): anonymous
// mappings of 1028 kB (or up to `workers` of them merged; a sanitizer's huge shadow mappings are
// left out). Returns how many rings' worth of such VMAs have dd and how many do not.
struct RingVmas {
  long withDd = 0;
  long without = 0;
};
RingVmas ringVmas(pid_t pid, long workers) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps");
  std::string line;
  RingVmas r;
  long size = 0;
  bool anon = false;
  while (std::getline(f, line)) {
    std::istringstream s(line);
    std::string range, perms, offset, dev, inode, path;
    if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
        line.find(':') > line.find(' ')) {
      s >> range >> perms >> offset >> dev >> inode >> path;
      anon = path.empty() && perms.rfind("rw-p", 0) == 0;
      size = 0;
    } else if (line.rfind("Size:", 0) == 0) {
      std::string key;
      s >> key >> size;
    } else if (line.rfind("VmFlags:", 0) == 0 && anon && size > 0 && size % 1028 == 0 &&
               size / 1028 <= workers) {
      (line.find(" dd") != std::string::npos ? r.withDd : r.without) += size / 1028;
    }
  }
  return r;
}

// The soft and hard core-file limits of /proc/<pid>/limits ("self" for this process).
std::string coreLimit(const std::string& pid) {
  const std::string limits = readFile("/proc/" + pid + "/limits");
  const size_t at = limits.find("Max core file size");
  if (at == std::string::npos) return "?";
  std::istringstream s(limits.substr(at + std::strlen("Max core file size")));
  std::string soft, hard;
  s >> soft >> hard;
  return soft + " " + hard;
}

// Starts tokend with `args` as `uid` (when this process is root and uid differs) and waits until
// it answers; returns its pid. Its stderr goes to `errPath`.
pid_t startAs(uid_t uid, const std::vector<std::string>& args, const std::string& errPath,
              const std::map<std::string, std::string>& env = {}) {
  std::vector<std::string> argv = {programPath("TOKEND")};
  argv.insert(argv.end(), args.begin(), args.end());
  pid_t pid = ::fork();
  if (pid == 0) {
    int e = ::open(errPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    ::dup2(e, 2);
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    if (uid != ::geteuid() &&
        (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0))
      _exit(3);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

TEST_SUITE("Hardening") {
  TEST_CASE("a data dir or socket directory others can write is refused, naming path and fix") {
    TempDir dir;
    const std::string data = dir / "data";
    REQUIRE(::mkdir(data.c_str(), 0700) == 0);
    for (unsigned mode : {0777u, 0770u, 0707u, 01777u}) {
      CAPTURE(mode);
      REQUIRE(::chmod(data.c_str(), mode) == 0);
      RunResult r = refusal({"--data-dir", data});
      CHECK(r.status == 1);
      CHECK(r.err.find("Refusing to start: the data dir " + data + " is writable by") !=
            std::string::npos);
      CHECK(r.err.find("chmod 0700 " + data) != std::string::npos);
      // Refused before the database is opened or anything is written there.
      CHECK(::access((data + "/data.mdb").c_str(), F_OK) != 0);
      CHECK(::access((data + "/first-token").c_str(), F_OK) != 0);
    }
    REQUIRE(::chmod(data.c_str(), 0700) == 0);

    // The socket's directory: others could put a listener of their own in tokend's place.
    const std::string sockDir = dir / "sock";
    REQUIRE(::mkdir(sockDir.c_str(), 0777) == 0);
    REQUIRE(::chmod(sockDir.c_str(), 0777) == 0);
    RunResult s = refusal({"--data-dir", data, "--socket", sockDir + "/tokend.sock"});
    CHECK(s.status == 1);
    CHECK(s.err.find("the socket directory " + sockDir + " is writable by its group and others") !=
          std::string::npos);
    CHECK(s.err.find("chmod go-w " + sockDir) != std::string::npos);
    CHECK(::access((sockDir + "/tokend.sock").c_str(), F_OK) != 0);

    // A directory above: writable by others is refused unless sticky (like /tmp).
    const std::string above = dir / "above";
    REQUIRE(::mkdir(above.c_str(), 0700) == 0);
    REQUIRE(::chmod(above.c_str(), 0777) == 0);
    RunResult a = refusal({"--data-dir", above + "/data"});
    CHECK(a.status == 1);
    CHECK(a.err.find(above + " (above the data dir " + above + "/data) is writable by") !=
          std::string::npos);
    CHECK(a.err.find("chmod go-w " + above) != std::string::npos);
    // Through a symlink, the resolved path is checked too.
    const std::string link = dir / "link";
    REQUIRE(::symlink((above + "/data").c_str(), link.c_str()) == 0);
    RunResult l = refusal({"--data-dir", link});
    CHECK(l.status == 1);
    CHECK(l.err.find(above + " (above the data dir ") != std::string::npos);
    REQUIRE(::chmod(above.c_str(), 01777) == 0);
    {
      Daemon d({"--data-dir", above + "/data"});
      CHECK(d.text("PING") == "PONG");
      CHECK(modeOf(above + "/data") == 0700);
    }
    // The socket directory may be group- and world-readable (a gateway's group traverses it).
    REQUIRE(::chmod(sockDir.c_str(), 0755) == 0);
    Daemon ok({"--data-dir", data, "--socket", sockDir + "/tokend.sock"});
    CHECK(ok.text("PING") == "PONG");
  }

  TEST_CASE("two tokend on one data dir are refused, whatever their sockets") {
    Daemon d;
    TempDir other;
    RunResult second =
        refusal({"--data-dir", d.dataDir(), "--socket", other / "tokend.sock", "--no-admin"});
    CHECK(second.status == 1);
    CHECK(second.err.find("another tokend is using the data dir " + d.dataDir()) !=
          std::string::npos);
    CHECK(::access((other / "tokend.sock").c_str(), F_OK) != 0);
    CHECK(d.text("PING") == "PONG");
    CHECK((modeOf(d.dataDir() + "/tokend.lock") & 077) == 0);
    // Released when the first stops, however it stops.
    d.kill(SIGKILL);
    Daemon after({"--data-dir", d.dataDir(), "--socket", other / "tokend.sock"});
    CHECK(after.text("PING") == "PONG");
  }

  TEST_CASE(
      "the first token goes to <data-dir>/first-token (0600), not to a stdout that is a pipe") {
    Daemon d;
    const std::string file = d.dataDir() + "/first-token";
    CHECK(modeOf(file) == 0600);
    const std::string key = readFile(file);
    REQUIRE(key.size() == 34);
    CHECK(key.back() == '\n');
    CHECK(d.text("VERIFY " + key.substr(0, 33)).rfind("OK ", 0) == 0);
    CHECK(d.out().empty());
    // The log names the file and the token id, never the secret.
    const std::string log = d.log();
    CHECK(log.find(file) != std::string::npos);
    CHECK(log.find(key.substr(0, 10)) != std::string::npos);
    CHECK(log.find(key.substr(11, 22)) == std::string::npos);
    // Written once: a restart makes no other.
    REQUIRE(::unlink(file.c_str()) == 0);
    d.restart();
    CHECK(::access(file.c_str(), F_OK) != 0);
  }

  TEST_CASE("a first-token file already there is never followed or overwritten") {
    TempDir dir;
    const std::string data = dir / "data";
    REQUIRE(::mkdir(data.c_str(), 0700) == 0);
    const std::string target = dir / "elsewhere";
    REQUIRE(::symlink(target.c_str(), (data + "/first-token").c_str()) == 0);
    RunResult r = refusal({"--data-dir", data});
    CHECK(r.status == 1);
    CHECK(r.err.find(data + "/first-token already exists") != std::string::npos);
    CHECK(::access(target.c_str(), F_OK) != 0);
    // Nothing was created that has no key to show for it: the next start makes the owner.
    REQUIRE(::unlink((data + "/first-token").c_str()) == 0);
    Daemon d({"--data-dir", data});
    CHECK(d.adminToken().size() == 33);
  }

  TEST_CASE("on a terminal, the first token is printed too") {
    int master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    REQUIRE(master >= 0);
    REQUIRE(::grantpt(master) == 0);
    REQUIRE(::unlockpt(master) == 0);
    const std::string slave = ::ptsname(master);
    TempDir dir;
    const std::string data = dir / "data";
    pid_t pid = ::fork();
    if (pid == 0) {
      int t = ::open(slave.c_str(), O_RDWR | O_NOCTTY);
      int null = ::open("/dev/null", O_RDWR);
      ::dup2(t, 1);
      ::dup2(null, 2);
      ::dup2(null, 0);
      const std::string bin = programPath("TOKEND");
      ::execl(bin.c_str(), bin.c_str(), "--data-dir", data.c_str(), nullptr);
      _exit(127);
    }
    std::string out;
    CHECK(waitFor([&] {
      pollfd p{master, POLLIN, 0};
      char buf[256];
      if (::poll(&p, 1, 10) > 0) {
        ssize_t n = ::read(master, buf, sizeof buf);
        if (n > 0) out.append(buf, static_cast<size_t>(n));
      }
      return out.find('\n') != std::string::npos;
    }));
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    ::close(master);
    const std::string key = readFile(data + "/first-token");
    REQUIRE(key.size() == 34);
    CHECK(out.substr(0, 33) == key.substr(0, 33));
  }

  TEST_CASE("tokend is not dumpable and has no core limit unless --allow-core-dumps") {
    // /proc/<pid>/environ (like every file under /proc/<pid> but the directory itself) belongs to
    // root while a process is not dumpable, to its uid when it is: run it as nobody when we are
    // root, so that the two differ.
    TempDir dir;
    const uid_t uid = ::geteuid() == 0 ? 65534 : ::geteuid();
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    // A core limit above 0 to inherit, so that tokend's own 0 shows.
    rlimit core{};
    REQUIRE(::getrlimit(RLIMIT_CORE, &core) == 0);
    if (::geteuid() == 0) core.rlim_max = RLIM_INFINITY;
    core.rlim_cur = core.rlim_max;
    REQUIRE(::setrlimit(RLIMIT_CORE, &core) == 0);
    WARN_MESSAGE(core.rlim_max != 0, "the hard core limit is 0 here: the limit check is weaker");
    struct Case {
      std::vector<std::string> args;
      std::map<std::string, std::string> env;
      bool dumpable;
    };
    int n = 0;
    for (const Case& c : {Case{{}, {}, false}, Case{{"--allow-core-dumps"}, {}, true},
                          Case{{}, {{"TOKEND_ALLOW_CORE_DUMPS", "1"}}, true}}) {
      CAPTURE(c.dumpable);
      const std::string data = dir / ("data" + std::to_string(++n));
      REQUIRE(::mkdir(data.c_str(), 0700) == 0);
      REQUIRE(::chown(data.c_str(), uid, uid) == 0);
      std::vector<std::string> args = {"--data-dir", data, "--no-admin"};
      args.insert(args.end(), c.args.begin(), c.args.end());
      const std::string err = dir / ("err" + std::to_string(n));
      pid_t pid = startAs(uid, args, err, c.env);
      CHECK(waitFor([&] {
        UniqueFd fd = connectUnix(data + "/tokend.sock");
        return fd && sendAll(fd.get(), "PING\n") && readLines(fd.get(), 1, 200) == "PONG\n";
      }));
      struct stat st {};
      REQUIRE(::stat(("/proc/" + std::to_string(pid) + "/environ").c_str(), &st) == 0);
      INFO("stderr: ", readFile(err));
      CHECK(st.st_uid == (c.dumpable ? uid : 0));
      // Without dumps the core limit is 0; with them, what it inherited (AddressSanitizer's
      // runtime sets its own 0: disable_coredump).
      if (!c.dumpable) {
        CHECK(coreLimit(std::to_string(pid)) == "0 0");
      } else if (!sanitized(pid)) {
        CHECK(coreLimit(std::to_string(pid)) == coreLimit("self"));
      }
      ::kill(pid, SIGTERM);
      int status = 0;
      ::waitpid(pid, &status, 0);
      CHECK(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 0);
    }
  }

  TEST_CASE("the segment and the io_uring buffer rings are left out of core files") {
    // smaps needs ptrace-read access: a dumpable daemon lets its own uid read it.
    Daemon d({"--allow-core-dumps", "--threads", "2", "--io", "uring"});
    const std::string seg = vmFlagsOf(d.pid(), "/memfd:tokend-cache");
    INFO("segment: ", seg);
    REQUIRE(!seg.empty());
    CHECK(seg.find(" dd") != std::string::npos);
    RingVmas rings = ringVmas(d.pid(), 2);
    INFO("ring kB/1028 with dd ", rings.withDd, ", without ", rings.without);
    CHECK(rings.withDd >= 2);  // one ring per worker
  }

  TEST_CASE("a segment that could not be sealed against writes is handed to no client") {
    // no_seal makes fcntl(F_ADD_SEALS) with F_SEAL_FUTURE_WRITE fail EINVAL, as before Linux 5.1.
    REQUIRE(::setenv("TOKEND_TEST_LAUNCHER", programPath("NO_SEAL").c_str(), 1) == 0);
    Daemon d;
    ::unsetenv("TOKEND_TEST_LAUNCHER");
    for (int i = 0; i < 3; ++i) {
      Attach a = attach(d.socket());
      CHECK((a.helloFeatures & bp::kFeatureShm) == 0);
      CHECK(a.opcode == static_cast<int>(bp::Opcode::Error));
      CHECK(a.error == static_cast<int>(bp::ErrorCode::Unavailable));
      CHECK(!a.gotFd);
    }
    // Verification goes on, on the socket; the refusal was logged once, at start.
    CHECK(d.text("VERIFY " + d.adminToken()).rfind("OK ", 0) == 0);
    CHECK(count(d.log(), "could not be sealed against writes") == 1);
    // Without the launcher, the same daemon hands it out.
    d.restart();
    Attach a = attach(d.socket());
    CHECK((a.helloFeatures & bp::kFeatureShm) != 0);
    CHECK(a.opcode == static_cast<int>(bp::Opcode::ShmGranted));
    CHECK(a.gotFd);
  }

  TEST_CASE(
      "TOKEND_CLOCK_OFFSET moves the clock only in a test build, which then keeps the "
      "segment to itself") {
    // The variable is inherited here (not given to Daemon, which refuses to move the clock of a
    // build that ignores it): this case checks both kinds of build.
    REQUIRE(::setenv("TOKEND_CLOCK_OFFSET", "7200", 1) == 0);
    Daemon d;
    ::unsetenv("TOKEND_CLOCK_OFFSET");
    const std::string hour = d.ctlOk({"tokens", "create", "--user", "admin", "--lifetime", "1h"});
    const std::string verdict = d.text("VERIFY " + hour);
    Attach a = attach(d.socket());
    INFO("verdict: ", verdict, "; log: ", d.log());
    if (tokend::testClockCompiledIn()) {
      CHECK(verdict == "DENY expired 401");
      CHECK(a.error == static_cast<int>(bp::ErrorCode::Unavailable));
      CHECK(!a.gotFd);
      CHECK(count(d.log(), "The clock is moved by TOKEND_CLOCK_OFFSET (7200 s)") == 1);
    } else {
      CHECK(verdict.rfind("OK ", 0) == 0);
      CHECK(a.opcode == static_cast<int>(bp::Opcode::ShmGranted));
      CHECK(a.gotFd);
    }
  }
}
