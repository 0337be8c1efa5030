// libFuzzer target: a client attaching to a shared-memory segment it did not write (a corrupt,
// hostile or foreign segment passed over the socket): CacheReader::attach must refuse every bad
// header, and lookups in whatever slots it accepts must stay in bounds and never hang; a hit is
// then decided by shm::decideFromEntry as libtokend would.
//
// Input: byte 0 chooses which header fields are forced valid (so the fuzzer reaches the slots),
// byte 1 the slot count when forced, then the header's 128 bytes, then slot bytes (repeated to
// fill the segment), and the last 10 bytes a token id to look up besides every stored one.
// The user epoch table is zeroed, and so is every slot's userEpoch unless byte 1's top bit is set:
// random bytes would almost never agree, and a lookup answers Miss when they do not.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "base/unique_fd.h"
#include "shm/cache.h"
#include "shm/codec.h"
#include "tests/fuzz/fuzz_support.h"

using namespace tokend;
using namespace tokend::shm;
using tokend::fuzz::require;

namespace {

constexpr uint64_t kCatalog = 0x5eed5eed5eed5eedULL;
// Bigger segments only cost time: the reader's bounds come from the header either way.
constexpr uint64_t kMaxFuzzBytes = segmentSize(256, kSlotSize);

enum : uint8_t {
  kFixMagic = 1,
  kFixVersion = 2,
  kFixSlotSize = 4,
  kFixCatalog = 8,
  kFixCount = 16,
  kFixFileSize = 32,
  kNoSeal = 64,
  kFutureWrite = 128,
};

// What attach() must demand, written out independently of segment.cc.
bool acceptable(const SegmentHeader& h, uint64_t fileSize, bool sealed) {
  return sealed && fileSize >= sizeof(SegmentHeader) && h.magic == kSegmentMagic &&
         h.layoutVersion == kLayoutVersion && h.slotSize == kSlotSize &&
         h.catalogVersion == kCatalog && h.slotCount >= kProbeWindow &&
         h.slotCount <= kMaxSlotCount && std::has_single_bit(h.slotCount) &&
         h.userEpochCount == userEpochCountFor(h.slotCount) &&
         segmentSize(h.slotCount, h.slotSize) == fileSize;
}

void lookupAndDecide(const CacheReader& reader, std::string_view id, uint8_t salt) {
  CacheEntry e;
  LookupResult r = reader.lookup(id, e);
  if (r != LookupResult::Hit) return;
  require(e.id() == id);
  require(e.name().size() <= kUsernameMax);
  // As libtokend decides a hit: the presented hash matches, or not; a permission or none.
  verifier::Digest presented{};
  std::memcpy(presented.data(), e.secretHash, presented.size());
  if (salt & 1) presented[0] ^= 1;
  verifier::Query q;
  if (salt & 2) {
    q.hasPermission = true;
    q.permission = salt % verifier::catalog::permissionCount();
  }
  if (salt & 4) {
    q.hasObject = true;
    q.object.type = static_cast<uint16_t>(salt % verifier::catalog::resourceCount());
    std::memcpy(q.object.id.bytes.data(), e.userId, kUuidLength);
  }
  auto reason = decideFromEntry(e, presented, q, static_cast<int64_t>(salt) << 24);
  if (reason && (salt & 1)) require(*reason == verifier::Reason::BadSecret);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t flags = data[0];
  std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);

  SegmentHeader h{};
  std::memcpy(&h, rest.data(), std::min(rest.size(), sizeof h));
  rest.remove_prefix(std::min(rest.size(), sizeof h));
  if (flags & kFixMagic) h.magic = kSegmentMagic;
  if (flags & kFixVersion) h.layoutVersion = kLayoutVersion;
  if (flags & kFixSlotSize) h.slotSize = kSlotSize;
  if (flags & kFixCatalog) h.catalogVersion = kCatalog;
  if (flags & kFixCount) {
    h.slotCount = uint64_t{1} << (data[1] % 10);  // 1 .. 512
    h.userEpochCount = userEpochCountFor(h.slotCount);
  }

  uint64_t fileSize = sizeof h + rest.size();
  if (flags & kFixFileSize) {
    // Only when it is plausible: a hostile count must not make the fuzzer allocate gigabytes.
    uint64_t want = h.slotCount <= kMaxSlotCount && h.slotSize <= kMaxSlotSize
                        ? segmentSize(h.slotCount, h.slotSize)
                        : fileSize;
    if (want <= kMaxFuzzBytes) fileSize = want;
  }
  fileSize = std::min(fileSize, kMaxFuzzBytes);

  UniqueFd fd(::memfd_create("fuzz-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  require(fd.get() >= 0);
  require(::ftruncate(fd.get(), static_cast<off_t>(fileSize)) == 0);
  std::vector<char> image(fileSize, 0);
  std::memcpy(image.data(), &h, std::min<uint64_t>(sizeof h, fileSize));
  // The slots: the remaining input, repeated, so a short input still fills many slots.
  if (!rest.empty()) {
    for (uint64_t off = sizeof h, i = 0; off < fileSize; ++off, ++i)
      image[off] = rest[i % rest.size()];
  }
  if (h.slotSize == kSlotSize && h.slotCount <= kMaxSlotCount &&
      userEpochsOffset(h.slotCount, kSlotSize) < fileSize) {
    const uint64_t table = userEpochsOffset(h.slotCount, kSlotSize);
    std::memset(image.data() + table, 0, fileSize - table);
    for (uint64_t i = 0; (data[1] & 0x80) == 0 && i < h.slotCount; ++i) {
      const uint64_t at = kSlotsOffset + i * kSlotSize + offsetof(CacheSlot, words) +
                          offsetof(CacheEntry, userEpoch);
      if (at + sizeof(uint64_t) <= fileSize) std::memset(image.data() + at, 0, sizeof(uint64_t));
    }
  }
  require(::pwrite(fd.get(), image.data(), image.size(), 0) == static_cast<ssize_t>(image.size()));
  const bool sealed = (flags & kNoSeal) == 0;
  if (sealed) {
    int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL |
                ((flags & kFutureWrite) ? F_SEAL_FUTURE_WRITE : 0);
    require(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0);
  }

  auto reader = CacheReader::attach(fd.get(), kCatalog);
  require(reader.has_value() == acceptable(h, fileSize, sealed));
  if (!reader) {
    require(!reader.error().message.empty());
    return 0;
  }
  fd.reset();  // the mapping outlives the descriptor
  require(reader->slotCount() == h.slotCount);

  // Every id stored in a slot, and the one at the end of the input.
  const uint8_t salt = data[1];
  for (uint64_t i = 0; i < h.slotCount; ++i) {
    const char* payload = image.data() + kSlotsOffset + i * kSlotSize + offsetof(CacheSlot, words);
    lookupAndDecide(*reader, std::string_view(payload, kTokenIdLength),
                    static_cast<uint8_t>(salt + i));
  }
  if (size >= kTokenIdLength) {
    lookupAndDecide(*reader,
                    std::string_view(reinterpret_cast<const char*>(data + size - kTokenIdLength),
                                     kTokenIdLength),
                    salt);
  }
  return 0;
}
