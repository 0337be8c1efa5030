// Segment: creating, sealing, reopening read-only and validating the shared-memory segment.
#include "shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <string>

namespace tokend::shm {
namespace {

// Linux 6.3+: a memfd that can never be made executable. Debian 12's headers predate it, and
// with vm.memfd_noexec=2 the kernel refuses memfds without it.
constexpr unsigned kMfdNoexecSeal = 0x0008U;

Result<UniqueFd> makeMemfd() {
  int fd = ::memfd_create("tokend-cache", MFD_CLOEXEC | MFD_ALLOW_SEALING | kMfdNoexecSeal);
  // Kernels before 6.3 refuse the unknown flag; the segment is never mapped executable anyway.
  if (fd < 0 && errno == EINVAL)
    fd = ::memfd_create("tokend-cache", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Error::fromErrno(errno, "memfd_create");
  return UniqueFd(fd);
}

Error badSegment(const std::string& what) {
  return makeError("shm segment: " + what, -EPROTO);
}

}  // namespace

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    reset();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void Mapping::reset() {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

Result<Segment> Segment::create(const SegmentSpec& spec) {
  if (spec.slotCount == 0 || spec.slotCount > kMaxSlotCount)
    return makeError("shm segment: slot count must be 1.." + std::to_string(kMaxSlotCount));
  if (spec.slotSize == 0 || spec.slotSize % kCacheLine != 0 || spec.slotSize > kMaxSlotSize)
    return makeError("shm segment: slot size must be a multiple of 64 up to 4096");
  const uint64_t slotCount = std::bit_ceil(spec.slotCount);
  const uint64_t size = segmentSize(slotCount, spec.slotSize);

  uint64_t generation = 0;
  while (generation == 0) {  // 0 is kept for "no segment" on the client side
    ssize_t n = ::getrandom(&generation, sizeof generation, 0);
    if (n < 0 && errno != EINTR) return Error::fromErrno(errno, "getrandom");
  }

  auto fd = makeMemfd();
  if (!fd) return fd.error();
  if (::ftruncate(fd->get(), static_cast<off_t>(size)) < 0)
    return Error::fromErrno(errno, "ftruncate shm segment");
  // MAP_POPULATE: fault every page in now, not on the request path.
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd->get(), 0);
  if (p == MAP_FAILED) return Error::fromErrno(errno, "mmap shm segment");
  Mapping map(p, size);
  // Every cached token's hash and its user: not for a core file (the default coredump_filter
  // dumps shared mappings).
  if (::madvise(p, size, MADV_DONTDUMP) != 0) return Error::fromErrno(errno, "madvise shm segment");

  // Written before the seals and before any descriptor leaves the process: readers that validate
  // these fields need no ordering beyond the fd hand-off itself.
  auto* h = static_cast<SegmentHeader*>(p);
  h->magic = kSegmentMagic;
  h->layoutVersion = kLayoutVersion;
  h->slotSize = spec.slotSize;
  h->catalogVersion = spec.catalogVersion;
  h->slotCount = slotCount;
  h->generation = generation;
  h->userEpochCount = userEpochCountFor(slotCount);
  h->epoch = 0;

  constexpr int kSizeSeals = F_SEAL_SHRINK | F_SEAL_GROW;
  bool writeSealed = true;
  if (::fcntl(fd->get(), F_ADD_SEALS, kSizeSeals | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) < 0) {
    if (errno != EINVAL) return Error::fromErrno(errno, "seal shm segment");
    // Before Linux 5.1 there is no F_SEAL_FUTURE_WRITE; F_SEAL_WRITE would also freeze our own
    // mapping. Fall back to the size seals, which are what readers rely on to never SIGBUS.
    writeSealed = false;
    if (::fcntl(fd->get(), F_ADD_SEALS, kSizeSeals | F_SEAL_SEAL) < 0)
      return Error::fromErrno(errno, "seal shm segment");
  }
  return Segment(std::move(*fd), std::move(map), writeSealed);
}

Result<UniqueFd> Segment::openReadOnly() const {
  // A dup() would share our O_RDWR open file description; a fresh open through /proc gives the
  // client a description whose mode is O_RDONLY, so mmap(PROT_WRITE, MAP_SHARED) fails EACCES.
  const std::string path = "/proc/self/fd/" + std::to_string(fd_.get());
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error::fromErrno(errno, "open " + path);
  return UniqueFd(fd);
}

Result<SegmentView> SegmentView::attach(int fd, const SegmentSpec& expect) {
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return Error::fromErrno(errno, "shm segment: F_GET_SEALS");
  // Without this seal the daemon (or anyone) could shrink the file under our mapping.
  if ((seals & F_SEAL_SHRINK) == 0) return badSegment("not sealed against shrinking");

  struct stat st {};
  if (::fstat(fd, &st) < 0) return Error::fromErrno(errno, "shm segment: fstat");
  const auto fileSize = static_cast<uint64_t>(st.st_size);
  if (fileSize < sizeof(SegmentHeader)) return badSegment("shorter than its header");

  void* p = ::mmap(nullptr, fileSize, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) return Error::fromErrno(errno, "mmap shm segment");
  Mapping map(p, fileSize);
  // Nor in a client's (a gateway's) core file. Advisory: a failure changes no verdict.
  (void)::madvise(p, fileSize, MADV_DONTDUMP);

  const auto* h = static_cast<const SegmentHeader*>(p);
  if (h->magic != kSegmentMagic) return badSegment("bad magic");
  if (h->layoutVersion != kLayoutVersion)
    return badSegment("layout version " + std::to_string(h->layoutVersion) + ", expected " +
                      std::to_string(kLayoutVersion));
  if (h->catalogVersion != expect.catalogVersion)
    return badSegment("catalog version " + std::to_string(h->catalogVersion) + ", expected " +
                      std::to_string(expect.catalogVersion));
  if (h->slotSize != expect.slotSize)
    return badSegment("slot size " + std::to_string(h->slotSize) + ", expected " +
                      std::to_string(expect.slotSize));
  if (h->slotCount == 0 || h->slotCount > kMaxSlotCount || !std::has_single_bit(h->slotCount))
    return badSegment("slot count " + std::to_string(h->slotCount) + " out of range");
  if (expect.slotCount != 0 && h->slotCount != expect.slotCount)
    return badSegment("slot count " + std::to_string(h->slotCount) + ", expected " +
                      std::to_string(expect.slotCount));
  // Derived from the count, so it is a power of two and the table lies inside the file checked
  // below: a lookup's `hash & (userEpochCount - 1)` stays in bounds.
  if (h->userEpochCount != userEpochCountFor(h->slotCount))
    return badSegment("user epoch count " + std::to_string(h->userEpochCount) + ", expected " +
                      std::to_string(userEpochCountFor(h->slotCount)));
  if (segmentSize(h->slotCount, h->slotSize) != fileSize)
    return badSegment("size " + std::to_string(fileSize) + " does not match " +
                      std::to_string(h->slotCount) + " slots");
  return SegmentView(std::move(map));
}

}  // namespace tokend::shm
