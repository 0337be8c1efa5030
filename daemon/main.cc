// tokend: the token-verification daemon's entry point: configuration, the key database, the
// shared-memory cache, the socket, the workers, and an orderly shutdown on SIGTERM/SIGINT.
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <thread>
#include <tuple>

#include "base/clock.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "daemon/config.h"
#include "daemon/management.h"
#include "daemon/service.h"
#include "daemon/session.h"
#include "daemon/tcp_listen.h"
#include "replica/start.h"
#include "replica/status.h"
#include "replica/writeback.h"
#include "shm/cache.h"
#include "verifier/catalog.h"
#include "verifier/manage.h"

namespace tokend::daemon {
namespace {

// `lock` receives the descriptor holding `<path>.lock`: keep it open while serving.
Result<UniqueFd> listenUnix(const std::string& path, unsigned mode, UniqueFd& lock) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return makeError("socket path is too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  // Who owns the socket path is decided by a lock, not by whether the socket answers a connect:
  // a daemon killed while io_uring had an accept in flight leaves its listening socket alive in
  // the kernel until the ring's deferred teardown ends, and that socket takes connections (into
  // its backlog) that nobody will ever answer. A lock dies with its process.
  const std::string lockPath = path + ".lock";
  lock.reset(::open(lockPath.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock) return Error::fromErrno(errno, "Failed to open " + lockPath);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return makeError("another tokend is serving " + path, -EADDRINUSE);
    return Error::fromErrno(errno, "Failed to lock " + lockPath);
  }
  // We hold the lock: a socket file there is a dead daemon's.
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return makeError(path + " exists and is not a socket");
    ::unlink(path.c_str());
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::fromErrno(errno, "Failed to create the socket");
  // Bind with a restrictive umask, then open up to `mode`: no moment where it is wider.
  mode_t old = ::umask(0177);
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (rc != 0) return Error::fromErrno(errno, "Failed to bind " + path);
  if (::chmod(path.c_str(), mode) != 0) return Error::fromErrno(errno, "Failed to chmod " + path);
  if (::listen(fd.get(), 4096) != 0) return Error::fromErrno(errno, "Failed to listen on " + path);
  return fd;
}

// The directories tokend trusts (SPEC 12), checked like sshd's StrictModes: whoever can write
// the data dir can swap data.mdb (and so an owner token of their own) or the socket; whoever can
// write the socket's directory can put a listener of their own, answering "OK" to everything, in
// place of tokend's. `dir` itself must be owned by tokend's uid or root and writable by nobody
// else (group and other write bits off, sticky or not). Every directory above it must be owned by
// tokend's uid or root and writable by nobody else unless it is sticky (/tmp: others cannot
// rename or remove there what they do not own). Both the path as given (each prefix, so the
// directory holding a symlink counts) and the resolved path are checked: a few stat calls.
Result<void> checkTrustedDir(const std::string& dir, const char* what, const char* modeFix) {
  const uid_t me = ::geteuid();
  auto check = [&](const std::string& path, bool leaf) -> Result<void> {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return Error::fromErrno(errno, "Failed to stat " + path);
    if (!S_ISDIR(st.st_mode)) return makeError(path + " is not a directory");
    const std::string name = leaf ? fmt::format("the {} {}", what, path)
                                  : fmt::format("{} (above the {} {})", path, what, dir);
    if (st.st_uid != me && st.st_uid != 0) {
      return makeError(fmt::format(
          "{} is owned by uid {}, neither tokend's uid {} nor root: its owner could replace what "
          "tokend keeps there. Fix: chown {} {} (or run tokend as uid {})",
          name, st.st_uid, me, me, path, st.st_uid));
    }
    const bool sticky = (st.st_mode & S_ISVTX) != 0;
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (leaf || !sticky)) {
      const char* who = (st.st_mode & S_IWOTH) == 0   ? "its group"
                        : (st.st_mode & S_IWGRP) == 0 ? "others"
                                                      : "its group and others";
      return makeError(fmt::format(
          "{} is writable by {} (mode {:04o}): they could replace what tokend keeps there. Fix: "
          "{} {}{}",
          name, who, st.st_mode & 07777, leaf ? modeFix : "chmod go-w", path,
          leaf ? "" : fmt::format(" (or chmod +t {})", path)));
    }
    return {};
  };
  // Each prefix of `path` from the root down, then `path` itself as the leaf.
  auto walk = [&](const std::string& path) -> Result<void> {
    for (size_t pos = path.find('/', 1); pos != std::string::npos; pos = path.find('/', pos + 1)) {
      if (auto r = check(path.substr(0, pos), false); !r) return r;
    }
    return check(path, true);
  };
  std::string absolute = dir;
  if (absolute.empty() || absolute[0] != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return Error::fromErrno(errno, "Failed to getcwd");
    absolute = std::string(cwd) + "/" + absolute;
  }
  while (absolute.size() > 1 && absolute.back() == '/') absolute.pop_back();
  if (auto r = check("/", absolute == "/"); !r) return r;
  if (absolute != "/") {
    if (auto r = walk(absolute); !r) return r;
  }
  char resolved[PATH_MAX];
  if (::realpath(absolute.c_str(), resolved) == nullptr)
    return Error::fromErrno(errno, "Failed to resolve " + absolute);
  if (resolved != absolute && std::string_view(resolved) != "/") return walk(resolved);
  return {};
}

// Creates the data dir (and missing parents) 0700, as KeyDb::open would, so that it is checked
// and locked before the database in it is opened.
Result<void> makeDataDir(const std::string& dir) {
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST)
      return Error::fromErrno(errno, "Failed to create " + part);
  }
  return {};
}

// The data dir belongs to one tokend at a time, whatever socket each serves: a flock on
// <data-dir>/tokend.lock, held while serving, released when the process ends however it ends.
Result<UniqueFd> lockDataDir(const std::string& dir) {
  const std::string path = dir + "/tokend.lock";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return Error::fromErrno(errno, "Failed to open " + path);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      return makeError("another tokend is using the data dir " + dir + " (it holds " + path + ")");
    return Error::fromErrno(errno, "Failed to lock " + path);
  }
  return fd;
}

Result<void> writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::fromErrno(errno, "write");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// On a fresh data dir: an owner named admin and a first token. A service manager keeps stdout in
// its log (journald, log forwarders), so the key goes to <data-dir>/first-token (0600, created
// here, never an existing file or a symlink) and to stdout only when stdout is a terminal. The
// log names the file and the token's id, never the secret.
Result<void> createAdmin(verifier::Manager& manager, const std::string& dataDir) {
  auto users = manager.users();
  if (!users) return users.error();
  if (!users->empty()) return {};
  // Opened before the owner is made: a key that cannot be handed over is never created.
  const std::string path = dataDir + "/first-token";
  UniqueFd file(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!file) {
    if (errno == EEXIST)
      return makeError(path +
                       " already exists on a data dir with no users: remove it (it is not "
                       "this database's token)");
    return Error::fromErrno(errno, "Failed to create " + path);
  }
  auto admin = manager.createUser("admin", {"owner"}, clockNow());
  if (!admin) return admin.error();
  verifier::CreateTokenRequest req;
  req.user = admin->id;
  req.name = "first-token";
  auto token = manager.createToken(req, clockNow());
  if (!token) {
    ::unlink(path.c_str());
    return token.error();
  }
  std::string line = token->key + "\n";
  auto written = writeAll(file.get(), line);
  if (written && ::fsync(file.get()) != 0) written = Error::fromErrno(errno, "fsync");
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  if (written && terminal) (void)writeAll(STDOUT_FILENO, line);
  OPENSSL_cleanse(line.data(), line.size());
  OPENSSL_cleanse(token->key.data(), token->key.size());
  if (!written) {
    ::unlink(path.c_str());
    return makeError(fmt::format(
        "Failed to write the first token to {}: {}; make one with tokenctl --db {} tokens create "
        "--user admin",
        path, written.error().message, dataDir));
  }
  log::info(
      "Created the owner \"admin\" and its first token {} \"first-token\" (expires {}); its key is "
      "in {} (mode 0600){}: delete the file once the key is kept elsewhere",
      token->record.id, token->record.expiresAt, path,
      terminal ? " and was printed on this terminal" : "");
  return {};
}

int run(int argc, char** argv) {
  Config config;
  int exitCode = 0;
  if (parseConfig(argc, argv, config, exitCode) == ParseOutcome::Exit) return exitCode;
  log::setLevel(config.logLevel == "debug"   ? log::Level::Debug
                : config.logLevel == "warn"  ? log::Level::Warn
                : config.logLevel == "error" ? log::Level::Error
                                             : log::Level::Info);
  // Before any key or request is in memory: no core file and no ptrace by our own uid (the
  // process memory holds token hashes, requests with tokens in them, and created keys).
  if (!config.allowCoreDumps) {
    const rlimit noCore{0, 0};
    if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || ::setrlimit(RLIMIT_CORE, &noCore) != 0) {
      log::error("Failed to turn core dumps off: {} (--allow-core-dumps to run with them)",
                 std::strerror(errno));
      return 1;
    }
  }

  // Signals are taken by one thread with sigwait: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // Before anything is created: a rules file with a mistake stops the start, naming the line.
  auto routeRules = config.routeRulesPath.empty() ? Result<RouteRules>(RouteRules())
                                                  : RouteRules::load(config.routeRulesPath);
  if (!routeRules) {
    log::error("Failed to load the route rules: {}", routeRules.error().message);
    return 1;
  }
  if (!routeRules->empty())
    log::info("Route rules: {} from {}", routeRules->size(), config.routeRulesPath);

  verifier::KeyDbOptions dbOptions;
  if (config.maxDbSize != 0) {
    dbOptions.maxMapSize = config.maxDbSize;
    dbOptions.initialMapSize = std::min(dbOptions.initialMapSize, config.maxDbSize);
  }
  if (auto r = makeDataDir(config.dataDir); !r) {
    log::error("{}", r.error().message);
    return 1;
  }
  const std::string socketDir = config.socketPath.find('/') == std::string::npos ? "."
                                : config.socketPath.rfind('/') == 0
                                    ? "/"
                                    : config.socketPath.substr(0, config.socketPath.rfind('/'));
  for (auto [dir, what, fix] : {std::tuple{config.dataDir, "data dir", "chmod 0700"},
                                std::tuple{socketDir, "socket directory", "chmod go-w"}}) {
    if (auto r = checkTrustedDir(dir, what, fix); !r) {
      log::error("Refusing to start: {}", r.error().message);
      return 1;
    }
  }
  auto dataLock = lockDataDir(config.dataDir);
  if (!dataLock) {
    log::error("Failed to lock the data dir: {}", dataLock.error().message);
    return 1;
  }
  auto db = verifier::KeyDb::open(config.dataDir, dbOptions);
  if (!db) {
    log::error("Failed to open the key database in {}: {}", config.dataDir, db.error().message);
    return 1;
  }
  verifier::Manager manager(**db, config.lifetimes);
  // SPEC 11: PostgreSQL holds the users (the first owner too), and takes last_used and the
  // sliding refresh from every replica (replica/writeback.h).
  const bool replicaMode = !config.postgres.empty();
  // The local copy follows PostgreSQL: a change made to it alone would diverge (or be undone by
  // the next reload). Writing through to PostgreSQL is not built yet: refuse, clearly.
  if (replicaMode) {
    manager.refuseWrites(
        "This tokend is a replica of PostgreSQL (--postgres): users and tokens are changed in "
        "PostgreSQL, and every replica follows; writes through tokend are not built yet.");
  }
  std::unique_ptr<replica::Replica> follower;
  if (replicaMode) {
    replica::ReplicaOptions options;
    options.conninfo = config.postgres;
    options.reconcileIntervalMs = config.reconcileIntervalSeconds * 1000;
    auto r = replica::startReplica(**db, options, config.dataDir, [&] {
      sigset_t pending;
      sigpending(&pending);
      return sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1;
    });
    if (!r) {
      log::error("Failed to start the PostgreSQL replica: {}", r.error().message);
      return 1;
    }
    follower = std::move(*r);
  }
  if (config.createAdmin && !replicaMode) {
    if (auto r = createAdmin(manager, config.dataDir); !r) {
      log::error("Failed to create the admin user: {}", r.error().message);
      return 1;
    }
  }
  auto cache = shm::Cache::create({config.cacheEntries, verifier::catalog::version()});
  if (!cache) {
    log::error("Failed to create the shared-memory cache: {}", cache.error().message);
    return 1;
  }
  UniqueFd socketLock;
  auto listener = listenUnix(config.socketPath, config.socketMode, socketLock);
  if (!listener) {
    log::error("Failed to listen: {}", listener.error().message);
    return 1;
  }

  // SPEC 7: the HTTP service on TCP too, and a metrics-only listener; neither has peer
  // credentials, so the sessions serve them HTTP only, without the segment (session.cc).
  std::vector<Listener> listeners{{listener->get(), ListenerKind::Unix}};
  UniqueFd httpFd, metricsFd;
  std::string tcpNote;
  for (auto [text, kind, fd] :
       {std::tuple{&config.httpListen, ListenerKind::Http, &httpFd},
        std::tuple{&config.metricsListen, ListenerKind::Metrics, &metricsFd}}) {
    if (text->empty()) continue;
    const bool http = kind == ListenerKind::Http;
    TcpAddress bound;
    auto tcp = listenTcp(*text, http ? config.httpListenAny : true, bound);
    if (!tcp) {
      log::error("Failed to listen on {} {}: {}", http ? "--http-listen" : "--metrics-listen",
                 *text, tcp.error().message);
      ::unlink(config.socketPath.c_str());
      return 1;
    }
    *fd = std::move(*tcp);
    listeners.push_back({fd->get(), kind});
    tcpNote += fmt::format(", {} on http://{}", http ? "HTTP" : "metrics", formatTcpAddress(bound));
  }

  Metrics metrics(config.loop.threads);
  ServiceOptions serviceOptions{config.lifetimes, config.writebackIntervalMs,
                                config.invalidationPollUs};
  // Declared before the service: its last write-back, in stop(), goes through it.
  std::unique_ptr<replica::PgWriteback> pgWriteback;
  if (replicaMode) {
    pgWriteback = std::make_unique<replica::PgWriteback>(
        replica::WritebackOptions{.conninfo = config.postgres});
    serviceOptions.writeUses = [wb = pgWriteback.get()](std::span<DueUse> due) -> Result<size_t> {
      std::vector<replica::TokenUse> uses(due.size());
      for (size_t i = 0; i < due.size(); ++i) {
        uses[i].id = due[i].use.id;
        uses[i].at = due[i].use.at;
        uses[i].refresh = due[i].update.refresh;
        uses[i].seenExpiresAt = due[i].use.seenExpiresAt;
      }
      auto written = wb->write(uses);
      for (size_t i = 0; i < due.size(); ++i) {
        due[i].refreshed = uses[i].refreshed;
        due[i].retry = uses[i].locked;
      }
      return written;
    };
  }
  if (follower && config.maxStalenessSeconds > 0) {
    serviceOptions.unavailable = [stats = &follower->stats(), max = config.maxStalenessSeconds] {
      return replica::olderThan(*stats, max);
    };
  }
  Service service(**db, *cache, metrics, serviceOptions);
  Management management(service, manager);
  SessionFactoryImpl factory(
      service, management,
      SessionConfig{config.shmAllowUids, config.shmAllowGids, std::move(*routeRules)},
      config.loop.threads);
  if (follower) {
    const replica::ReplicaStats* stats = &follower->stats();
    const replica::WritebackStats* written = &pgWriteback->stats();
    factory.setExtraMetrics([stats, written] {
      return replica::renderMetrics(*stats) + replica::renderWritebackMetrics(*written);
    });
    factory.setNotReady([stats] { return replica::notReady(*stats); });
  }
  auto server = Server::create(listeners, config.loop, factory);
  if (!server) {
    log::error("Failed to start the event loop: {}", server.error().message);
    ::unlink(config.socketPath.c_str());
    return 1;
  }
  factory.setLoopStats(&(*server)->stats());
  Introspector introspector(service, manager, config.introspectUsers);
  factory.setIntrospector(&introspector);
  service.start();

  std::thread signalThread([&] {
    pthread_setname_np(pthread_self(), "tokend-signals");
    int sig = 0;
    sigwait(&signals, &sig);
    log::info("Received {}: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    (*server)->stop();
  });
  log::info("tokend listening on {}{} ({} backend, {} threads, {} cache slots, data dir {})",
            config.socketPath, tcpNote, (*server)->backendName(), config.loop.threads,
            cache->slotCount(), config.dataDir);
  (*server)->run();

  // Nothing new arrives now: commit what the workers saw, then leave.
  if (follower) follower->stop();
  service.stop();
  ::unlink(config.socketPath.c_str());
  // The signal thread is still waiting if run() ended on its own: wake it.
  pthread_kill(signalThread.native_handle(), SIGTERM);
  signalThread.join();
  log::info("tokend stopped");
  return 0;
}

}  // namespace
}  // namespace tokend::daemon

int main(int argc, char** argv) {
  return tokend::daemon::run(argc, argv);
}
