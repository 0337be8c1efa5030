// Service: the verification path (shared-memory cache first, else the key database), the
// changelog watcher that invalidates cache entries, and the write-back of last_used and the
// sliding refresh. Knows nothing of sockets or protocols: sessions call verify().
//
// Threads: one Worker per loop worker thread (never shared); the watcher and the write-back each
// run on a thread of their own, started by start() and stopped by stop().
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/result.h"
#include "daemon/metrics.h"
#include "daemon/query.h"
#include "shm/cache.h"
#include "verifier/keydb.h"
#include "verifier/lifetime.h"
#include "verifier/verify.h"

namespace tokend::daemon {

// One use of a token, for the write-back.
struct Use {
  std::array<char, verifier::kTokenIdLength> id{};
  int64_t at = 0;
  // Learnt from a client's USAGE_REPORT, not from a verification of this daemon: the write-back
  // then refreshes no expiry that has passed meanwhile (a report never revives a session).
  bool reported = false;
  // The expiry the use was verified against (the cached entry's): a write-back to PostgreSQL
  // raises no expiry that was lowered below it meanwhile (ServiceOptions::writeUses).
  int64_t seenExpiresAt = 0;
};

// One token's write-back as flushUses decided it (usageUpdate against the local copy), for
// ServiceOptions::writeUses.
struct DueUse {
  Use use;  // the token's latest use
  verifier::UsageUpdate update;
  bool refreshed = false;  // set by writeUses: the refresh was written
  bool retry = false;      // set by writeUses: nothing written now, keep it for the next round
};

// Why reportUses() refused an entry (the label of tokend_usage_reports_refused_total).
enum class UseRefusal : uint8_t {
  NotAttached,  // the connection was never handed the segment
  Time,         // dated in the future, or more than shm::kUseReportDelay back
  NotCached,    // no current cache entry: never filled, invalidated, evicted, or user-stale
  NotVerified,  // the entry was not verified with its secret within shm::kUseVerifiedWithin
  Expired,      // the token was expired (or its user inactive) at the reported time
  Full,         // too many uses wait for the write-back
};
static_assert(static_cast<int>(UseRefusal::Full) + 1 == kUseRefusalCount);
std::string_view useRefusalName(UseRefusal r);

struct ServiceOptions {
  verifier::LifetimeConfig lifetimes;
  int writebackIntervalMs = 250;
  int invalidationPollUs = 250;
  // Asked by the changelog watcher at each look: while it says true, every verification answers
  // `unavailable` (SPEC 11 --max-staleness) and the cache is empty, so that libtokend's fast
  // path misses and asks the socket. Empty: never.
  std::function<bool()> unavailable;
  // When set, the write-back hands each round's due uses to it instead of writing the local
  // database (SPEC 11: a replica's copy follows PostgreSQL, which takes the writes). It returns
  // how many tokens it changed and marks each DueUse whose refresh it wrote, and each to try
  // again next round; a refresh it did not write is taken out of the cache (whose copy had it
  // already), so the next verification reads the local copy again. On an error every use is
  // kept for the next round (bounded).
  std::function<Result<size_t>(std::span<DueUse>)> writeUses;
};

class Service {
 public:
  // Per-thread state: a long-lived LMDB reader, a SHA-256 context, scratch for compiled tokens,
  // and the uses this thread saw since the last write-back.
  class Worker {
   public:
    MetricsShard& metrics() { return *metrics_; }

   private:
    friend class Service;
    std::unique_ptr<verifier::Reader> reader_;
    verifier::Sha256 sha_;
    std::unique_ptr<verifier::CompiledToken> scratch_ = std::make_unique<verifier::CompiledToken>();
    shm::CacheEntry entry_{};
    std::array<char, verifier::kTokenIdLength> tokenId_{};
    std::array<char, shm::kUsernameMax> username_{};
    std::mutex usesMu_;
    std::vector<Use> uses_;
    MetricsShard* metrics_ = nullptr;
    int64_t now_ = 0;  // the batch's wall clock (beginBatch), 0 outside a batch
  };

  Service(verifier::KeyDb& db, shm::Cache& cache, Metrics& metrics, const ServiceOptions& options);
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // A worker for thread `index` (its metrics shard). The Service keeps a pointer until it is
  // destroyed; workers must outlive stop().
  Result<std::unique_ptr<Worker>> makeWorker(int index);

  // A session calls these around the requests of one received batch. beginBatch() reads the wall
  // clock once for the batch (decisions need whole seconds, and a batch is answered within
  // microseconds); endBatch() drops it, so a verify() outside a batch reads the clock itself.
  void beginBatch(Worker& w) const;
  void endBatch(Worker& w) const { w.now_ = 0; }
  // Starts loading the cache slot of `token`'s id (when it has the shape of one), for a verify()
  // of it soon after: a batch's slot loads overlap instead of stalling one by one.
  void prefetch(std::string_view token) const;

  // Verifies `query` into `answer`; the answer's views point into `w` until its next call.
  // Returns false when the machine failed (a database read error, logged once): no answer.
  bool verify(Worker& w, const VerifyQuery& query, VerifyAnswer& answer);

  // Uses seen on a client's fast path (USAGE_REPORT), from a connection that was handed the
  // segment (`attached`) or not. A use is accepted only for a token whose cache entry is current
  // and was verified by this daemon with the token's secret within shm::kUseVerifiedWithin, dated
  // at most shm::kUseReportDelay back (and not in the future), when the entry was not expired:
  // the write-back then does what a verification at that time would have done, never more.
  // Returns how many were accepted; the others are counted by UseRefusal.
  size_t reportUses(std::span<const Use> uses, bool attached);

  // Runs `job` on the write-back thread (tokend-writer), in order with the other jobs: management
  // writes, whose commit and fsync must not hold up the I/O worker that received them. Jobs
  // still queued at stop() run before it returns.
  void post(std::function<void()> job);

  // Starts the changelog watcher and the write-back threads.
  void start();
  // Stops both threads after one last write-back: nothing seen is lost.
  void stop();
  // Commits every pending use now (the write-back thread does this every interval).
  Result<void> flushUses();

  verifier::KeyDb& db() { return db_; }
  shm::Cache& cache() { return cache_; }
  Metrics& metrics() { return metrics_; }
  const verifier::LifetimeConfig& lifetimes() const { return options_.lifetimes; }

 private:
  // After a verification of `e` at `now` that presented its secret (`verdict` not bad_secret):
  // queues the use when it is allowed and due, and marks the cached copy (the values the use will
  // write, and verifiedAt when the mark is stale) so that the next hits do not do it again.
  void noteVerified(Worker& w, const shm::CacheEntry& e, verifier::Reason verdict, int64_t now);
  void watch();
  void writeback();
  void pollChanges(verifier::Reader& reader);
  void checkAvailable();  // watcher thread: follows options_.unavailable
  // flushUses' two ends: the local database (standalone), or options_.writeUses.
  struct Latest {
    int64_t at;
    bool reported;
    int64_t seenExpiresAt;
  };
  using LatestUses = std::unordered_map<std::string_view, Latest>;
  Result<size_t> writeLocal(const LatestUses& latest);
  Result<size_t> writeElsewhere(const LatestUses& latest);
  // Puts uses back for the next round (in replica mode at most kMaxReportedUses in all); returns
  // how many did not fit (their cache entries are dropped, so that no optimistic mark outlives
  // them).
  size_t keepUses(const LatestUses& latest);
  size_t keepUses(std::vector<Use> keep);

  verifier::KeyDb& db_;
  shm::Cache& cache_;
  Metrics& metrics_;
  ServiceOptions options_;

  std::mutex workersMu_;
  std::vector<Worker*> workers_;
  std::mutex reportedMu_;
  std::vector<Use> reported_;

  std::mutex stopMu_;
  std::condition_variable stopCv_;
  bool stopping_ = false;
  // What the watcher last saw of options_.unavailable (checkAvailable): serving, closing (the
  // cache is being emptied and no verification fills it), or answering 'unavailable'.
  enum class Availability : uint8_t { Serving, Closing, Unavailable };
  std::atomic<Availability> availability_{Availability::Serving};
  std::deque<std::function<void()>> jobs_;  // guarded by stopMu_
  std::thread watcher_;
  std::thread writer_;
  uint64_t lastSeenTxn_ = 0;                       // watcher thread only
  std::mutex flushMu_;                             // one write-back at a time
  std::unique_ptr<verifier::Reader> flushReader_;  // writeElsewhere's, under flushMu_
};

}  // namespace tokend::daemon
