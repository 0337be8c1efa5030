// Segment: the sealed memfd that carries the shared cache, its header, writer and reader mappings.
//
// A segment is a header (two cache lines), `slotCount` slots of `slotSize` bytes, then a table of
// `userEpochCount` 64-bit counters (the user epochs, see cache.h). The segment knows nothing of
// what a slot holds or what a counter counts: the cache (cache.h) defines both. Modelled on
// LMDB's lock file: a magic number and a format signature first, so a reader built for another
// layout, another catalog or another slot size refuses to map it instead of misreading it.
//
// Who may write: only the daemon, through the mapping `Segment::create` makes before sealing. The
// seals (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) make every later
// writable shared mapping, write(2), ftruncate(2) and fallocate(2) fail for everybody, including a
// client that reopens its descriptor through /proc with O_RDWR (verified on Linux 6.18: mmap
// PROT_WRITE|MAP_SHARED gives EPERM, write(2) EPERM). The daemon's existing mapping stays writable.
// A MAP_PRIVATE mapping can still be made writable, but it is a copy-on-write copy that nobody
// else sees. F_SEAL_SHRINK is what lets a reader trust that its mapping never turns into SIGBUS.
//
// Threads: `Segment` and `SegmentView` are immutable after creation except for the slot memory,
// the user epochs and `SegmentHeader::epoch`, which are only ever accessed atomically (cache.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "base/result.h"
#include "base/unique_fd.h"

namespace tokend::shm {

inline constexpr size_t kCacheLine = 64;

// "TOKENDSH" read as a little-endian u64: recognisable in a hex dump of the segment.
inline constexpr uint64_t kSegmentMagic = 0x4853444E'454B4F54ULL;
// Bump on any change to SegmentHeader or to a slot's layout or protocol (cache.h).
// 2: the user epoch table after the slots, and CacheEntry::userEpoch.
inline constexpr uint32_t kLayoutVersion = 2;
// A bound on what a (possibly hostile or corrupt) header may make a reader map: 16 Mi slots.
inline constexpr uint64_t kMaxSlotCount = uint64_t{1} << 24;
inline constexpr uint32_t kMaxSlotSize = 4096;

// Counters in the user epoch table for `slotCount` slots: one per 64 slots, at least 4096.
// A user change makes every cached entry of every user sharing its counter look stale (each is
// refilled from the database on its next use), so the table grows with the cache to keep that
// collateral at about 64 entries on average even in a full cache, whatever its size; and it stays
// small next to the slots (8 bytes per 64 slots of 384 bytes: 0.03%, 2 MiB at kMaxSlotCount), so
// the counter a lookup reads is usually in the CPU cache. The floor (32 KiB) keeps collisions rare
// for small caches. A power of two whenever slotCount is one.
constexpr uint64_t userEpochCountFor(uint64_t slotCount) {
  return slotCount / 64 > 4096 ? slotCount / 64 : 4096;
}

// The first two cache lines of the segment. Written once by `Segment::create` before the segment
// is sealed and handed out, so readers read the signature with plain loads; the only field that
// changes afterwards is `epoch` (and the user epochs after the slots), which everybody accesses
// through std::atomic_ref (plain integer fields keep the struct trivially copyable, which
// std::atomic members would not).
struct alignas(kCacheLine) SegmentHeader {
  uint64_t magic;           // kSegmentMagic
  uint32_t layoutVersion;   // kLayoutVersion
  uint32_t slotSize;        // bytes per slot, a multiple of kCacheLine
  uint64_t catalogVersion;  // supplied by the daemon: permission bit i means the same thing to both
  uint64_t slotCount;       // a power of two
  uint64_t generation;      // random, non-zero, per segment: a client seeing another one re-maps
  uint64_t userEpochCount;  // counters after the slots: userEpochCountFor(slotCount)
  uint8_t reserved0[kCacheLine - 48];
  // Invalidation epoch, on its own line (bumped by invalidations, read by fills, never by
  // lookups). Bump and insert-time check seq_cst, epoch() acquire: why is argued in cache.h.
  uint64_t epoch;
  uint8_t reserved1[kCacheLine - 8];
};
static_assert(std::is_standard_layout_v<SegmentHeader>);
static_assert(std::is_trivially_copyable_v<SegmentHeader>);
static_assert(sizeof(SegmentHeader) == 2 * kCacheLine);
static_assert(offsetof(SegmentHeader, magic) == 0);
static_assert(offsetof(SegmentHeader, layoutVersion) == 8);
static_assert(offsetof(SegmentHeader, slotSize) == 12);
static_assert(offsetof(SegmentHeader, catalogVersion) == 16);
static_assert(offsetof(SegmentHeader, slotCount) == 24);
static_assert(offsetof(SegmentHeader, generation) == 32);
static_assert(offsetof(SegmentHeader, userEpochCount) == 40);
static_assert(offsetof(SegmentHeader, epoch) == kCacheLine);

// Slots start right after the header, so each is cache-line aligned when slotSize is.
inline constexpr size_t kSlotsOffset = sizeof(SegmentHeader);

// What a segment is made of, and what a reader expects to find.
struct SegmentSpec {
  uint64_t slotCount = 0;       // create: rounded up to a power of two; attach: must match header
  uint32_t slotSize = 0;        // a non-zero multiple of kCacheLine, at most kMaxSlotSize
  uint64_t catalogVersion = 0;  // the compiled catalog both sides were built against
};

// Where the user epoch table starts: right after the slots, so it is 8-byte (indeed cache-line)
// aligned whenever slotSize is a multiple of kCacheLine.
constexpr uint64_t userEpochsOffset(uint64_t slotCount, uint32_t slotSize) {
  return kSlotsOffset + slotCount * slotSize;
}

// Bytes of a segment with `slotCount` slots of `slotSize` bytes (and its user epoch table).
constexpr uint64_t segmentSize(uint64_t slotCount, uint32_t slotSize) {
  return userEpochsOffset(slotCount, slotSize) + userEpochCountFor(slotCount) * sizeof(uint64_t);
}

// A move-only owner of an mmap'ed range, unmapped on destruction.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* data, size_t size) : data_(data), size_(size) {}
  Mapping(Mapping&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }

  void* data() const { return data_; }
  size_t size() const { return size_; }
  void reset();

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// The daemon's side: owns the memfd and the only writable mapping.
class Segment {
 public:
  // Creates, sizes, maps (read-write, pre-faulted) and seals a new segment with a fresh random
  // generation and epoch 0. The slots and the user epochs are zero. `spec.slotCount` is rounded up
  // to a power of two (at least 1, at most kMaxSlotCount). Errors: -EINVAL for a bad spec; the
  // errno of memfd_create, ftruncate, mmap, fcntl(F_ADD_SEALS) or getrandom otherwise. A kernel
  // without F_SEAL_FUTURE_WRITE (before 5.1) is not an error: the segment is sealed without it and
  // `writeSealed()` says false (read-only descriptors still refuse writable mappings, but a
  // client could reopen one read-write through /proc).
  static Result<Segment> create(const SegmentSpec& spec);

  // A new read-only descriptor of the segment for a client (O_RDONLY | O_CLOEXEC, reopened
  // through /proc/self/fd), which cannot be mapped PROT_WRITE|MAP_SHARED (mmap gives EACCES).
  // The caller owns it; it stays valid after this Segment is gone. Errors: the errno of open(2).
  Result<UniqueFd> openReadOnly() const;

  int fd() const { return fd_.get(); }
  SegmentHeader& header() const { return *static_cast<SegmentHeader*>(map_.data()); }
  std::byte* slots() const { return static_cast<std::byte*>(map_.data()) + kSlotsOffset; }
  uint64_t* userEpochs() const {
    return reinterpret_cast<uint64_t*>(static_cast<std::byte*>(map_.data()) +
                                       userEpochsOffset(slotCount(), slotSize()));
  }
  uint64_t userEpochCount() const { return header().userEpochCount; }
  uint64_t slotCount() const { return header().slotCount; }
  uint32_t slotSize() const { return header().slotSize; }
  uint64_t generation() const { return header().generation; }
  size_t size() const { return map_.size(); }
  bool writeSealed() const { return writeSealed_; }

 private:
  Segment(UniqueFd fd, Mapping map, bool writeSealed)
      : fd_(std::move(fd)), map_(std::move(map)), writeSealed_(writeSealed) {}

  UniqueFd fd_;
  Mapping map_;
  bool writeSealed_ = false;
};

// A client's (or a test's) read-only view of a segment.
class SegmentView {
 public:
  // Validates and maps PROT_READ the segment behind `fd`: it must be sealed against shrinking,
  // at least a header long, carry kSegmentMagic and kLayoutVersion, and match `expect.slotSize`
  // and `expect.catalogVersion`; its slot count must be a power of two no larger than
  // kMaxSlotCount, its userEpochCount userEpochCountFor(slotCount), and its size (fstat) exactly
  // segmentSize(slotCount, slotSize). A segment of another layout version (an older or newer
  // daemon) is refused with -EPROTO like any other mismatch.
  // `expect.slotCount` of 0 accepts any count; otherwise it must match. The view does not own
  // `fd`; the caller may close it once this returns. Errors: -EPROTO for a segment that is not
  // what was expected (message says which field), else the errno of fstat, fcntl or mmap.
  static Result<SegmentView> attach(int fd, const SegmentSpec& expect);

  const SegmentHeader& header() const { return *static_cast<const SegmentHeader*>(map_.data()); }
  const std::byte* slots() const {
    return static_cast<const std::byte*>(map_.data()) + kSlotsOffset;
  }
  const uint64_t* userEpochs() const {
    return reinterpret_cast<const uint64_t*>(static_cast<const std::byte*>(map_.data()) +
                                             userEpochsOffset(slotCount(), slotSize()));
  }
  uint64_t userEpochCount() const { return header().userEpochCount; }
  uint64_t slotCount() const { return header().slotCount; }
  uint32_t slotSize() const { return header().slotSize; }
  uint64_t generation() const { return header().generation; }
  size_t size() const { return map_.size(); }

 private:
  explicit SegmentView(Mapping map) : map_(std::move(map)) {}

  Mapping map_;
};

}  // namespace tokend::shm
