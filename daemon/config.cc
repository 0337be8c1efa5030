// Command-line and environment parsing for tokend.
#include "daemon/config.h"

#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <limits>
#include <optional>
#include <thread>

#include "base/duration.h"
#include "base/size.h"

namespace tokend::daemon {
namespace {

// A CLI11 option for a duration in seconds, taking Go-style text.
void addDuration(CLI::App& app, const std::string& flag, const std::string& env,
                 const std::string& alias, int64_t& out, const std::string& help) {
  auto* opt = app.add_option_function<std::string>(
      flag,
      [&out, flag](const std::string& text) {
        auto d = parseDuration(text);
        if (!d) throw CLI::ValidationError(flag, d.error().message);
        out = *d;
      },
      help + fmt::format(" (default {})", formatDuration(out)));
  // The TOKEND_ name wins over Coder's.
  if (std::getenv(env.c_str()) != nullptr || alias.empty()) {
    opt->envname(env);
  } else {
    opt->envname(alias);
  }
}

}  // namespace

ParseOutcome parseConfig(int argc, char** argv, Config& c, int& exitCode) {
  CLI::App app{
      "tokend: verifies API tokens for the services on this host, over a Unix socket (text, HTTP "
      "and binary protocols) and a shared-memory cache.",
      "tokend"};
  app.get_formatter()->column_width(44);
  auto dataDir = app.add_option("--data-dir", c.dataDir,
                                "Data dir: the LMDB key database (created if missing)")
                     ->envname("TOKEND_DATA_DIR")
                     ->capture_default_str();
  (void)dataDir;
  app.add_option("--socket", c.socketPath, "Unix socket path (default <data-dir>/tokend.sock)")
      ->envname("TOKEND_SOCKET");
  std::string mode = "0660";
  app.add_option("--socket-mode", mode, "Socket file mode, octal")
      ->envname("TOKEND_SOCKET_MODE")
      ->capture_default_str();
  c.loop.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--threads", c.loop.threads, "Worker threads (default: the number of cores)")
      ->envname("TOKEND_THREADS")
      ->check(CLI::Range(1, 256));
  std::string io = "auto";
  app.add_option("--io", io, "I/O backend: uring, epoll or auto (io_uring, else epoll)")
      ->envname("TOKEND_IO")
      ->check(CLI::IsMember({"uring", "epoll", "auto"}))
      ->capture_default_str();
  app.add_option("--cache-entries", c.cacheEntries,
                 "Shared-memory cache slots (rounded up to a power of two)")
      ->envname("TOKEND_CACHE_ENTRIES")
      ->check(CLI::Range(size_t{64}, size_t{1} << 24))
      ->capture_default_str();
  app.add_option_function<std::string>(
         "--max-db-size",
         [&c](const std::string& text) {
           auto n = parseSize(text);
           if (!n || *n < (size_t{256} << 10))
             throw CLI::ValidationError("--max-db-size",
                                        "want a size of at least 256K, like 512M or 2G");
           c.maxDbSize = *n;
         },
         "Largest size the key database may grow to (K, M, G, T suffixes); a write past it is "
         "refused and verification goes on. Stored in the database: without it, the stored cap "
         "holds (default 1T), and tokenctl enforces it too")
      ->envname("TOKEND_MAX_DB_SIZE");
  app.add_option("--max-connections", c.loop.maxConnections,
                 "Connections served at once; more are closed")
      ->envname("TOKEND_MAX_CONNECTIONS")
      ->check(CLI::Range(size_t{1}, size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-connections-per-uid", c.loop.maxConnectionsPerUid,
                 "Connections one uid may hold, 0 for no cap (the daemon's own uid and "
                 "--shm-allow-uid uids are not capped)")
      ->envname("TOKEND_MAX_CONNECTIONS_PER_UID")
      ->check(CLI::Range(size_t{0}, size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--reserved-connections", c.loop.reservedConnections,
                 "Places of --max-connections kept for the daemon's own uid and --shm-allow-uid "
                 "uids")
      ->envname("TOKEND_RESERVED_CONNECTIONS")
      ->check(CLI::Range(size_t{0}, size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-pending-input", c.loop.maxPendingInput,
                 "Unanswered request bytes buffered per connection before it is closed")
      ->envname("TOKEND_MAX_PENDING_INPUT")
      ->check(CLI::Range(size_t{80 * 1024}, size_t{64} << 20))
      ->capture_default_str();
  app.add_option("--max-pending-output", c.loop.maxPendingOutput,
                 "Unsent answer bytes per connection before reading from it pauses (256 KiB)")
      ->envname("TOKEND_MAX_PENDING_OUTPUT")
      ->check(CLI::Range(size_t{4096}, size_t{1} << 30))
      ->capture_default_str();
  app.add_option_function<std::string>(
         "--max-buffered-output",
         [&c](const std::string& text) {
           auto n = parseSize(text);
           if (!n)
             throw CLI::ValidationError("--max-buffered-output",
                                        "want a size like 64M, or 0 for no budget");
           c.loop.maxBufferedOutput = *n;
         },
         "Unsent answer bytes across every connection; past it connections with a backlog "
         "stop being read and the largest backlogs are closed (K, M, G suffixes; 0: no budget; "
         "default 64M)")
      ->envname("TOKEND_MAX_BUFFERED_OUTPUT");
  app.add_option_function<std::string>(
         "--min-drain-bytes",
         [&c](const std::string& text) {
           auto n = parseSize(text);
           if (!n)
             throw CLI::ValidationError("--min-drain-bytes", "want a size like 64K, or 0 for off");
           c.loop.minDrainBytes = *n;
         },
         "Bytes a connection owing output must take per --stall-timeout-ms window (unless it "
         "took all), or it is closed (K, M suffixes; 0: off; default 1M)")
      ->envname("TOKEND_MIN_DRAIN_BYTES");
  app.add_option("--stall-timeout-ms", c.loop.stallTimeoutMs,
                 "A partial request older than this closes its connection")
      ->envname("TOKEND_STALL_TIMEOUT_MS")
      ->check(CLI::Range(10, 3600000))
      ->capture_default_str();
  app.add_option("--idle-timeout-ms", c.loop.idleTimeoutMs,
                 "An idle connection is closed after this")
      ->envname("TOKEND_IDLE_TIMEOUT_MS")
      ->check(CLI::Range(10, 86400000))
      ->capture_default_str();
  app.add_option("--shm-allow-uid", c.shmAllowUids,
                 "A uid allowed to map the cache segment (repeatable; the daemon's own always is)")
      ->envname("TOKEND_SHM_ALLOW_UID")
      ->delimiter(',');
  app.add_option("--shm-allow-gid", c.shmAllowGids,
                 "A gid allowed to map the cache segment (repeatable)")
      ->envname("TOKEND_SHM_ALLOW_GID")
      ->delimiter(',');
  app.add_option("--http-listen", c.httpListen,
                 "Also serve HTTP (verify, introspect, management API, health, metrics) on TCP "
                 "ADDR:PORT, e.g. 127.0.0.1:8081 or [::1]:8081; loopback only unless "
                 "--http-listen-any")
      ->envname("TOKEND_HTTP_LISTEN");
  app.add_flag("--http-listen-any", c.httpListenAny,
               "Let --http-listen take an address that is not loopback (anyone who reaches it can "
               "verify and manage tokens: put TLS and a firewall in front)")
      ->envname("TOKEND_HTTP_LISTEN_ANY");
  app.add_option("--metrics-listen", c.metricsListen,
                 "Serve /metrics, /healthz and /readyz only on TCP ADDR:PORT (any address)")
      ->envname("TOKEND_METRICS_LISTEN");
  app.add_option("--introspect-user", c.introspectUsers,
                 "A user (by name) whose tokens may call POST /v1/introspect besides owners "
                 "(repeatable)")
      ->envname("TOKEND_INTROSPECT_USER")
      ->delimiter(',');

  app.add_option("--route-rules", c.routeRulesPath,
                 "File of METHOD PATH-PATTERN PERMISSION [OBJECT] lines: what a forwarded "
                 "request (Traefik forwardAuth, Envoy ext_authz) needs")
      ->envname("TOKEND_ROUTE_RULES");

  auto& lt = c.lifetimes;
  addDuration(app, "--session-duration", "TOKEND_SESSION_DURATION", "CODER_SESSION_DURATION",
              lt.sessionDuration, "Lifetime of session tokens");
  bool noRefresh = false;
  app.add_flag("--disable-session-expiry-refresh", noRefresh,
               "Turn the sliding session refresh off")
      ->envname(std::getenv("TOKEND_DISABLE_SESSION_EXPIRY_REFRESH") ||
                        !std::getenv("CODER_DISABLE_SESSION_EXPIRY_REFRESH")
                    ? "TOKEND_DISABLE_SESSION_EXPIRY_REFRESH"
                    : "CODER_DISABLE_SESSION_EXPIRY_REFRESH");
  addDuration(app, "--default-token-lifetime", "TOKEND_DEFAULT_TOKEN_LIFETIME",
              "CODER_DEFAULT_TOKEN_LIFETIME", lt.defaultTokenLifetime,
              "Lifetime of an API token created without one");
  addDuration(app, "--max-token-lifetime", "TOKEND_MAX_TOKEN_LIFETIME", "CODER_MAX_TOKEN_LIFETIME",
              lt.maxTokenLifetime, "Cap for tokens of users who are not owners");
  addDuration(app, "--max-admin-token-lifetime", "TOKEND_MAX_ADMIN_TOKEN_LIFETIME",
              "CODER_MAX_ADMIN_TOKEN_LIFETIME", lt.maxAdminTokenLifetime,
              "Cap for tokens of users who hold the owner role");
  app.add_option("--writeback-interval-ms", c.writebackIntervalMs,
                 "How often last_used and refreshed expiries are committed")
      ->envname("TOKEND_WRITEBACK_INTERVAL_MS")
      ->check(CLI::Range(10, 1000))
      ->capture_default_str();
  app.add_option("--log-level", c.logLevel, "debug, info, warn or error")
      ->envname("TOKEND_LOG_LEVEL")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->capture_default_str();
  app.add_option("--postgres", c.postgres,
                 "Follow this PostgreSQL database (libpq conninfo or URI): a replica of its users "
                 "and api_keys (SPEC 11)")
      ->envname("TOKEND_POSTGRES");
  addDuration(app, "--max-staleness", "TOKEND_MAX_STALENESS", "", c.maxStalenessSeconds,
              "With --postgres: once the copy has not been current for this long, answer "
              "'unavailable' (503) rather than trust it; 0s: no bound");
  addDuration(app, "--reconcile-interval", "TOKEND_RECONCILE_INTERVAL", "",
              c.reconcileIntervalSeconds,
              "With --postgres: compare the whole copy with PostgreSQL and repair what differs, "
              "and prune the change log, about this often; 0s: never");
  bool noAdmin = false;
  app.add_flag("--no-admin", noAdmin, "Do not create the admin user on a fresh data dir");
  app.add_flag("--allow-core-dumps", c.allowCoreDumps,
               "Let the process be dumped and traced by its user (off: not dumpable, core limit 0, "
               "since its memory holds token hashes and requests)")
      ->envname("TOKEND_ALLOW_CORE_DUMPS");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    exitCode = app.exit(e);
    if (exitCode != 0) exitCode = 2;
    return ParseOutcome::Exit;
  }
  char* end = nullptr;
  unsigned long m = std::strtoul(mode.c_str(), &end, 8);
  if (mode.empty() || *end != '\0' || m > 0777) {
    fmt::print(stderr, "tokend: --socket-mode: want an octal mode like 0660, got \"{}\"\n", mode);
    exitCode = 2;
    return ParseOutcome::Exit;
  }
  c.socketMode = static_cast<unsigned>(m);
  if (c.maxStalenessSeconds > 0 && c.postgres.empty()) {
    fmt::print(stderr,
               "tokend: --max-staleness bounds how old a PostgreSQL replica's copy may be: it "
               "needs --postgres\n");
    exitCode = 2;
    return ParseOutcome::Exit;
  }
  c.loop.backend = io == "uring" ? Backend::Uring : io == "epoll" ? Backend::Epoll : Backend::Auto;
  lt.refreshEnabled = !noRefresh;
  c.createAdmin = !noAdmin;
  if (c.socketPath.empty()) c.socketPath = c.dataDir + "/tokend.sock";
  // The daemon's own uid and the uids trusted with the segment (gateways, libtokend users) are
  // not capped per uid and may use the reserved places.
  c.loop.reservedUids = c.shmAllowUids;
  c.loop.reservedUids.push_back(::getuid());
  return ParseOutcome::Run;
}

}  // namespace tokend::daemon
