// Test support: a tokend started in a temporary directory, and plain socket clients for it.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "tests/support/process.h"

namespace tokend::test {

// Connects to a Unix socket; invalid on failure.
UniqueFd connectUnix(const std::string& path);
bool sendAll(int fd, std::string_view data);
// Reads until `lines` newline characters arrived, the peer closed, or the timeout passed.
std::string readLines(int fd, size_t lines, int timeoutMs = 5000);
// Reads until `bytes` arrived, the peer closed, or the timeout passed.
std::string readBytes(int fd, size_t bytes, int timeoutMs = 5000);
// Reads until the peer closes or the timeout passes; `closed` says which.
std::string readUntilClosed(int fd, int timeoutMs, bool* closed);
// One recvmsg of at most `max` bytes with room for one descriptor passed with SCM_RIGHTS (the
// segment's, after SHM_ATTACH): the bytes, and the descriptor (invalid when none came). `bytes`
// is empty when the peer closed or recvmsg failed.
struct Received {
  std::string bytes;
  UniqueFd fd;
};
Received recvWithFd(int fd, size_t max = 4096);

class Daemon {
 public:
  // Starts the built tokend (env TOKEND) on <tmp>/data with `args`, waits for its socket, and
  // reads the admin's first token from <data-dir>/first-token. When `args` hold "--data-dir DIR",
  // DIR is used instead (e.g. a small tmpfs); "--socket PATH" is honoured too. When
  // TOKEND_TEST_LAUNCHER is set (a program path), tokend runs under it: "<launcher> <tokend>
  // args..." (e.g. a seccomp filter that refuses io_uring).
  explicit Daemon(std::vector<std::string> args = {}, std::map<std::string, std::string> env = {});
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // SIGTERM and wait; returns the exit status.
  int stop();
  // Sends `sig` (SIGKILL for a crash) and waits; returns the exit status. restart() starts it
  // again on the same data dir.
  int kill(int sig) { return child_.stop(sig); }
  // Sets an environment variable for the next start (restart()).
  void setEnv(const std::string& name, const std::string& value) { env_[name] = value; }
  // The running daemon's pid, or -1.
  pid_t pid() const { return child_.pid; }
  // Starts it again on the same data dir.
  void restart();

  const std::string& socket() const { return socket_; }
  const std::string& dataDir() const { return dataDir_; }
  const std::string& adminToken() const { return adminToken_; }
  const TempDir& dir() const { return dir_; }
  std::string log() const { return child_.err(); }
  std::string out() const { return child_.out(); }

  // tokenctl --db <data> args...; the result of the run.
  RunResult ctl(std::vector<std::string> args, std::map<std::string, std::string> env = {}) const;
  // The same, required to succeed; stdout without its last newline.
  std::string ctlOk(std::vector<std::string> args) const;
  // One text-protocol line on a fresh connection, its answer without the newline.
  std::string text(const std::string& line) const;

 private:
  void start();
  TempDir dir_;
  std::vector<std::string> args_;
  std::map<std::string, std::string> env_;
  std::string dataDir_;
  std::string socket_;
  std::string adminToken_;
  Child child_;
};

}  // namespace tokend::test
