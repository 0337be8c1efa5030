// Cache: the seqlocked open-addressing table in the segment; the protocol is in cache.h.
#include "shm/cache.h"

#include <bit>
#include <cstring>
#include <thread>

#define XXH_INLINE_ALL  // the hash of a 10-byte id is on every lookup: let it inline
#include <xxhash.h>

namespace tokend::shm {

namespace detail {

enum Counter : size_t {
  kHits,
  kMisses,
  kBusy,
  kInserts,
  kStaleDrops,
  kContendedDrops,
  kEvictions,
  kInvalidations,
  kUserInvalidations,
  kCounterCount,
};

// Counters sharded by thread and padded to a cache line: one shared counter bumped on every hit
// would bounce its line between all workers and cost more than the lookup itself.
struct alignas(kCacheLine) StatShard {
  // Relaxed: statistics; nothing is ordered by them.
  std::atomic<uint64_t> c[kCounterCount];
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);

}  // namespace detail

namespace {

constexpr size_t kStatShards = 16;

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer does not model standalone fences (GCC warns, -Wtsan). Acquire loads and release
// stores on the payload words are a strictly stronger form of the same seqlock that it does model.
constexpr bool kTsan = true;
#else
constexpr bool kTsan = false;
#endif
constexpr std::memory_order kWordLoad =
    kTsan ? std::memory_order_acquire : std::memory_order_relaxed;
constexpr std::memory_order kWordStore =
    kTsan ? std::memory_order_release : std::memory_order_relaxed;

// After taking a slot lock, before the first payload store (see the protocol in cache.h).
inline void fenceAfterLock() {
#if !defined(__SANITIZE_THREAD__)
  std::atomic_thread_fence(std::memory_order_release);
#endif
}

// After the last payload load, before re-reading seq.
inline void fenceBeforeRecheck() {
#if !defined(__SANITIZE_THREAD__)
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Atomic views of the slot's plain integer fields. Readers load through a const mapping:
// atomic_ref<T> wants a non-const T, and an 8-byte lock-free load never writes (a plain mov on
// x86-64, ldar/ldr on AArch64), so casting const away for loads is safe on PROT_READ pages.
inline std::atomic_ref<uint64_t> at(const uint64_t& w) {
  return std::atomic_ref<uint64_t>(const_cast<uint64_t&>(w));
}
inline std::atomic_ref<uint32_t> at(const uint32_t& w) {
  return std::atomic_ref<uint32_t>(const_cast<uint32_t&>(w));
}

// A token id as the first two payload words hold it: word 0 = id bytes 0-7, word 1's first two
// bytes = id bytes 8-9 (the rest of word 1 is loginType, flags and userId, masked off).
struct Key {
  uint64_t w0 = 0;
  uint64_t w1 = 0;
  uint64_t home = 0;  // XXH3 of the id; the window starts at home & mask
};

constexpr uint64_t kW1IdMask = [] {
  unsigned char b[8] = {0xFF, 0xFF, 0, 0, 0, 0, 0, 0};
  return std::bit_cast<uint64_t>(b);
}();
constexpr uint64_t kW0FirstByteMask = [] {
  unsigned char b[8] = {0xFF, 0, 0, 0, 0, 0, 0, 0};
  return std::bit_cast<uint64_t>(b);
}();
static_assert(kTokenIdLength == 10, "Key packs the id into 8 + 2 bytes");

inline Key makeKey(const char* id) {
  Key k;
  std::memcpy(&k.w0, id, 8);
  std::memcpy(&k.w1, id + 8, 2);
  k.home = XXH3_64bits(id, kTokenIdLength);
  return k;
}

inline bool idMatches(const Key& k, uint64_t w0, uint64_t w1) {
  return w0 == k.w0 && (w1 & kW1IdMask) == k.w1;
}

inline bool isEmpty(uint64_t w0) {
  return (w0 & kW0FirstByteMask) == 0;
}

// What callers may ask for: a NUL first byte is the empty-slot marker and must never match.
inline bool validId(std::string_view id) {
  return id.size() == kTokenIdLength && id[0] != 0;
}

// A user id's counter in a table of `mask + 1` user epochs: XXH3 of its 16 bytes, given as two
// little-endian words. Words, not bytes: the lookup has them in registers (reading them back from
// the copy it just stored would wait for the store buffer, measured at +20 ns a hit).
inline uint64_t userBucket(uint64_t lo, uint64_t hi, uint64_t mask) {
  const uint64_t id[2] = {lo, hi};
  return XXH3_64bits(id, kUuidLength) & mask;
}
inline uint64_t userBucket(const uint8_t* userId, uint64_t mask) {
  uint64_t id[2];
  std::memcpy(id, userId, kUuidLength);
  return userBucket(id[0], id[1], mask);
}

static_assert(offsetof(CacheEntry, userId) == 12 && offsetof(CacheEntry, userEpoch) % 8 == 0,
              "readSlot takes the user id from words 1-3 and userEpoch from one word");
constexpr size_t kUserEpochWord = offsetof(CacheEntry, userEpoch) / 8;
static_assert(kUserEpochWord == kEntryWords - 1, "readSlot copies userEpoch last");

// The user epoch table, for lookups.
struct UserEpochs {
  const uint64_t* table;
  uint64_t mask;
};

enum class SlotRead : uint8_t { Match, NoMatch, Busy, Stale };

// One seqlock read of `slot` for the token `k`, spending from `budget` on retries. Stale: a whole
// copy of the token, whose user's counter moved since its fill (cache.h, "Users"). Inlined into
// the probe loop: as a call (GCC's choice once the user epoch check made it bigger) every probed
// slot paid the call and its register saves, 14 ns a miss of 8 probes.
[[gnu::always_inline]] inline SlotRead readSlot(const CacheSlot& slot, const Key& k,
                                                UserEpochs users, CacheEntry& out, int& budget) {
  for (;;) {
    const uint64_t s1 = at(slot.seq).load(std::memory_order_acquire);
    const uint64_t w0 = at(slot.words[0]).load(kWordLoad);
    const uint64_t w1 = at(slot.words[1]).load(kWordLoad);
    // No need to validate a mismatch, even a torn one or one read while the slot is locked: no
    // writer turns a slot holding this token into one holding another and back within one lock,
    // so a mismatching read is a moment at which the token was not (or no longer, or not yet)
    // in this slot. Skipping without waiting also keeps a busy neighbour from costing us spins.
    if (!idMatches(k, w0, w1)) return SlotRead::NoMatch;
    if ((s1 & 1) == 0) {
      // Straight into the caller's entry, not through a local buffer (one 368-byte copy less
      // a hit): `out` is only the caller's once the sequence check below passes; a copy it
      // fails is overwritten by the retry, or left behind with Miss/Busy, where `out` is
      // unspecified. The words the user epoch check needs stay in registers.
      char* dst = reinterpret_cast<char*>(&out);
      const uint64_t w2 = at(slot.words[2]).load(kWordLoad);
      const uint64_t w3 = at(slot.words[3]).load(kWordLoad);
      std::memcpy(dst, &w0, 8);
      std::memcpy(dst + 8, &w1, 8);
      std::memcpy(dst + 16, &w2, 8);
      std::memcpy(dst + 24, &w3, 8);
      for (size_t i = 4; i < kUserEpochWord; ++i) {
        const uint64_t w = at(slot.words[i]).load(kWordLoad);
        std::memcpy(dst + 8 * i, &w, 8);
      }
      const uint64_t userEpoch = at(slot.words[kUserEpochWord]).load(kWordLoad);
      std::memcpy(dst + 8 * kUserEpochWord, &userEpoch, 8);
      fenceBeforeRecheck();
      if (at(slot.seq).load(std::memory_order_relaxed) == s1) {
        // After the validated copy. A user change that returned before this lookup began bumped
        // the counter before returning, so (coherence) this load sees that bump or a later one,
        // while an entry filled before it recorded an older value: stale, a miss, which the
        // daemon refills from the database. Acquire: free on x86-64, and it keeps the load
        // after the copy on weaker CPUs.
        const uint64_t lo = (w1 >> 32) | (w2 << 32);  // user id bytes 0-7 (offset 12)
        const uint64_t hi = (w2 >> 32) | (w3 << 32);  // bytes 8-15
        const uint64_t now =
            at(users.table[userBucket(lo, hi, users.mask)]).load(std::memory_order_acquire);
        if (now != userEpoch) return SlotRead::Stale;
        return SlotRead::Match;
      }
    }
    if (--budget < 0) return SlotRead::Busy;
    cpuRelax();
  }
}

// The lookup shared by the daemon and clients; `hitIndex` receives the slot of a Hit.
LookupResult lookupIn(const CacheSlot* slots, uint64_t mask, UserEpochs users,
                      std::string_view tokenId, CacheEntry& out, uint64_t& hitIndex) {
  if (!validId(tokenId)) return LookupResult::Miss;
  const Key k = makeKey(tokenId.data());
  int budget = kReadSpins;
  bool busy = false;
  for (uint32_t i = 0; i < kProbeWindow; ++i) {
    const uint64_t idx = (k.home + i) & mask;
    switch (readSlot(slots[idx], k, users, out, budget)) {
      case SlotRead::Match:
        hitIndex = idx;
        return LookupResult::Hit;
      case SlotRead::Stale:
        return LookupResult::Miss;  // the daemon's refill replaces this copy
      case SlotRead::Busy:
        busy = true;  // the token may be in this slot: keep looking, but never answer Miss
        break;
      case SlotRead::NoMatch:
        break;
    }
  }
  return busy ? LookupResult::Busy : LookupResult::Miss;
}

// Writer side. tryLock/lockSpin return the even seq they replaced; unlock publishes seq + 2.
// seq_cst on the lock CAS (and on the epoch check, insert's user epoch load and the scans' seq
// loads) is what the invalidation arguments in cache.h need; on x86-64 it costs the same as
// acquire.
inline bool tryLock(CacheSlot& slot, uint64_t& s0) {
  uint64_t cur = at(slot.seq).load(std::memory_order_relaxed);
  if (cur & 1) return false;
  if (!at(slot.seq).compare_exchange_strong(cur, cur + 1, std::memory_order_seq_cst,
                                            std::memory_order_relaxed))
    return false;
  fenceAfterLock();
  s0 = cur;
  return true;
}

inline uint64_t lockSpin(CacheSlot& slot) {
  uint64_t s0 = 0;
  for (unsigned spins = 0; !tryLock(slot, s0); ++spins) {
    // Holders never block, but one may be descheduled: stop burning the core after a while.
    if (spins < 1024)
      cpuRelax();
    else
      std::this_thread::yield();
  }
  return s0;
}

inline void unlock(CacheSlot& slot, uint64_t s0) {
  at(slot.seq).store(s0 + 2, std::memory_order_release);
}

inline void storeWords(CacheSlot& slot, const uint64_t* buf) {
  for (size_t i = 0; i < kEntryWords; ++i) at(slot.words[i]).store(buf[i], kWordStore);
}

// Only the lock holder calls this, so relaxed loads see the slot's settled contents.
inline void loadWordsLocked(const CacheSlot& slot, uint64_t* buf) {
  for (size_t i = 0; i < kEntryWords; ++i)
    buf[i] = at(slot.words[i]).load(std::memory_order_relaxed);
}

inline void setRef(const CacheSlot& slot) {
  // Test first: a hot token must not write its cache line (shared with readers) on every hit.
  if (at(slot.ref).load(std::memory_order_relaxed) == 0)
    at(slot.ref).store(1, std::memory_order_relaxed);
}

// Each thread sweeps from its own rotating start, so victims spread over the window without a
// shared counter.
inline uint32_t nextHand() {
  thread_local uint32_t hand = 0;
  return hand++;
}

inline void bump(detail::StatShard& s, detail::Counter c, uint64_t n = 1) {
  s.c[c].fetch_add(n, std::memory_order_relaxed);
}

// Words 0..3 (32 bytes) hold tokenId, loginType, flags, userId, the counts: all a scan matches on.
constexpr size_t kHeadWords = 4;
static_assert(offsetof(CacheEntry, userId) + kUuidLength <= kHeadWords * 8);

}  // namespace

Cache::Cache(Segment segment, std::unique_ptr<detail::StatShard[]> stats)
    : segment_(std::move(segment)),
      slots_(reinterpret_cast<CacheSlot*>(segment_.slots())),
      mask_(segment_.slotCount() - 1),
      userEpochs_(segment_.userEpochs()),
      userMask_(segment_.userEpochCount() - 1),
      stats_(std::move(stats)) {}

Cache::Cache(Cache&&) noexcept = default;
Cache& Cache::operator=(Cache&&) noexcept = default;
Cache::~Cache() = default;

Result<Cache> Cache::create(const Options& options) {
  const uint64_t count = options.slotCount < kProbeWindow ? kProbeWindow : options.slotCount;
  auto seg = Segment::create({count, kSlotSize, options.catalogVersion});
  if (!seg) return seg.error();
  // Value-initialised: every counter starts at zero.
  auto stats = std::make_unique<detail::StatShard[]>(kStatShards);
  return Cache(std::move(*seg), std::move(stats));
}

detail::StatShard& Cache::shard() const {
  static std::atomic<uint32_t> next{0};  // relaxed: only spreads threads over shards
  thread_local const uint32_t mine = next.fetch_add(1, std::memory_order_relaxed) % kStatShards;
  return stats_[mine];
}

void Cache::prefetch(std::string_view tokenId) const {
  if (!validId(tokenId)) return;
  const CacheSlot* slot = &slots_[makeKey(tokenId.data()).home & mask_];
  const char* p = reinterpret_cast<const char*>(slot);
  for (size_t line = 0; line < kSlotSize; line += kCacheLine) __builtin_prefetch(p + line, 0, 3);
}

LookupResult Cache::lookup(std::string_view tokenId, CacheEntry& out) {
  uint64_t idx = 0;
  const LookupResult r = lookupIn(slots_, mask_, {userEpochs_, userMask_}, tokenId, out, idx);
  auto& s = shard();
  switch (r) {
    case LookupResult::Hit:
      setRef(slots_[idx]);
      bump(s, detail::kHits);
      break;
    case LookupResult::Miss:
      bump(s, detail::kMisses);
      break;
    case LookupResult::Busy:
      bump(s, detail::kBusy);
      break;
  }
  return r;
}

uint64_t Cache::epoch() const {
  // Acquire: pairs with the release half of the bump, so a filler that sees a bump also sees
  // the database commit that preceded it when it opens its read transaction afterwards.
  return at(segment_.header().epoch).load(std::memory_order_acquire);
}

InsertResult Cache::insert(const CacheEntry& entry, uint64_t epochSeen) {
  if (!entry.wellFormed()) return InsertResult::Invalid;
  const Key k = makeKey(entry.tokenId);

  // Choose a slot from unlocked, possibly torn reads: only a hint, everything that matters is
  // decided again under the lock. Prefer a copy of the same token, then an empty slot.
  uint64_t victim = ~uint64_t{0};
  uint64_t firstEmpty = ~uint64_t{0};
  for (uint32_t i = 0; i < kProbeWindow; ++i) {
    const uint64_t idx = (k.home + i) & mask_;
    const uint64_t w0 = at(slots_[idx].words[0]).load(std::memory_order_relaxed);
    const uint64_t w1 = at(slots_[idx].words[1]).load(std::memory_order_relaxed);
    if (idMatches(k, w0, w1)) {
      victim = idx;
      break;
    }
    if (firstEmpty == ~uint64_t{0} && isEmpty(w0)) firstEmpty = idx;
  }
  if (victim == ~uint64_t{0}) victim = firstEmpty;
  if (victim == ~uint64_t{0}) {
    // CLOCK: pass over (and clear) referenced slots; two rounds always find one unless hits keep
    // setting bits behind us, and then any slot will do.
    const uint32_t start = nextHand() % kProbeWindow;
    victim = (k.home + start) & mask_;
    for (uint32_t step = 0; step < 2 * kProbeWindow; ++step) {
      const uint64_t idx = (k.home + (start + step) % kProbeWindow) & mask_;
      auto ref = at(slots_[idx].ref);
      if (ref.load(std::memory_order_relaxed) == 0) {
        victim = idx;
        break;
      }
      ref.store(0, std::memory_order_relaxed);
    }
  }

  // seq_cst, and before the epoch check below: see "Users" in cache.h. Whatever the filler put in
  // entry.userEpoch is overwritten with this.
  const uint64_t userEpoch =
      at(userEpochs_[userBucket(entry.userId, userMask_)]).load(std::memory_order_seq_cst);

  CacheSlot& slot = slots_[victim];
  auto& s = shard();
  uint64_t s0 = 0;
  if (!tryLock(slot, s0)) {
    bump(s, detail::kContendedDrops);
    return InsertResult::Contended;
  }
  // seq_cst, after the lock: see "Invalidation without stale refills" in cache.h.
  if (at(segment_.header().epoch).load(std::memory_order_seq_cst) != epochSeen) {
    unlock(slot, s0);
    bump(s, detail::kStaleDrops);
    return InsertResult::Stale;
  }
  const uint64_t old0 = at(slot.words[0]).load(std::memory_order_relaxed);
  const uint64_t old1 = at(slot.words[1]).load(std::memory_order_relaxed);
  const bool same = idMatches(k, old0, old1);

  uint64_t buf[kEntryWords];
  std::memcpy(buf, &entry, sizeof entry);
  std::memcpy(reinterpret_cast<char*>(buf) + offsetof(CacheEntry, userEpoch), &userEpoch,
              sizeof userEpoch);
  storeWords(slot, buf);
  // A refill of the same token keeps its earned bit; a new token starts unreferenced.
  if (!same) at(slot.ref).store(0, std::memory_order_relaxed);
  unlock(slot, s0);

  bump(s, detail::kInserts);
  if (!same && !isEmpty(old0)) bump(s, detail::kEvictions);
  return InsertResult::Inserted;
}

int Cache::updateImpl(std::string_view tokenId, void (*fn)(void*, CacheEntry&), void* ctx) {
  if (!validId(tokenId)) return 0;
  const Key k = makeKey(tokenId.data());
  int n = 0;
  for (uint32_t i = 0; i < kProbeWindow; ++i) {
    CacheSlot& slot = slots_[(k.home + i) & mask_];
    // Unlocked pre-check: missing a copy that an insert is writing right now is fine, that copy
    // comes from the database and its times are a lower bound (cache.h, "Freshness of times").
    if (!idMatches(k, at(slot.words[0]).load(std::memory_order_relaxed),
                   at(slot.words[1]).load(std::memory_order_relaxed)))
      continue;
    const uint64_t s0 = lockSpin(slot);
    uint64_t buf[kEntryWords];
    loadWordsLocked(slot, buf);
    if (idMatches(k, buf[0], buf[1])) {
      CacheEntry e;
      std::memcpy(&e, buf, sizeof e);
      fn(ctx, e);
      const auto* old = reinterpret_cast<const uint8_t*>(buf);
      if (std::memcmp(e.tokenId, tokenId.data(), kTokenIdLength) == 0 &&
          std::memcmp(e.userId, old + offsetof(CacheEntry, userId), kUuidLength) == 0 &&
          std::memcmp(&e.userEpoch, old + offsetof(CacheEntry, userEpoch), sizeof e.userEpoch) ==
              0 &&
          e.wellFormed()) {
        std::memcpy(buf, &e, sizeof e);
        storeWords(slot, buf);
        ++n;
      }
    }
    unlock(slot, s0);
  }
  return n;
}

bool Cache::touch(std::string_view tokenId) {
  if (!validId(tokenId)) return false;
  const Key k = makeKey(tokenId.data());
  bool found = false;
  for (uint32_t i = 0; i < kProbeWindow; ++i) {
    const CacheSlot& slot = slots_[(k.home + i) & mask_];
    // Unlocked and unvalidated: the bit is a hint (cache.h, "Eviction").
    if (idMatches(k, at(slot.words[0]).load(std::memory_order_relaxed),
                  at(slot.words[1]).load(std::memory_order_relaxed))) {
      setRef(slot);
      found = true;
    }
  }
  return found;
}

int Cache::invalidateWhere(uint64_t first, uint64_t count, Matcher match, const void* ctx) {
  // seq_cst, and before any slot is looked at: see "Invalidation without stale refills".
  at(segment_.header().epoch).fetch_add(1, std::memory_order_seq_cst);
  static constexpr uint64_t kZero[kEntryWords] = {};
  int n = 0;
  for (uint64_t i = 0; i < count; ++i) {
    CacheSlot& slot = slots_[(first + i) & mask_];
    // Unlocked pre-check, so a scan of the whole table does not write (and take from every
    // client's cache) every slot's first line. seq_cst for the argument in cache.h.
    const uint64_t seq = at(slot.seq).load(std::memory_order_seq_cst);
    uint64_t head[kHeadWords];
    for (size_t w = 0; w < kHeadWords; ++w)
      head[w] = at(slot.words[w]).load(std::memory_order_relaxed);
    if ((seq & 1) == 0 && (isEmpty(head[0]) || !match(head, ctx))) continue;

    const uint64_t s0 = lockSpin(slot);
    for (size_t w = 0; w < kHeadWords; ++w)
      head[w] = at(slot.words[w]).load(std::memory_order_relaxed);
    if (!isEmpty(head[0]) && match(head, ctx)) {
      // Zero the whole entry: a revoked token's secret hash should not linger in shared memory.
      storeWords(slot, kZero);
      at(slot.ref).store(0, std::memory_order_relaxed);
      ++n;
    }
    unlock(slot, s0);
  }
  bump(shard(), detail::kInvalidations, static_cast<uint64_t>(n));
  return n;
}

int Cache::invalidateToken(std::string_view tokenId) {
  if (!validId(tokenId)) return 0;
  const Key k = makeKey(tokenId.data());
  return invalidateWhere(
      k.home, kProbeWindow,
      [](const uint64_t* head, const void* ctx) {
        return idMatches(*static_cast<const Key*>(ctx), head[0], head[1]);
      },
      &k);
}

void Cache::invalidateUser(std::span<const uint8_t, kUuidLength> userId) {
  // Both seq_cst, and in this order: the epoch first (a fill that has not checked it yet is
  // dropped), then the user's counter (a fill that checked the epoch before the first bump read
  // the counter before the second, so its entry carries an older value). See "Users" in cache.h.
  at(segment_.header().epoch).fetch_add(1, std::memory_order_seq_cst);
  at(userEpochs_[userBucket(userId.data(), userMask_)]).fetch_add(1, std::memory_order_seq_cst);
  bump(shard(), detail::kUserInvalidations);
}

int Cache::invalidateAll() {
  return invalidateWhere(
      0, mask_ + 1, [](const uint64_t*, const void*) { return true; }, nullptr);
}

CacheStats Cache::stats() const {
  uint64_t sum[detail::kCounterCount] = {};
  for (size_t i = 0; i < kStatShards; ++i)
    for (size_t c = 0; c < detail::kCounterCount; ++c)
      sum[c] += stats_[i].c[c].load(std::memory_order_relaxed);
  CacheStats st;
  st.hits = sum[detail::kHits];
  st.misses = sum[detail::kMisses];
  st.busy = sum[detail::kBusy];
  st.inserts = sum[detail::kInserts];
  st.staleDrops = sum[detail::kStaleDrops];
  st.contendedDrops = sum[detail::kContendedDrops];
  st.evictions = sum[detail::kEvictions];
  st.invalidations = sum[detail::kInvalidations];
  st.userInvalidations = sum[detail::kUserInvalidations];
  return st;
}

CacheReader::CacheReader(SegmentView view)
    : view_(std::move(view)),
      slots_(reinterpret_cast<const CacheSlot*>(view_.slots())),
      mask_(view_.slotCount() - 1),
      userEpochs_(view_.userEpochs()),
      userMask_(view_.userEpochCount() - 1) {}

Result<CacheReader> CacheReader::attach(int fd, uint64_t catalogVersion) {
  auto view = SegmentView::attach(fd, {0, kSlotSize, catalogVersion});
  if (!view) return view.error();
  if (view->slotCount() < kProbeWindow)
    return makeError("shm segment: fewer slots than one probe window", -EPROTO);
  return CacheReader(std::move(*view));
}

LookupResult CacheReader::lookup(std::string_view tokenId, CacheEntry& out) const {
  uint64_t idx = 0;
  return lookupIn(slots_, mask_, {userEpochs_, userMask_}, tokenId, out, idx);
}

}  // namespace tokend::shm
