// tokend's configuration: flags, their environment variables, and defaults (SPEC 3, 7, 9, 10).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/result.h"
#include "daemon/loop.h"
#include "verifier/lifetime.h"

namespace tokend::daemon {

struct Config {
  std::string dataDir = "data";
  std::string socketPath;  // default <dataDir>/tokend.sock
  unsigned socketMode = 0660;
  LoopConfig loop;
  size_t cacheEntries = 1 << 16;  // slots in the shared-memory cache (a power of two)
  size_t maxDbSize = 0;           // bytes the LMDB map may grow to; 0: the stored cap
  std::vector<uid_t> shmAllowUids;
  std::vector<gid_t> shmAllowGids;
  // SPEC 7: the HTTP service on TCP too, ADDR:PORT ("127.0.0.1:8081", "[::1]:8081"); empty: off.
  std::string httpListen;
  bool httpListenAny = false;  // --http-listen may name an address that is not loopback
  std::string metricsListen;   // /metrics, /healthz, /readyz only, any address; empty: off
  // Users besides owners whose tokens may call POST /v1/introspect (the gateways' service users).
  std::vector<std::string> introspectUsers;
  std::string routeRulesPath;  // --route-rules: empty for none (docs/protocol.md)
  verifier::LifetimeConfig lifetimes;
  int writebackIntervalMs = 250;  // SPEC 3: at least once a second
  int invalidationPollUs = 250;   // how often the changelog watcher looks (SPEC 6: within 10 ms)
  bool createAdmin = true;        // a fresh data dir gets an owner "admin" and a first token
  bool allowCoreDumps = false;    // off: PR_SET_DUMPABLE 0 and RLIMIT_CORE 0 (memory holds keys)
  std::string logLevel = "info";
  // SPEC 11: a libpq conninfo; set, tokend is a replica of that PostgreSQL database.
  std::string postgres;
  // SPEC 11 --max-staleness: seconds a replica may go without being current before it answers
  // `unavailable`; 0: no bound (serve the last copy however old).
  int64_t maxStalenessSeconds = 0;
  // With --postgres: how often the whole copy is compared with PostgreSQL and repaired, and the
  // change log pruned (0: never).
  int64_t reconcileIntervalSeconds = 600;
};

enum class ParseOutcome { Run, Exit };

// Parses argv over the environment over the defaults. On --help or a usage error, prints and
// sets `exitCode`, returning Exit.
ParseOutcome parseConfig(int argc, char** argv, Config& config, int& exitCode);

}  // namespace tokend::daemon
