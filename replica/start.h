// The daemon's one call into the replica: make the local copy servable, then follow.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "base/result.h"
#include "replica/replica.h"

namespace tokend::replica {

// A replica of `conninfo` for the data dir `dataDir` (its name in tokend.replicas is
// "<hostname>:<absolute data dir>"). A copy loaded before is served at once and caught up in the
// background; a new one is loaded here first, retried with backoff while PostgreSQL cannot be
// reached (a new replica has nothing to serve) until `stopRequested` says to give up. The
// replica's thread is running when this returns.
Result<std::unique_ptr<Replica>> startReplica(verifier::KeyDb& db, const std::string& conninfo,
                                              const std::string& dataDir,
                                              const std::function<bool()>& stopRequested);

}  // namespace tokend::replica
