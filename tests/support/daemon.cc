// Test support: starting tokend and talking to it over its socket.
#include "tests/support/daemon.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "base/clock.h"

namespace tokend::test {

UniqueFd connectUnix(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return UniqueFd();
  return fd;
}

bool sendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

namespace {
template <class Done>
std::string readWhile(int fd, int timeoutMs, Done done, bool* closed) {
  std::string in;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  char buf[65536];
  if (closed) *closed = false;
  while (!done(in)) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    deadline - std::chrono::steady_clock::now())
                                    .count());
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (closed) *closed = true;
      break;
    }
    in.append(buf, static_cast<size_t>(n));
  }
  return in;
}
}  // namespace

std::string readLines(int fd, size_t lines, int timeoutMs) {
  return readWhile(
      fd, timeoutMs,
      [&](const std::string& s) {
        return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')) >= lines;
      },
      nullptr);
}

std::string readBytes(int fd, size_t bytes, int timeoutMs) {
  return readWhile(
      fd, timeoutMs, [&](const std::string& s) { return s.size() >= bytes; }, nullptr);
}

std::string readUntilClosed(int fd, int timeoutMs, bool* closed) {
  return readWhile(
      fd, timeoutMs, [](const std::string&) { return false; }, closed);
}

Received recvWithFd(int fd, size_t max) {
  Received r;
  r.bytes.resize(max);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  iovec iov{r.bytes.data(), r.bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  r.bytes.resize(n > 0 ? static_cast<size_t>(n) : 0);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n > 0 && c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int passed = -1;
    std::memcpy(&passed, CMSG_DATA(c), sizeof passed);
    r.fd = UniqueFd(passed);
  }
  return r;
}

Daemon::Daemon(std::vector<std::string> args, std::map<std::string, std::string> env)
    : args_(std::move(args)), env_(std::move(env)) {
  auto given = std::find(args_.begin(), args_.end(), "--data-dir");
  if (given != args_.end() && given + 1 != args_.end()) {
    dataDir_ = *(given + 1);
  } else {
    dataDir_ = dir_ / "data";
    args_.insert(args_.begin(), {"--data-dir", dataDir_});
  }
  auto socket = std::find(args_.begin(), args_.end(), "--socket");
  socket_ = socket != args_.end() && socket + 1 != args_.end() ? *(socket + 1)
                                                               : dataDir_ + "/tokend.sock";
  start();
}

Daemon::~Daemon() {
  if (child_.pid > 0) child_.stop(SIGKILL);
}

void Daemon::start() {
  // A test that moves the daemon's clock means nothing in a build that ignores the variable.
  if (env_.count("TOKEND_CLOCK_OFFSET") != 0 && !testClockCompiledIn()) {
    throw std::runtime_error(
        "this test moves tokend's clock (TOKEND_CLOCK_OFFSET), which only a build configured with "
        "-Dtest_clock=true honours: meson configure <build> -Dtest_clock=true (scripts/test does)");
  }
  std::vector<std::string> argv;
  if (const char* launcher = std::getenv("TOKEND_TEST_LAUNCHER"); launcher && *launcher)
    argv.push_back(launcher);
  argv.push_back(programPath("TOKEND"));
  argv.insert(argv.end(), args_.begin(), args_.end());
  child_ = spawn(argv, env_, dir_.path());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  // Up means answering: a connect alone can reach the listening socket of a daemon that was
  // killed a moment ago (io_uring tears its ring down after the process is gone).
  auto answers = [&] {
    UniqueFd fd = connectUnix(socket_);
    return fd && sendAll(fd.get(), "PING\n") && readLines(fd.get(), 1, 200) == "PONG\n";
  };
  while (std::chrono::steady_clock::now() < deadline) {
    if (answers()) break;
    int status = 0;
    if (::waitpid(child_.pid, &status, WNOHANG) == child_.pid) {
      child_.pid = -1;
      throw std::runtime_error("tokend exited at start: " + child_.err());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!answers()) throw std::runtime_error("tokend did not open its socket: " + child_.err());
  // The first start on a fresh data dir leaves the owner's first token there (not on stdout,
  // which is not a terminal here).
  if (adminToken_.empty()) {
    std::string key = readFile(dataDir_ + "/first-token");
    if (key.size() >= 33) adminToken_ = key.substr(0, 33);
  }
}

int Daemon::stop() {
  int status = child_.stop(SIGTERM);
  return status;
}

void Daemon::restart() {
  if (child_.pid > 0) stop();
  start();
}

RunResult Daemon::ctl(std::vector<std::string> args, std::map<std::string, std::string> env) const {
  std::vector<std::string> argv = {programPath("TOKENCTL"), "--db", dataDir_};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, env);
}

std::string Daemon::ctlOk(std::vector<std::string> args) const {
  RunResult r = ctl(args);
  if (r.status != 0) throw std::runtime_error("tokenctl failed: " + r.err);
  std::string out = r.out;
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::string Daemon::text(const std::string& line) const {
  UniqueFd fd = connectUnix(socket_);
  if (!fd) return "(no connection)";
  sendAll(fd.get(), line + "\n");
  std::string answer = readLines(fd.get(), 1);
  if (!answer.empty() && answer.back() == '\n') answer.pop_back();
  return answer;
}

}  // namespace tokend::test
