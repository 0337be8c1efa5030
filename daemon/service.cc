// The verification path, the changelog watcher and the write-back.
#include "daemon/service.h"

#include <fmt/format.h>
#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <unordered_map>

#include "base/clock.h"
#include "base/log.h"
#include "shm/codec.h"

namespace tokend::daemon {

using namespace tokend::verifier;

namespace {

// Uses reported by clients and not yet written back (24 bytes each).
constexpr size_t kMaxReportedUses = size_t{1} << 18;

std::string_view idOf(const std::array<char, kTokenIdLength>& id) {
  return {id.data(), id.size()};
}

}  // namespace

Service::Service(KeyDb& db, shm::Cache& cache, Metrics& metrics, const ServiceOptions& options)
    : db_(db), cache_(cache), metrics_(metrics), options_(options) {
  // The cache is empty now, so following the changelog from the newest snapshot misses nothing.
  if (auto reader = db_.reader(); reader && (*reader)->begin()) {
    lastSeenTxn_ = (*reader)->txnId();
    (*reader)->end();
  }
}

Service::~Service() {
  stop();
}

Result<std::unique_ptr<Service::Worker>> Service::makeWorker(int index) {
  auto w = std::make_unique<Worker>();
  auto reader = db_.reader();
  if (!reader) return reader.error();
  w->reader_ = std::move(*reader);
  w->metrics_ = &metrics_.shard(index);
  std::lock_guard lock(workersMu_);
  workers_.push_back(w.get());
  return w;
}

void Service::beginBatch(Worker& w) const {
  w.now_ = clockNow();
}

void Service::prefetch(std::string_view token) const {
  // Only the id's shape matters here; a malformed token is refused by verify() anyway.
  if (token.size() == kTokenLength && token[kTokenIdLength] == '-') {
    cache_.prefetch(token.substr(0, kTokenIdLength));
  }
}

bool Service::verify(Worker& w, const VerifyQuery& q, VerifyAnswer& a) {
  a = VerifyAnswer{};
  if (q.token.empty()) {
    a.reason = Reason::Missing;
    return true;
  }
  auto parsed = parseToken(q.token);
  if (!parsed) {
    a.reason = Reason::Malformed;
    return true;
  }
  if (availability_.load(std::memory_order_acquire) == Availability::Unavailable) {
    a.reason = Reason::Unavailable;
    return true;
  }
  const Query query = parseQuery(q.permission, q.object, q.owner);
  const int64_t now = w.now_ != 0 ? w.now_ : clockNow();
  const Digest presented = w.sha_.digest(parsed->secret);
  shm::CacheEntry& e = w.entry_;

  std::optional<Reason> reason;
  if (cache_.lookup(parsed->id, e) == shm::LookupResult::Hit) {
    reason = shm::decideFromEntry(e, presented, query, now);
    if (reason) w.metrics_->cacheDecided.fetch_add(1, std::memory_order_relaxed);
  }
  if (!reason) {
    // The epoch is read before the database (see shm/cache.h): a fill racing an invalidation
    // is dropped rather than left stale.
    const uint64_t epoch = cache_.epoch();
    // After the epoch (checkAvailable marks Closing, then empties the cache, bumping it): a
    // verification that still reads Serving here carries an epoch the emptying outdates, so no
    // fill survives it, and none is made once the answer may become 'unavailable'.
    const Availability availability = availability_.load(std::memory_order_seq_cst);
    if (availability == Availability::Unavailable) {
      a.reason = Reason::Unavailable;
      return true;
    }
    if (auto b = w.reader_->begin(); !b) {
      log::error("Failed to begin a read transaction: {}", b.error().message);
      return false;
    }
    auto found = loadToken(*w.reader_, parsed->id, *w.scratch_);
    w.reader_->end();
    if (!found) {
      log::error("Failed to read token {}: {}", parsed->id, found.error().message);
      return false;
    }
    w.metrics_->dbDecided.fetch_add(1, std::memory_order_relaxed);
    if (!*found) {
      a.reason = Reason::Unknown;
      return true;
    }
    shm::encodeEntry(*w.scratch_, e);
    reason = decide(w.scratch_->facts(), presented, query, now);
    // The fill carries the mark of this verification when it presented the secret: a usage
    // report for the token is then taken (reportUses), one after a wrong secret is not.
    if (*reason != Reason::BadSecret) e.verifiedAt = shm::verifiedMark(now);
    if (availability == Availability::Serving) cache_.insert(e, epoch);
  }

  a.reason = *reason;
  std::memcpy(w.tokenId_.data(), e.tokenId, kTokenIdLength);
  std::memcpy(w.username_.data(), e.username, e.usernameLen);
  std::memcpy(a.userId.bytes.data(), e.userId, shm::kUuidLength);
  a.tokenId = idOf(w.tokenId_);
  a.username = std::string_view(w.username_.data(), e.usernameLen);
  a.loginType = static_cast<LoginType>(e.loginType);
  a.expiresAt = e.expiresAt;
  a.owned = a.reason == Reason::Ok && shm::grantOwned(e, query);
  if (a.reason != Reason::BadSecret) noteVerified(w, e, a.reason, now);
  return true;
}

void Service::noteVerified(Worker& w, const shm::CacheEntry& e, Reason verdict, int64_t now) {
  UsageUpdate u;
  if (verdict == Reason::Ok) {
    u = usageUpdate(static_cast<LoginType>(e.loginType), e.expiresAt, e.lifetimeSeconds, e.lastUsed,
                    now, options_.lifetimes);
  }
  const bool remark = e.verifiedAt == 0 || now - int64_t{e.verifiedAt} > shm::kUseRemarkAfter;
  if (!u.any() && !remark) return;
  if (u.any()) {
    Use use;
    std::memcpy(use.id.data(), e.tokenId, kTokenIdLength);
    use.at = now;
    use.seenExpiresAt = e.expiresAt;
    std::lock_guard lock(w.usesMu_);
    w.uses_.push_back(use);
  }
  // Mark the cached copy so that the next hits do not queue the same use again (the write-back
  // commits the same values) nor mark it again.
  cache_.update(e.id(), [&](shm::CacheEntry& c) {
    if (u.lastUsed) c.lastUsed = std::max(c.lastUsed, now);
    if (u.refresh) c.expiresAt = std::max(c.expiresAt, u.newExpiresAt);
    if (remark) c.verifiedAt = std::max(c.verifiedAt, shm::verifiedMark(now));
  });
}

std::string_view useRefusalName(UseRefusal r) {
  switch (r) {
    case UseRefusal::NotAttached:
      return "not_attached";
    case UseRefusal::Time:
      return "time";
    case UseRefusal::NotCached:
      return "not_cached";
    case UseRefusal::NotVerified:
      return "not_verified";
    case UseRefusal::Expired:
      return "expired";
    case UseRefusal::Full:
      return "full";
  }
  return "unknown";
}

size_t Service::reportUses(std::span<const Use> uses, bool attached) {
  metrics_.usageReports.fetch_add(1, std::memory_order_relaxed);
  auto refuse = [&](UseRefusal why, size_t n = 1) {
    metrics_.usageRefused[static_cast<size_t>(why)].fetch_add(n, std::memory_order_relaxed);
  };
  // Only a peer that was handed the segment could have read the entry it reports a use of.
  if (!attached) {
    refuse(UseRefusal::NotAttached, uses.size());
    return 0;
  }
  const int64_t now = clockNow();
  size_t accepted = 0;
  shm::CacheEntry e;
  std::lock_guard lock(reportedMu_);
  for (const Use& reported : uses) {
    // One second ahead is a clock read a moment apart on the same host; nothing more is honest.
    if (reported.at > now + 1 || reported.at < now - shm::kUseReportDelay) {
      refuse(UseRefusal::Time);
      continue;
    }
    // The entry the fast path read: present and current (lookup() misses on an invalidated or
    // user-stale one). It also sets the entry's reference bit, for the use.
    if (!isTokenId(idOf(reported.id)) ||
        cache_.lookup(idOf(reported.id), e) != shm::LookupResult::Hit) {
      refuse(UseRefusal::NotCached);
      continue;
    }
    // Filled by a verification that presented the secret, or verified so since, lately: an entry
    // that only a wrong secret (or a token id alone) brought in proves nobody holds the token.
    if (e.verifiedAt == 0 || now - int64_t{e.verifiedAt} > shm::kUseVerifiedWithin) {
      refuse(UseRefusal::NotVerified);
      continue;
    }
    // At most what a verification at that time would have done: none of an expired token.
    // (A cached expiry is a lower bound, but every write of the record invalidates the entry,
    // and in-place refreshes only move it later: an expired entry is an expired token.)
    Use u = reported;
    u.at = std::min(u.at, now);
    u.reported = true;
    u.seenExpiresAt = e.expiresAt;
    if (isExpired(e.expiresAt, u.at) || (e.flags & shm::kFlagUserActive) == 0) {
      refuse(UseRefusal::Expired);
      continue;
    }
    // Bounded: reports arrive as fast as clients send them, and a failing database keeps them.
    // Past the bound a use is dropped: last_used is a heuristic, memory is not.
    if (reported_.size() >= kMaxReportedUses) {
      refuse(UseRefusal::Full);
      continue;
    }
    reported_.push_back(u);
    ++accepted;
  }
  metrics_.usageAccepted.fetch_add(accepted, std::memory_order_relaxed);
  return accepted;
}

Result<void> Service::flushUses() {
  std::lock_guard flush(flushMu_);
  std::vector<Use> uses;
  {
    std::lock_guard lock(workersMu_);
    for (Worker* w : workers_) {
      std::lock_guard l(w->usesMu_);
      uses.insert(uses.end(), w->uses_.begin(), w->uses_.end());
      w->uses_.clear();
    }
  }
  {
    std::lock_guard lock(reportedMu_);
    uses.insert(uses.end(), reported_.begin(), reported_.end());
    reported_.clear();
  }
  if (uses.empty()) return {};
  // One write per token: its latest use (reported only when no verification saw it as late),
  // with the expiry that use saw (the lower one of two at the same second).
  LatestUses latest;
  for (const Use& u : uses) {
    auto [it, fresh] = latest.try_emplace(idOf(u.id), Latest{u.at, u.reported, u.seenExpiresAt});
    if (fresh) continue;
    if (u.at > it->second.at) {
      it->second = Latest{u.at, u.reported, u.seenExpiresAt};
    } else if (u.at == it->second.at) {
      it->second.reported = it->second.reported && u.reported;
      it->second.seenExpiresAt = std::min(it->second.seenExpiresAt, u.seenExpiresAt);
    }
  }
  auto written = options_.writeUses ? writeElsewhere(latest) : writeLocal(latest);
  if (!written) {
    metrics_.writebackErrors.fetch_add(1, std::memory_order_relaxed);
    // Keep the uses for the next round, a full disk or PostgreSQL down must not lose them: one
    // per token (its latest), so that a database refusing writes for hours costs memory per
    // token, not per use.
    const size_t dropped = keepUses(latest);
    if (dropped == 0) return written.error();
    return makeError(fmt::format("{} ({} uses dropped: more than {} tokens wait)",
                                 written.error().message, dropped, kMaxReportedUses),
                     written.error().code);
  }
  metrics_.writebackBatches.fetch_add(1, std::memory_order_relaxed);
  metrics_.writebackTokens.fetch_add(*written, std::memory_order_relaxed);
  return {};
}

size_t Service::keepUses(const LatestUses& latest) {
  std::vector<Use> keep;
  keep.reserve(latest.size());
  for (const auto& [id, use] : latest) {
    Use u;
    std::copy_n(id.data(), kTokenIdLength, u.id.data());
    u.at = use.at;
    u.reported = use.reported;
    u.seenExpiresAt = use.seenExpiresAt;
    keep.push_back(u);
  }
  return keepUses(std::move(keep));
}

size_t Service::keepUses(std::vector<Use> keep) {
  size_t dropped = 0;
  {
    std::lock_guard lock(reportedMu_);
    // Bounded in replica mode (PostgreSQL may be away for long); the local database's
    // write-back keeps every token's use, as it always has.
    const size_t limit = options_.writeUses ? kMaxReportedUses : SIZE_MAX;
    const size_t room = limit > reported_.size() ? limit - reported_.size() : 0;
    if (keep.size() > room) dropped = keep.size() - room;
    reported_.insert(reported_.end(), keep.begin(), keep.end() - static_cast<ptrdiff_t>(dropped));
  }
  // The cache holds what a dropped use would have written (noteVerified's marks): without the
  // write, it must not keep an expiry the database never had.
  for (size_t i = keep.size() - dropped; i < keep.size(); ++i)
    cache_.invalidateToken(idOf(keep[i].id));
  return dropped;
}

Result<size_t> Service::writeLocal(const LatestUses& latest) {
  const LifetimeConfig& cfg = options_.lifetimes;
  const int64_t writeNow = clockNow();
  size_t written = 0;
  auto r = db_.update([&](Writer& w) -> Result<void> {
    written = 0;
    for (const auto& [id, use] : latest) {
      const int64_t at = use.at;
      auto rec = w.token(id);
      if (!rec) return rec.error();
      if (!*rec) continue;  // deleted meanwhile
      TokenRecord t = std::move(**rec);
      UsageUpdate u = usageUpdate(t.loginType, t.expiresAt, t.lifetimeSeconds, t.lastUsed, at, cfg);
      bool changed = false;
      if (u.lastUsed && at > t.lastUsed) {
        t.lastUsed = at;
        changed = true;
      }
      // Never resurrect: a token expired, revoked or otherwise changed after this use is left
      // as it is (updated_at later than the use means someone else wrote it since). A reported
      // use refreshes nothing that has expired by now either: the daemon verified nothing then.
      if (u.refresh && !isExpired(t.expiresAt, at) && t.updatedAt <= at &&
          !(use.reported && isExpired(t.expiresAt, writeNow)) && u.newExpiresAt > t.expiresAt) {
        t.expiresAt = u.newExpiresAt;
        t.updatedAt = at;
        changed = true;
      }
      if (!changed) continue;
      if (auto p = w.putToken(t); !p) return p.error();
      ++written;
    }
    return {};
  });
  if (!r) return r.error();
  return written;
}

Result<size_t> Service::writeElsewhere(const LatestUses& latest) {
  // What is due by the local copy (SPEC 3's rules, as the standalone write-back decides them):
  // a token deleted here, or with nothing due, is not sent. The sink applies the same rules to
  // its own rows again (the local copy may be a moment old).
  if (!flushReader_) {
    auto reader = db_.reader();
    if (!reader) return reader.error();
    flushReader_ = std::move(*reader);
  }
  std::vector<DueUse> due;
  due.reserve(latest.size());
  {
    if (auto b = flushReader_->begin(); !b) return b.error();
    for (const auto& [id, use] : latest) {
      auto rec = flushReader_->token(id);
      if (!rec) {
        flushReader_->end();
        return rec.error();
      }
      if (!*rec) continue;
      const TokenRecord& t = **rec;
      DueUse d;
      std::copy_n(id.data(), kTokenIdLength, d.use.id.data());
      d.use.at = use.at;
      d.use.reported = use.reported;
      d.use.seenExpiresAt = use.seenExpiresAt;
      d.update = usageUpdate(t.loginType, t.expiresAt, t.lifetimeSeconds, t.lastUsed, use.at,
                             options_.lifetimes);
      // Nothing the local copy had expired by the use's time slides (a revocation followed
      // already, and the cache still held the old expiry).
      if (isExpired(t.expiresAt, use.at)) d.update.refresh = false;
      if (d.update.any()) due.push_back(d);
    }
    flushReader_->end();
  }
  if (due.empty()) return size_t{0};
  auto written = options_.writeUses(due);
  if (!written) return written.error();
  // A refresh the sink did not write (revoked, deleted, slid by another replica, a user
  // suspended) was already in the cache: drop the entry, the next verification reads the copy.
  // A use it could not write now (its row locked elsewhere) waits for the next round.
  std::vector<Use> retry;
  for (const DueUse& d : due) {
    if (d.retry) {
      retry.push_back(d.use);
    } else if (d.update.refresh && !d.refreshed) {
      cache_.invalidateToken(idOf(d.use.id));
    }
  }
  if (!retry.empty()) keepUses(std::move(retry));
  return *written;
}

void Service::pollChanges(Reader& reader) {
  uint64_t txn = db_.lastTxnId();
  if (txn == lastSeenTxn_) return;
  if (auto b = reader.begin(); !b) {
    log::error("Failed to begin a read transaction for the changelog: {}", b.error().message);
    return;
  }
  auto changes = reader.changesSince(lastSeenTxn_);
  reader.end();
  if (!changes) {
    log::error("Failed to read the changelog: {}", changes.error().message);
    return;
  }
  int erased = 0;
  if (changes->gap) {
    erased += cache_.invalidateAll();
    metrics_.invalidationGaps.fetch_add(1, std::memory_order_relaxed);
    log::warn("Changelog trimmed past transaction {}: dropped the whole cache", lastSeenTxn_);
  } else {
    for (const std::string& id : changes->tokenIds) erased += cache_.invalidateToken(id);
    // O(1) each: the user's entries go stale in place (counted in the cache's own stats).
    for (const Uuid& u : changes->userIds)
      cache_.invalidateUser(std::span<const uint8_t, shm::kUuidLength>(u.bytes));
  }
  metrics_.invalidationRounds.fetch_add(1, std::memory_order_relaxed);
  metrics_.invalidatedEntries.fetch_add(erased, std::memory_order_relaxed);
  // Only the snapshot says what has been read: the meta page (lastTxnId) can show a commit a
  // moment before a new read transaction sees it, and skipping to it would skip its changes.
  lastSeenTxn_ = changes->upTo;
}

void Service::watch() {
  // Named for top -H and for the tests, which read its run-queue wait in /proc (SPEC 6's bound).
  pthread_setname_np(pthread_self(), "tokend-watcher");
  auto reader = db_.reader();
  if (!reader) {
    log::error("Failed to open a reader for the changelog watcher: {}", reader.error().message);
    return;
  }
  std::unique_lock lock(stopMu_);
  while (!stopping_) {
    lock.unlock();
    pollChanges(**reader);
    if (options_.unavailable) checkAvailable();
    lock.lock();
    stopCv_.wait_for(lock, std::chrono::microseconds(options_.invalidationPollUs),
                     [&] { return stopping_; });
  }
}

void Service::checkAvailable() {
  const bool stale = options_.unavailable();
  if (stale == (availability_.load(std::memory_order_relaxed) == Availability::Unavailable)) return;
  if (!stale) {
    log::info("The copy of PostgreSQL is current again: verifying");
    availability_.store(Availability::Serving, std::memory_order_seq_cst);
    return;
  }
  log::warn(
      "The copy of PostgreSQL is older than --max-staleness: every verification answers "
      "'unavailable' until the replica is current again");
  // No fill from here on, then the cache emptied, and only then the socket's answer changes: a
  // client that has seen 'unavailable' finds nothing left in shared memory to trust.
  availability_.store(Availability::Closing, std::memory_order_seq_cst);
  cache_.invalidateAll();
  availability_.store(Availability::Unavailable, std::memory_order_seq_cst);
}

void Service::post(std::function<void()> job) {
  {
    std::lock_guard lock(stopMu_);
    jobs_.push_back(std::move(job));
  }
  stopCv_.notify_all();
}

void Service::writeback() {
  // A database that refuses writes (a full disk) fails every round: log the first failure, then
  // at most once a minute, and the recovery, instead of a line every interval.
  pthread_setname_np(pthread_self(), "tokend-writer");
  bool failing = false;
  int64_t loggedAt = 0;
  const auto interval = std::chrono::milliseconds(options_.writebackIntervalMs);
  auto due = std::chrono::steady_clock::now() + interval;
  std::unique_lock lock(stopMu_);
  auto runJobs = [&] {
    while (!jobs_.empty()) {
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  };
  while (!stopping_) {
    stopCv_.wait_until(lock, due, [&] { return stopping_ || !jobs_.empty(); });
    runJobs();
    if (stopping_ || std::chrono::steady_clock::now() < due) continue;
    lock.unlock();
    auto r = flushUses();
    const int64_t now = clockNow();
    if (!r && (!failing || now - loggedAt >= 60)) {
      log::error("Failed to write back token uses (kept for the next round): {}",
                 r.error().message);
      loggedAt = now;
    } else if (r && failing) {
      log::info("Write-back of token uses works again");
    }
    failing = !r;
    due = std::chrono::steady_clock::now() + interval;
    lock.lock();
  }
  runJobs();
}

void Service::start() {
  // The first answer already knows (a replica restarted with an old copy).
  if (options_.unavailable) checkAvailable();
  watcher_ = std::thread([this] { watch(); });
  writer_ = std::thread([this] { writeback(); });
}

void Service::stop() {
  {
    std::lock_guard lock(stopMu_);
    if (stopping_ && !watcher_.joinable()) return;
    stopping_ = true;
  }
  stopCv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  if (writer_.joinable()) writer_.join();
  if (auto r = flushUses(); !r)
    log::error("Failed to write back token uses at shutdown: {}", r.error().message);
}

}  // namespace tokend::daemon
