// The daemon's one call into the replica: make the local copy servable, then follow.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "base/result.h"
#include "replica/replica.h"

namespace tokend::replica {

// A replica of `options.conninfo` for the data dir `dataDir` (options.name, when empty, becomes
// "<hostname>:<absolute data dir>", its row in tokend.replicas). A copy loaded before is served at
// once and caught up in the background; a new one is loaded here first, retried with backoff while
// PostgreSQL cannot be reached (a new replica has nothing to serve) until `stopRequested` says to
// give up. The replica's thread is running when this returns.
Result<std::unique_ptr<Replica>> startReplica(verifier::KeyDb& db, ReplicaOptions options,
                                              const std::string& dataDir,
                                              const std::function<bool()>& stopRequested);

}  // namespace tokend::replica
