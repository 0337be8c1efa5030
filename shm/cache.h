// Cache: the lock-free shared-memory cache of compiled tokens, daemon (writer) and reader sides.
//
// ============================== Concurrency protocol ==============================
//
// Memory. The segment (segment.h) is a header, a power-of-two array of CacheSlot, and the user
// epoch table: a power-of-two array of 64-bit counters, indexed by XXH3-64 of a user id. A slot
// is { seq, ref, payload words }. Every shared field is a plain integer accessed only through
// std::atomic_ref (so the shared types stay trivially copyable and every access is atomic:
// there is no data race to begin with, and ThreadSanitizer agrees).
//
// Placement. A token id hashes (XXH3-64 of its 10 bytes) to a home slot; it may live in any of
// the kProbeWindow slots from there on (wrapping). Lookups, updates and invalidations of one
// token look only in that window. A slot whose first id byte is 0 is empty (ids are
// [0-9A-Za-z]). Two concurrent inserts of the same id may leave two copies in one window; both
// came from the database, lookups return the first, and update/invalidate handle every copy.
//
// Per-slot seqlock. `seq` even = stable, odd = a writer holds the slot.
//   Writer:  CAS seq s(even) -> s+1 (seq_cst, see below); release fence; payload words stored
//            relaxed; seq = s+2 (release). One writer per slot at a time, by the CAS.
//   Reader:  s1 = seq (acquire); id words loaded relaxed; not our id -> next slot; s1 odd ->
//            retry; other words loaded relaxed; acquire fence; s2 = seq (relaxed); s1 != s2 ->
//            retry; else the copy is a whole entry.
//   If the reader loaded any word of a later write, the writer's release fence (before that
//   word) synchronises with the reader's acquire fence (after it), so the writer's odd store
//   is visible to the s2 load and the copy is discarded. Under ThreadSanitizer, which does not
//   model fences, the same protocol runs with acquire loads / release stores on the words.
//   A mismatching id needs no validation, even torn: no writer turns a slot holding token T
//   into one holding another token and back within one lock, so the mismatch is an instant at
//   which T was not in that slot, and "not found" is always a safe answer. Readers retry at
//   most kReadSpins times per lookup, then skip the slot and answer Busy if the token was not
//   found elsewhere: a writer stopped mid-write (a daemon that crashed) never hangs a reader.
//   Busy, like Miss, means "ask the socket".
//
// Who writes. Only the daemon (it holds the only writable mapping; the memfd is sealed against
// new ones). Fillers (`insert`) try the slot lock once and drop the fill if it is taken: a
// cache fill is an optimisation, waiting for one is not worth it. Invalidations and `update`
// spin until they hold the lock: writers hold it for the time of ~50 stores and never block
// inside, and no thread holds two slot locks, so there is no deadlock. Only `insert` brings a
// token id or a user id into a slot, and only it sets an entry's userEpoch: `update` refuses to
// change any of them, invalidations only erase. (`update` may set verifiedAt: a mark that a
// verification presented the secret, read only by the daemon's acceptance of usage reports and
// by a client choosing to report a use; it changes no verdict.) The user epoch counters are written
// only by `invalidateUser` (an atomic increment; no lock).
//
// Invalidation without stale refills. The header holds an epoch. A filler reads `epoch()`
// BEFORE it reads the database; `insert(entry, epochSeen)` re-reads the epoch (seq_cst) while
// holding the slot lock and drops the entry if it moved. Invalidations run AFTER the database
// change is committed: they bump the epoch (seq_cst). invalidateToken and invalidateAll then
// visit every slot in scope (the token's window, or all slots) and erase the matches under the
// slot lock; invalidateUser erases nothing and bumps the user's counter instead ("Users" below).
// Why a fill that read the database before the change cannot survive it, for the slot F the fill
// writes:
//  (a) The invalidation locks F before the fill does: the bump happens before that unlock
//      (release), the fill's lock CAS reads it or a later link of the lock/unlock chain, so the
//      fill's epoch check sees the bump and drops the entry.
//  (b) The fill locks F first: it writes and unlocks; the invalidation visits F after its bump
//      and either sees seq odd (it then waits for the lock and erases) or sees seq even after
//      the fill's unlock (acquire, so it also sees the entry: it locks and erases).
//  (c) The invalidation reads F's seq (even) before the fill's lock CAS, finds F empty or not
//      matching and skips it without locking (so a full-table scan does not write every slot's
//      first line and evict it from every client's cache). The bump, that seq load, the fill's
//      CAS and its epoch load are all seq_cst: the load reads a value older than the CAS, so it
//      precedes the CAS in the single total order, and the bump, before the load, precedes
//      the fill's epoch load, which therefore sees the bump: the fill is dropped.
// The stale entry never outlives the invalidation's return. A fill whose epoch read already saw
// the bump read the database after the commit (the bump is a release, epoch() an acquire), so
// it is fresh. Hence: the daemon must call invalidate* only after its commit, and fillers must
// call epoch() before opening their read transaction.
//
// Users. A user change (suspension, activation, roles, deletion) touches every token of the user,
// which may sit in any slot: a scan of every slot took 4 ms at 64 Ki slots and 317 ms at 4 Mi,
// past SPEC 6's 10 ms. Instead each entry carries `userEpoch`, the value of its user's counter U
// that `insert` loaded (seq_cst) BEFORE its epoch check, and a lookup, after a validated copy,
// loads U (acquire) and answers Miss if it differs from the copy's userEpoch. invalidateUser,
// after the commit, does: bump the epoch (seq_cst) G, then U += 1 (seq_cst) B. Take a fill F that
// read the database before the commit; F does: E = epoch(); read the database; u = load U;
// lock; check the epoch. All of G, B, F's u load and its epoch check are seq_cst, so they lie in
// one total order S consistent with each thread's program order:
//  (d) F's check reads a value after E: F is dropped (Stale), as for any invalidation.
//  (e) F's check reads E, older than G's result: the check precedes G in S (a seq_cst load that
//      reads a value older than a seq_cst store precedes it). Then u load < check < G < B in S,
//      so u is older than B's result; F's entry carries that older value, and any lookup after
//      invalidateUser returned loads U = B's result or later (coherence: counters only grow):
//      mismatch, Miss. It does not matter when F's write lands, before or after B.
// The order G then B matters: were U bumped first, F's u load could see B while its check still
// preceded G, and the stale entry would carry the new value. A fill whose E already saw G read the
// database after the commit; its u load may still precede B, which only costs one more refill.
// An entry stays stale until a fill replaces it (insert reuses the copy's slot): an entry is never
// made fresh again by the counter, which only grows (64 bits: it does not wrap). Users whose ids
// share a counter with the changed user (the table holds userEpochCountFor(slotCount) counters,
// segment.h) see their entries go stale too: a refill each, never a wrong answer. invalidateUser
// therefore costs two atomic increments and no slot access (about 8 ns); a lookup costs one more
// 8-byte load (the table is 0.03% of the slots' size and usually cached) and an XXH3 of 16 bytes:
// 2 to 4 ns on a hit already in the CPU cache (docs/benchmarks.md). Stale entries keep their
// bytes until refilled or evicted; a deleted user's tokens are in the changelog as tokens too, so
// the changelog watcher still erases them, secret hashes included, with invalidateToken.
//
// Freshness of times. expiresAt and lastUsed are written back to the database in batches, so a
// fill may carry older values than `update` wrote into the cache: a cached expiresAt is a lower
// bound. An entry that looks expired must be re-checked against the database (the socket, for a
// client), never denied on the cache's word alone.
//
// Eviction (CLOCK, per window). `ref` is a reference bit. Daemon-side hits set it with a relaxed
// store, only when it is clear (a hot token does not write its cache line on every hit). An
// insert into a full window sweeps it from a rotating start: a slot with `ref` set loses the
// bit and is passed over (its second chance), the first slot without it is the victim. New
// entries start with `ref` clear, so a token must be used once after its fill to earn a second
// chance: one-off tokens go first, tokens in use stay. Clients map the segment read-only and
// cannot set the bit; their uses reach the daemon in batches (SPEC 9), and the daemon's
// lookup() of each reported use sets it (`touch()` sets it without the copy). `ref` is a heuristic:
// a lost or stale bit changes only which entry is evicted, never what a lookup returns, so relaxed
// order is enough for it.
//
// ================================================================================
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>

#include "base/result.h"
#include "base/unique_fd.h"
#include "shm/segment.h"

namespace tokend::shm {

// The token model's sizes, restated so shm/ does not depend on verifier/ (the daemon
// static_asserts that they agree).
inline constexpr size_t kTokenIdLength = 10;
inline constexpr size_t kSecretHashLength = 32;  // SHA-256
inline constexpr size_t kUuidLength = 16;
inline constexpr size_t kUsernameMax = 32;
inline constexpr size_t kPermWords = 4;  // 256 permission bits: the catalog has 199 pairs

// CacheEntry::flags
inline constexpr uint8_t kFlagUserActive = 1u << 0;
// The allow list has more than kInlineAllow entries: the cache cannot decide object checks.
inline constexpr uint8_t kFlagAllowOverflow = 1u << 1;

inline constexpr uint16_t kAllowAnyType = 0xFFFF;  // AllowEntry::type for "*:*"

// One allow-list entry: `type:id`, `type:*` (anyId = 1) or `*:*` (type = kAllowAnyType).
struct AllowEntry {
  uint16_t type;  // catalog resource index
  uint8_t anyId;  // 1: any id of `type`
  uint8_t pad;
  uint8_t id[kUuidLength];
};
static_assert(sizeof(AllowEntry) == 20);

// Chosen so that a slot (16 bytes of seq/ref + the entry) is exactly six cache lines.
inline constexpr size_t kInlineAllow = 7;

// What a hit needs to decide without the database. The fields a lookup compares (tokenId) and
// invalidateAll's scan reads come first, so they share the slot's first cache line with its seq:
// a miss or a scan touches one line per slot.
struct CacheEntry {
  char tokenId[kTokenIdLength];  // not NUL-terminated; tokenId[0] == 0 marks an empty slot
  uint8_t loginType;             // verifier::LoginType
  uint8_t flags;                 // kFlag*
  uint8_t userId[kUuidLength];
  uint8_t allowCount;   // <= kInlineAllow; meaningless with kFlagAllowOverflow
  uint8_t usernameLen;  // <= kUsernameMax
  uint8_t reserved0[2];
  uint8_t secretHash[kSecretHashLength];
  int64_t expiresAt;  // Unix seconds; a lower bound (see the protocol above)
  int64_t lifetimeSeconds;
  int64_t lastUsed;
  uint64_t scopes[kPermWords];  // permissions granted by the token's scopes
  uint64_t site[kPermWords];    // permissions the user's roles grant on any object
  uint64_t owned[kPermWords];   // permissions the user's roles grant on objects the user owns
  char username[kUsernameMax];  // not NUL-terminated
  AllowEntry allow[kInlineAllow];
  // Unix seconds (32 bits: to 2106) of the last verification by the daemon that presented this
  // token's secret (any verdict but bad_secret), 0 when none since the fill: a usage report is
  // taken only for an entry verified within kUseVerifiedWithin (daemon/service.cc). Set by the
  // filler and by update(); a fill from a wrong secret leaves it 0.
  uint32_t verifiedAt;
  // The user epoch of userId's counter that insert() read before its epoch check (protocol
  // above): a lookup that finds the counter moved since treats the entry as a miss. Set by
  // insert(), whatever the filler put here; update() keeps it.
  uint64_t userEpoch;

  std::string_view id() const { return {tokenId, kTokenIdLength}; }
  std::string_view name() const {
    return {username, usernameLen <= kUsernameMax ? usernameLen : 0u};
  }
  // Counts within bounds and a non-empty id: what insert() demands.
  bool wellFormed() const {
    return tokenId[0] != 0 && allowCount <= kInlineAllow && usernameLen <= kUsernameMax;
  }
};
static_assert(std::is_standard_layout_v<CacheEntry>);
static_assert(std::is_trivially_copyable_v<CacheEntry>);
static_assert(offsetof(CacheEntry, tokenId) == 0);
static_assert(offsetof(CacheEntry, userId) == 12);
static_assert(offsetof(CacheEntry, secretHash) == 32);
static_assert(offsetof(CacheEntry, expiresAt) == 64);
static_assert(offsetof(CacheEntry, scopes) == 88);
static_assert(offsetof(CacheEntry, site) == 120);
static_assert(offsetof(CacheEntry, owned) == 152);
static_assert(offsetof(CacheEntry, username) == 184);
static_assert(offsetof(CacheEntry, allow) == 216);
static_assert(offsetof(CacheEntry, verifiedAt) == 356);
static_assert(offsetof(CacheEntry, userEpoch) == 360);
static_assert(sizeof(CacheEntry) == 368);
static_assert(sizeof(CacheEntry) % 8 == 0);

inline constexpr size_t kEntryWords = sizeof(CacheEntry) / 8;

// Usage reports (SPEC 9, docs/protocol.md USAGE_REPORT). The daemon takes a reported use only for
// an entry it verified with the token's secret at most kUseVerifiedWithin ago, dated at most
// kUseReportDelay before the report arrives. A client therefore reports from the segment only
// uses of entries verified at most kUseVerifiedWithin - kUseReportDelay ago, and sends the others
// through the socket; the daemon marks a verified entry again once its mark is older than
// kUseRemarkAfter, so that busy tokens stay reportable without a slot write per verification.
inline constexpr int64_t kUseVerifiedWithin = 2 * 3600;
inline constexpr int64_t kUseReportDelay = 300;
inline constexpr int64_t kUseRemarkAfter = 3600;
static_assert(kUseRemarkAfter < kUseVerifiedWithin - kUseReportDelay);

// The value of CacheEntry::verifiedAt for a verification at `now` (0, "not verified", outside the
// 32-bit range: such an entry is never reportable, which is safe).
constexpr uint32_t verifiedMark(int64_t now) {
  return now > 0 && now <= int64_t{UINT32_MAX} ? static_cast<uint32_t>(now) : 0;
}
// Whether a use of `e` at `now` reported within kUseReportDelay will be accepted (client side).
constexpr bool useReportable(const CacheEntry& e, int64_t now) {
  return e.verifiedAt != 0 && now - int64_t{e.verifiedAt} <= kUseVerifiedWithin - kUseReportDelay;
}

// One slot in the segment. Fields are accessed only through std::atomic_ref (see the protocol).
struct alignas(kCacheLine) CacheSlot {
  // Seqlock, even = stable, odd = locked. Lock CAS seq_cst, reader load acquire, unlock release:
  // together with the fences they order the words (protocol above, argument (c) for seq_cst).
  uint64_t seq;
  // CLOCK reference bit (0/1), daemon-written. Relaxed: it only picks victims, orders nothing.
  uint32_t ref;
  uint32_t reserved;  // keeps the payload 8-byte aligned
  // A CacheEntry, word by word. Relaxed: the seq accesses and the fences around them order them.
  uint64_t words[kEntryWords];
};
static_assert(std::is_standard_layout_v<CacheSlot>);
static_assert(std::is_trivially_copyable_v<CacheSlot>);
static_assert(offsetof(CacheSlot, seq) == 0);
static_assert(offsetof(CacheSlot, ref) == 8);
static_assert(offsetof(CacheSlot, words) == 16);
static_assert(sizeof(CacheSlot) == 6 * kCacheLine);
inline constexpr uint32_t kSlotSize = sizeof(CacheSlot);

static_assert(std::atomic_ref<uint64_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint32_t>::is_always_lock_free);
static_assert(std::atomic_ref<uint64_t>::required_alignment <= alignof(uint64_t));
static_assert(std::atomic_ref<uint32_t>::required_alignment <= alignof(uint32_t));

inline constexpr uint32_t kProbeWindow = 8;  // slots a token may occupy, from its home slot
inline constexpr int kReadSpins = 64;        // seqlock retries per lookup before Busy

enum class LookupResult : uint8_t {
  Hit,   // `out` holds a whole entry for the token
  Miss,  // the token is not cached
  Busy,  // the token's window was being written for too long: ask the socket
};

enum class InsertResult : uint8_t {
  Inserted,   // the entry is cached (replacing an older copy, an empty or an evicted slot)
  Stale,      // an invalidation ran since `epochSeen`: dropped, the fill may be out of date
  Contended,  // another writer held the chosen slot: dropped
  Invalid,    // !entry.wellFormed(): dropped
};

// Daemon-side counters. Relaxed: they are statistics, read for metrics, ordering nothing.
struct CacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t busy = 0;
  uint64_t inserts = 0;
  uint64_t staleDrops = 0;         // InsertResult::Stale
  uint64_t contendedDrops = 0;     // InsertResult::Contended
  uint64_t evictions = 0;          // inserts that displaced another token
  uint64_t invalidations = 0;      // entries erased by invalidateToken/invalidateAll
  uint64_t userInvalidations = 0;  // invalidateUser calls (their entries go stale, not erased)
};

namespace detail {
struct StatShard;
}

// The daemon's cache: owns the segment and its writable mapping.
// Thread rules: every method may be called from any number of threads at once.
class Cache {
 public:
  struct Options {
    uint64_t slotCount = 1 << 16;  // rounded up to a power of two, at least kProbeWindow
    uint64_t catalogVersion = 0;
  };

  // Creates the segment (Segment::create) sized for `options.slotCount` slots, all empty.
  static Result<Cache> create(const Options& options);

  Cache(Cache&&) noexcept;
  Cache& operator=(Cache&&) noexcept;
  ~Cache();

  // Looks `tokenId` up (kTokenIdLength bytes, the first not NUL, else Miss). On Hit, copies the
  // entry into `out` and sets the slot's reference bit. On Miss/Busy `out` is unspecified.
  // Never blocks: at most kReadSpins seqlock retries.
  LookupResult lookup(std::string_view tokenId, CacheEntry& out);

  // Asks the CPU to start loading the slot `tokenId` hashes to (its home slot, where a cached
  // token usually is), for a lookup() soon after. A session calls it for every request of a
  // received batch before answering the first, so that the batch's slot loads overlap instead of
  // stalling one after another. Reads nothing and changes nothing a lookup sees.
  void prefetch(std::string_view tokenId) const;

  // The invalidation epoch. A filler reads it before it reads the database and passes it to
  // insert().
  uint64_t epoch() const;

  // Caches `entry` (replacing any copy of the same token in its window, else an empty slot, else
  // a victim chosen by CLOCK) unless an invalidation ran since `epochSeen` was read, or the
  // chosen slot is being written. Never blocks.
  InsertResult insert(const CacheEntry& entry, uint64_t epochSeen);

  // Rewrites every cached copy of `tokenId` in place, under its slot lock: `fn(CacheEntry&)` is
  // called with the current entry and what it leaves is stored, unless it changed the token id or
  // the user id, or broke wellFormed() (then the copy is left as it was: invalidations rely on
  // only insert() bringing a token or a user into a slot). For the sliding refresh of expiresAt
  // and lastUsed. `fn` must not call back into the cache. Returns the number of copies rewritten.
  template <class Fn>
  int update(std::string_view tokenId, Fn&& fn) {
    return updateImpl(
        tokenId,
        [](void* ctx, CacheEntry& e) { (*static_cast<std::remove_reference_t<Fn>*>(ctx))(e); },
        &fn);
  }

  // Sets the reference bit of `tokenId`'s cached copies: for uses the daemon learns of from
  // clients, which cannot set it themselves. Returns whether a copy was found.
  bool touch(std::string_view tokenId);

  // Each bumps the epoch, then erases the matching entries (taking each slot's lock), and
  // returns how many it erased. Call them after the database change is committed.
  int invalidateToken(std::string_view tokenId);  // the token's window
  int invalidateAll();                            // every slot: rare

  // Makes every cached entry of `userId` stale: bumps the epoch, then the user's counter in the
  // user epoch table; lookups then answer Miss for the user's entries until they are refilled.
  // Erases nothing, visits no slot: O(1) whatever the cache size. Entries of the few other users
  // that share the counter go stale too (one refill each). Call it after the database change is
  // committed.
  void invalidateUser(std::span<const uint8_t, kUuidLength> userId);

  CacheStats stats() const;

  // A read-only descriptor for a client (Segment::openReadOnly).
  Result<UniqueFd> openReadOnly() const { return segment_.openReadOnly(); }
  const Segment& segment() const { return segment_; }
  uint64_t slotCount() const { return mask_ + 1; }
  uint64_t generation() const { return segment_.generation(); }

 private:
  using Matcher = bool (*)(const uint64_t* head, const void* ctx);

  Cache(Segment segment, std::unique_ptr<detail::StatShard[]> stats);
  int updateImpl(std::string_view tokenId, void (*fn)(void*, CacheEntry&), void* ctx);
  int invalidateWhere(uint64_t first, uint64_t count, Matcher match, const void* ctx);
  detail::StatShard& shard() const;

  Segment segment_;
  CacheSlot* slots_ = nullptr;
  uint64_t mask_ = 0;
  uint64_t* userEpochs_ = nullptr;  // the segment's user epoch table
  uint64_t userMask_ = 0;
  std::unique_ptr<detail::StatShard[]> stats_;
};

// A client's read-only view of the cache. lookup() is const and never writes the segment.
// Thread rules: any number of threads may call lookup() at once.
class CacheReader {
 public:
  // Attaches to the segment behind `fd` (SegmentView::attach with kSlotSize and
  // `catalogVersion`; the slot count must be at least kProbeWindow). The caller may close `fd`.
  static Result<CacheReader> attach(int fd, uint64_t catalogVersion);

  // As Cache::lookup, without the reference bit.
  LookupResult lookup(std::string_view tokenId, CacheEntry& out) const;

  // The segment's generation: compare with the one the daemon announces; re-map if different.
  uint64_t generation() const { return view_.generation(); }
  uint64_t slotCount() const { return mask_ + 1; }

 private:
  explicit CacheReader(SegmentView view);

  SegmentView view_;
  const CacheSlot* slots_ = nullptr;
  uint64_t mask_ = 0;
  const uint64_t* userEpochs_ = nullptr;
  uint64_t userMask_ = 0;
};

}  // namespace tokend::shm
