// Test support: private PostgreSQL clusters.
#include "tests/support/postgres.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace tokend::test {

namespace {
bool executable(const std::string& path) {
  return ::access(path.c_str(), X_OK) == 0;
}
std::string psqlPath() {
  return std::string(PgCluster::kBin) + "/psql";
}
}  // namespace

bool PgCluster::available() {
  for (const char* p : {"initdb", "pg_ctl", "postgres", "psql"})
    if (!executable(std::string(kBin) + "/" + p)) return false;
  if (::geteuid() == 0 && (::getpwnam("postgres") == nullptr || !executable("/usr/sbin/runuser")))
    return false;
  return true;
}

void PgCluster::skipUnlessAvailable() {
  if (!available()) {
    std::fprintf(stderr, "SKIP: PostgreSQL 15's programs (%s) are not installed\n", kBin);
    std::exit(77);
  }
}

RunResult PgCluster::asPostgres(const std::vector<std::string>& argv) const {
  std::vector<std::string> full;
  if (::geteuid() == 0) full = {"/usr/sbin/runuser", "-u", "postgres", "--"};
  full.insert(full.end(), argv.begin(), argv.end());
  return run(full);
}

PgCluster::PgCluster() {
  pgDir_ = dir_ / "pg";
  ::mkdir(pgDir_.c_str(), 0700);
  if (::geteuid() == 0) {
    // The server runs as postgres: it must reach its directory through ours.
    ::chmod(dir_.path().c_str(), 0755);
    passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr || ::chown(pgDir_.c_str(), pw->pw_uid, pw->pw_gid) != 0)
      throw std::runtime_error("cannot hand " + pgDir_ + " to the postgres user");
  }
  RunResult r = asPostgres({std::string(kBin) + "/initdb", "-D", pgDir_ + "/data", "-A", "trust",
                            "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"});
  if (r.status != 0) throw std::runtime_error("initdb failed: " + r.out + r.err);
  start();
}

PgCluster::~PgCluster() {
  if (running_) stop("immediate");
}

void PgCluster::start() {
  // Unix socket only; small, fast, and no disk flushes (the tests do not crash the machine).
  const std::string opts =
      "-c listen_addresses='' -c unix_socket_directories='" + pgDir_ +
      "' -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
      "-c max_connections=50 -c shared_buffers=16MB -c track_commit_timestamp=on";
  RunResult r = asPostgres({std::string(kBin) + "/pg_ctl", "-D", pgDir_ + "/data", "-l",
                            pgDir_ + "/log", "-o", opts, "-w", "-t", "30", "start"});
  if (r.status != 0)
    throw std::runtime_error("pg_ctl start failed: " + r.out + r.err + readFile(pgDir_ + "/log"));
  running_ = true;
}

void PgCluster::stop(const char* mode) {
  asPostgres({std::string(kBin) + "/pg_ctl", "-D", pgDir_ + "/data", "-m", mode, "-w", "-t", "30",
              "stop"});
  running_ = false;
}

std::string PgCluster::conninfo() const {
  return "host=" + pgDir_ + " user=postgres dbname=postgres";
}

RunResult PgCluster::psql(const std::string& sql) const {
  return run({psqlPath(), "-X", "-v", "ON_ERROR_STOP=1", "-q", "-At", "-d", conninfo(), "-c", sql});
}

std::string PgCluster::psqlOk(const std::string& sql) const {
  RunResult r = psql(sql);
  if (r.status != 0) throw std::runtime_error("psql failed: " + r.err + " in: " + sql);
  std::string out = r.out;
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace tokend::test
