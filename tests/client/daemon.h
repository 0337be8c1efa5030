// Test support for libtokend's tests: a built tokend in a temporary dir, and tokenctl against it.
#pragma once

#include <string>
#include <vector>

#include "tests/support/process.h"

namespace tokend::test {

// One tokend on `<dir>/data` with its socket at `<dir>/sock/tokend.sock` (a separate 0755 dir,
// so that a test can let another uid reach it). TOKEND and TOKENCTL come from the environment.
class Daemon {
 public:
  Daemon();
  ~Daemon();  // stops the daemon if it still runs
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Starts tokend with `extra` arguments and waits (at most 10 s) until the socket answers.
  // Throws when it does not come up (the test then fails with the daemon's stderr).
  void start(const std::vector<std::string>& extra = {});
  // SIGTERM; returns the exit status.
  int stop();
  bool running() const { return child_.pid > 0; }
  pid_t pid() const { return child_.pid; }

  // The admin's first token, left in <data>/first-token by the first start on a fresh data dir.
  const std::string& adminToken() const { return adminToken_; }
  const std::string& socket() const { return socket_; }
  const std::string& dataDir() const { return data_; }
  const TempDir& dir() const { return dir_; }
  std::string err() const { return child_.err(); }

  // Runs `tokenctl --db <data> args...`; returns stdout without its final newline and throws
  // when tokenctl fails.
  std::string ctl(const std::vector<std::string>& args) const;
  RunResult ctlRun(const std::vector<std::string>& args) const;

 private:
  TempDir dir_;
  std::string data_;
  std::string socket_;
  std::string tokend_;
  std::string tokenctl_;
  Child child_;
  std::string adminToken_;
};

// Monotonic nanoseconds (CLOCK_MONOTONIC, comparable between processes).
long long monoNanos();

}  // namespace tokend::test
