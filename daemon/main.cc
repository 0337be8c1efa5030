// tokend: the token-verification daemon's entry point: configuration, the key database, the
// shared-memory cache, the socket, the workers, and an orderly shutdown on SIGTERM/SIGINT.
#include <fcntl.h>
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "base/clock.h"
#include "base/log.h"
#include "base/unique_fd.h"
#include "daemon/config.h"
#include "daemon/management.h"
#include "daemon/service.h"
#include "daemon/session.h"
#include "replica/start.h"
#include "replica/status.h"
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

// On a fresh data dir: an owner named admin and a first token, printed once on stdout.
Result<void> createAdmin(verifier::Manager& manager) {
  auto users = manager.users();
  if (!users) return users.error();
  if (!users->empty()) return {};
  auto admin = manager.createUser("admin", {"owner"}, clockNow());
  if (!admin) return admin.error();
  verifier::CreateTokenRequest req;
  req.user = admin->id;
  req.name = "first-token";
  auto token = manager.createToken(req, clockNow());
  if (!token) return token.error();
  log::info(
      "Created the owner \"admin\" and its first token \"first-token\" (expires {}); the token is "
      "printed once on stdout",
      token->record.expiresAt);
  fmt::print("{}\n", token->key);
  std::fflush(stdout);
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

  // Signals are taken by one thread with sigwait: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  verifier::KeyDbOptions dbOptions;
  if (config.maxDbSize != 0) {
    dbOptions.maxMapSize = config.maxDbSize;
    dbOptions.initialMapSize = std::min(dbOptions.initialMapSize, config.maxDbSize);
  }
  auto db = verifier::KeyDb::open(config.dataDir, dbOptions);
  if (!db) {
    log::error("Failed to open the key database in {}: {}", config.dataDir, db.error().message);
    return 1;
  }
  verifier::Manager manager(**db, config.lifetimes);
  // SPEC 11: PostgreSQL holds the users (the first owner too); nothing is written back to it
  // yet, so the sliding refresh, which only a write-back makes real, is off.
  const bool replicaMode = !config.postgres.empty();
  if (replicaMode) config.lifetimes.refreshEnabled = false;
  std::unique_ptr<replica::Replica> follower;
  if (replicaMode) {
    auto r = replica::startReplica(**db, config.postgres, config.dataDir, [&] {
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
    if (auto r = createAdmin(manager); !r) {
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

  Metrics metrics(config.loop.threads);
  Service service(
      **db, *cache, metrics,
      ServiceOptions{config.lifetimes, config.writebackIntervalMs, config.invalidationPollUs});
  Management management(service, manager);
  SessionFactoryImpl factory(service, management,
                             SessionConfig{config.shmAllowUids, config.shmAllowGids},
                             config.loop.threads);
  if (follower) {
    const replica::ReplicaStats* stats = &follower->stats();
    factory.setExtraMetrics([stats] { return replica::renderMetrics(*stats); });
    factory.setNotReady([stats] { return replica::notReady(*stats); });
  }
  auto server = Server::create(listener->get(), config.loop, factory);
  if (!server) {
    log::error("Failed to start the event loop: {}", server.error().message);
    ::unlink(config.socketPath.c_str());
    return 1;
  }
  factory.setLoopStats(&(*server)->stats());
  service.start();

  std::thread signalThread([&] {
    pthread_setname_np(pthread_self(), "tokend-signals");
    int sig = 0;
    sigwait(&signals, &sig);
    log::info("Received {}: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    (*server)->stop();
  });
  log::info("tokend listening on {} ({} backend, {} threads, {} cache slots, data dir {})",
            config.socketPath, (*server)->backendName(), config.loop.threads, cache->slotCount(),
            config.dataDir);
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
