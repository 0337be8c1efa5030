// startReplica: first load or serve-at-once, then the follower thread.
#include "replica/start.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "base/log.h"

namespace tokend::replica {

Result<std::unique_ptr<Replica>> startReplica(verifier::KeyDb& db, ReplicaOptions options,
                                              const std::string& dataDir,
                                              const std::function<bool()>& stopRequested) {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  char real[PATH_MAX];
  std::string dir = ::realpath(dataDir.c_str(), real) ? real : dataDir;
  if (options.name.empty()) options.name = std::string(host) + ":" + dir;
  auto replica = std::make_unique<Replica>(db, options);
  auto loaded = replica->loaded();
  if (!loaded) return loaded.error();
  if (*loaded) {
    log::info("Serving the local copy of PostgreSQL; catching up in the background");
  } else {
    int waitMs = 100;
    bool logged = false;
    for (;;) {
      auto r = replica->load();
      if (r) break;
      // A schema that is missing or of another version will not fix itself: stop.
      if (r.error().code == -EPROTO || r.error().code == -ENOENT) return r.error();
      if (!logged || waitMs >= 5000) {
        log::warn(
            "Failed to load the first snapshot from PostgreSQL (retrying; nothing is served "
            "until it loads): {}",
            r.error().message);
        logged = true;
      }
      for (int slept = 0; slept < waitMs; slept += 50) {
        if (stopRequested()) return makeError("stopped before the first snapshot loaded", -EINTR);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      waitMs = std::min(5000, waitMs * 2);
    }
  }
  replica->start();
  return replica;
}

}  // namespace tokend::replica
