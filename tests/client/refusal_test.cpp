// Handing the segment over: a peer whose uid/gid is not allowed gets no descriptor and still
// correct answers over the socket; allowed uids and gids get the segment.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <tokend/client.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include "tests/client/daemon.h"

using tokend::test::Daemon;

namespace {

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

#define FAIL_CHILD(code, ...)          \
  do {                                 \
    std::fprintf(stderr, __VA_ARGS__); \
    std::fputc('\n', stderr);          \
    return code;                       \
  } while (0)

// Runs `fn` in a child that has dropped to uid/gid 65534; returns its exit status.
int runAsNobody(const std::function<int()>& fn) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNogroup) != 0 || ::setuid(kNobody) != 0) {
      _exit(90);
    }
    // setuid makes the process non-dumpable, which hides /proc/self/fd from itself.
    ::prctl(PR_SET_DUMPABLE, 1);
    _exit(fn());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Whether any descriptor of this process is a memfd (the cache segment is one).
bool holdsMemfd() {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string().find("memfd:") != std::string::npos) return true;
  }
  return false;
}

// SHM_ATTACH by hand: the answer must be ERROR not_permitted, with no descriptor attached.
int rawAttachRefused(const std::string& socket) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return 20;
  const unsigned char attach[16] = {0xD7, 1, 0x20, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0};
  if (::send(fd, attach, sizeof attach, MSG_NOSIGNAL) != 16) return 21;
  unsigned char buf[2048];
  size_t got = 0;
  bool passed = false;
  while (got < 16 || got < 16 + static_cast<size_t>(buf[4] | buf[5] << 8)) {
    iovec iov{buf + got, sizeof buf - got};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) return 22;
    if (CMSG_FIRSTHDR(&msg) != nullptr) passed = true;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (passed) FAIL_CHILD(23, "a descriptor came with the refusal");
  if (buf[2] != 0x7f) FAIL_CHILD(24, "opcode %#x, want ERROR", buf[2]);
  if (buf[8] != 9) FAIL_CHILD(25, "request id %d, want 9", buf[8]);
  if ((buf[16] | buf[17] << 8) != 6)
    FAIL_CHILD(26, "error code %d, want 6 (not_permitted)", buf[16]);
  return 0;
}

struct Expect {
  std::string token, perm, owner, reason, username;
};

// Verifies each case `rounds` times; every answer must match, and come via_shm as asked.
int checkAnswers(tokend_client* c, const std::vector<Expect>& cases, int rounds, int wantShm) {
  int viaShm = 0;
  for (int round = 0; round < rounds; ++round) {
    for (const Expect& e : cases) {
      tokend_result r;
      const int rc = tokend_verify(c, e.token.c_str(), e.perm.empty() ? nullptr : e.perm.c_str(),
                                   nullptr, e.owner.empty() ? nullptr : e.owner.c_str(), &r);
      if (rc != 0)
        FAIL_CHILD(30, "tokend_verify: %s (%s)", std::strerror(-rc), tokend_last_error(c));
      if (e.reason != r.reason) FAIL_CHILD(31, "reason %s, want %s", r.reason, e.reason.c_str());
      if (e.username != r.username)
        FAIL_CHILD(32, "username %s, want %s", r.username, e.username.c_str());
      if (wantShm == 0 && r.via_shm) FAIL_CHILD(33, "an answer came via shm");
      viaShm += r.via_shm;
    }
  }
  if (wantShm == 1 && viaShm == 0) FAIL_CHILD(34, "no answer came via shm");
  return 0;
}

}  // namespace

TEST_SUITE("Refusal") {
  TEST_CASE("a uid that is not allowed gets no descriptor and correct answers over the socket") {
    Daemon d;
    d.start({"--socket-mode", "0666"});
    const std::string uid = d.ctl({"users", "create", "jane"});
    const std::string tok =
        d.ctl({"tokens", "create", "--user", "jane", "--scope", "workspace:read"});
    const std::vector<Expect> cases = {
        {tok, "", "", "ok", "jane"},
        {tok, "workspace:read", uid, "ok", "jane"},
        {tok, "template:delete", "", "scope", ""},
        {tok.substr(0, 11) + std::string(22, 'x'), "", "", "bad_secret", ""},
        {"ZZZZZZZZZZ-0000000000000000000000", "", "", "unknown", ""},
        {"short", "", "", "malformed", ""},
    };
    const std::string socket = d.socket();
    const int status = runAsNobody([&]() -> int {
      if (::getuid() != kNobody) FAIL_CHILD(10, "still uid %d", ::getuid());
      if (int rc = rawAttachRefused(socket); rc != 0) return rc;
      tokend_client* c = nullptr;
      if (int rc = tokend_open(socket.c_str(), &c); rc != 0) {
        FAIL_CHILD(11, "tokend_open: %s", std::strerror(-rc));
      }
      if (tokend_shm_state(c) != TOKEND_SHM_REFUSED)
        FAIL_CHILD(12, "state %d", tokend_shm_state(c));
      if (std::strstr(tokend_last_error(c), "may not map") == nullptr) {
        FAIL_CHILD(13, "last error: %s", tokend_last_error(c));
      }
      if (holdsMemfd()) FAIL_CHILD(14, "a memfd reached the refused process");
      // Warm the daemon's cache: the same answers keep coming through the socket.
      if (int rc = checkAnswers(c, cases, 5, 0); rc != 0) return rc;
      if (holdsMemfd()) FAIL_CHILD(15, "a memfd reached the refused process");
      // Asking for it again is refused again.
      tokend_set_fast_path(c, 0);
      tokend_set_fast_path(c, 1);
      if (tokend_shm_state(c) != TOKEND_SHM_REFUSED)
        FAIL_CHILD(16, "state %d", tokend_shm_state(c));
      if (int rc = checkAnswers(c, cases, 1, 0); rc != 0) return rc;
      tokend_close(c);
      return 0;
    });
    CHECK(status == 0);
    CHECK(d.stop() == 0);
  }

  TEST_CASE("an allowed uid or gid maps the segment") {
    for (const char* flag : {"--shm-allow-uid", "--shm-allow-gid"}) {
      CAPTURE(flag);
      Daemon d;
      d.start({"--socket-mode", "0666", flag, "65534"});
      d.ctl({"users", "create", "kate"});
      const std::string tok = d.ctl({"tokens", "create", "--user", "kate"});
      const std::vector<Expect> cases = {{tok, "", "", "ok", "kate"},
                                         {tok, "template:delete", "", "role", ""}};
      const std::string socket = d.socket();
      const int status = runAsNobody([&]() -> int {
        tokend_client* c = nullptr;
        if (int rc = tokend_open(socket.c_str(), &c); rc != 0) {
          FAIL_CHILD(11, "tokend_open: %s", std::strerror(-rc));
        }
        if (tokend_shm_state(c) != TOKEND_SHM_MAPPED) {
          FAIL_CHILD(12, "state %d: %s", tokend_shm_state(c), tokend_last_error(c));
        }
        if (int rc = checkAnswers(c, cases, 20, 1); rc != 0) return rc;
        tokend_close(c);
        return 0;
      });
      CHECK(status == 0);
      CHECK(d.stop() == 0);
    }
  }
}
