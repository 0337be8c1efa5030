// Test support: a private PostgreSQL cluster per test (initdb in a temporary dir, Unix socket
// only, started and stopped by the test), and psql against it.
#pragma once

#include <string>

#include "tests/support/process.h"

namespace tokend::test {

class PgCluster {
 public:
  // Where Debian keeps PostgreSQL 15's server programs (initdb, pg_ctl, postgres).
  static constexpr const char* kBin = "/usr/lib/postgresql/15/bin";
  // Whether the programs are there (and, as root, the `postgres` user to run them as: PostgreSQL
  // refuses to run as root). A test calls skipUnlessAvailable() first: exit 77 (SKIP) otherwise.
  static bool available();
  static void skipUnlessAvailable();

  // initdb (trust authentication, fsync off, commit timestamps tracked so that a test can time
  // from a commit) and start; throws on failure.
  PgCluster();
  ~PgCluster();  // stops the server (immediate) and removes everything
  PgCluster(const PgCluster&) = delete;
  PgCluster& operator=(const PgCluster&) = delete;

  // A libpq conninfo for database `postgres` as user `postgres` over the Unix socket.
  std::string conninfo() const;
  // psql -X -v ON_ERROR_STOP=1 -q -At -c SQL; the run's result.
  RunResult psql(const std::string& sql) const;
  // The same, required to succeed; stdout without its last newline.
  std::string psqlOk(const std::string& sql) const;
  void stop(const char* mode = "fast");
  void start();
  bool running() const { return running_; }

 private:
  RunResult asPostgres(const std::vector<std::string>& argv) const;
  TempDir dir_;
  std::string pgDir_;  // owned by the postgres user: data/, the socket, the log
  bool running_ = false;
};

}  // namespace tokend::test
