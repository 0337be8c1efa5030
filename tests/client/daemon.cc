// Test support for libtokend's tests: starting and stopping tokend, running tokenctl.
#include "tests/client/daemon.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <thread>

namespace tokend::test {

namespace {

bool answers(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  if (ok) {
    // A PING in the text protocol: the loop runs once it is answered.
    ok = ::send(fd, "PING\n", 5, MSG_NOSIGNAL) == 5;
    char buf[8];
    ok = ok && ::recv(fd, buf, sizeof buf, 0) > 0;
  }
  ::close(fd);
  return ok;
}

}  // namespace

long long monoNanos() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

Daemon::Daemon()
    : data_(dir_ / "data"),
      socket_(dir_ / "sock/tokend.sock"),
      tokend_(programPath("TOKEND")),
      tokenctl_(programPath("TOKENCTL")) {
  // Traversable by every uid (the refusal test connects as nobody); the data dir stays private.
  ::chmod(dir_.path().c_str(), 0755);
  ::mkdir((dir_ / "sock").c_str(), 0755);
}

Daemon::~Daemon() {
  if (running()) stop();
}

void Daemon::start(const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {tokend_,     "--data-dir", data_,         "--socket", socket_,
                                   "--threads", "2",          "--log-level", "warn"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  child_ = spawn(argv, {}, dir_.path());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!answers(socket_)) {
    if (std::chrono::steady_clock::now() > deadline) {
      const std::string err = child_.err();
      stop();
      throw std::runtime_error("tokend did not come up: " + err);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (adminToken_.empty()) {
    std::string key = readFile(data_ + "/first-token");
    if (auto nl = key.find('\n'); nl != std::string::npos) adminToken_ = key.substr(0, nl);
  }
}

int Daemon::stop() {
  return child_.stop(SIGTERM);
}

RunResult Daemon::ctlRun(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {tokenctl_, "--db", data_};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv);
}

std::string Daemon::ctl(const std::vector<std::string>& args) const {
  RunResult r = ctlRun(args);
  if (r.status != 0) {
    std::string cmd;
    for (const auto& a : args) cmd += " " + a;
    throw std::runtime_error("tokenctl" + cmd + " failed: " + r.err);
  }
  std::string out = r.out;
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace tokend::test
