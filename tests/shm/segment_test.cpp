// Tests for the shared-memory segment: sealing, read-only descriptors and header validation.
#include "shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <doctest/doctest.h>

using namespace tokend;
using namespace tokend::shm;

namespace {

constexpr uint32_t kTestSlotSize = 128;
constexpr uint64_t kCatalog = 0xC0FFEE;

Segment makeSegment(uint64_t slots = 16) {
  auto seg = Segment::create({slots, kTestSlotSize, kCatalog});
  REQUIRE_MESSAGE(seg, (seg ? "" : seg.error().message));
  return std::move(*seg);
}

// A memfd holding `header` and sized `size`, sealed like the daemon's unless `seal` is false:
// what a corrupt, foreign or truncated segment looks like to a reader.
UniqueFd craft(const SegmentHeader& header, uint64_t size, bool seal = true) {
  UniqueFd fd(::memfd_create("crafted", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(fd);
  REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
  const size_t n = size < sizeof header ? size : sizeof header;
  REQUIRE(::pwrite(fd.get(), &header, n, 0) == static_cast<ssize_t>(n));
  if (seal) REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  return fd;
}

SegmentHeader validHeader(uint64_t slots = 16) {
  SegmentHeader h{};
  h.magic = kSegmentMagic;
  h.layoutVersion = kLayoutVersion;
  h.slotSize = kTestSlotSize;
  h.catalogVersion = kCatalog;
  h.slotCount = slots;
  h.generation = 42;
  h.userEpochCount = userEpochCountFor(slots);
  return h;
}

Error attachError(int fd, SegmentSpec expect = {0, kTestSlotSize, kCatalog}) {
  auto v = SegmentView::attach(fd, expect);
  REQUIRE_FALSE(v);
  return v.error();
}

}  // namespace

TEST_SUITE("Segment") {
  TEST_CASE("is created sized, zeroed, with a random generation and rounded slot count") {
    auto a = makeSegment(10);
    auto b = makeSegment(10);
    CHECK(a.slotCount() == 16);
    CHECK(a.slotSize() == kTestSlotSize);
    CHECK(a.size() == segmentSize(16, kTestSlotSize));
    CHECK(a.generation() != 0);
    CHECK(a.generation() != b.generation());
    CHECK(a.header().epoch == 0);
    for (size_t i = 0; i < 16 * kTestSlotSize; ++i) REQUIRE(a.slots()[i] == std::byte{0});
    REQUIRE(a.userEpochCount() == userEpochCountFor(16));
    for (size_t i = 0; i < a.userEpochCount(); ++i) REQUIRE(a.userEpochs()[i] == 0);
    // The table is the segment's last bytes, right after the slots.
    CHECK(reinterpret_cast<std::byte*>(a.userEpochs() + a.userEpochCount()) ==
          a.slots() - kSlotsOffset + a.size());
  }

  TEST_CASE("the user epoch table grows with the slot count, from a floor, in powers of two") {
    CHECK(userEpochCountFor(8) == 4096);
    CHECK(userEpochCountFor(uint64_t{1} << 18) == 4096);
    CHECK(userEpochCountFor(uint64_t{1} << 20) == 16384);
    CHECK(userEpochCountFor(kMaxSlotCount) == kMaxSlotCount / 64);
    CHECK(segmentSize(16, kTestSlotSize) == kSlotsOffset + 16 * kTestSlotSize + 4096 * 8);
  }

  TEST_CASE("refuses a bad spec") {
    CHECK_FALSE(Segment::create({0, kTestSlotSize, 1}));
    CHECK_FALSE(Segment::create({kMaxSlotCount + 1, kTestSlotSize, 1}));
    CHECK_FALSE(Segment::create({16, 100, 1}));
    CHECK_FALSE(Segment::create({16, 0, 1}));
  }

  TEST_CASE("is sealed, and the daemon's mapping stays writable after sealing") {
    auto seg = makeSegment();
    const int seals = ::fcntl(seg.fd(), F_GET_SEALS);
    CHECK((seals & F_SEAL_SHRINK) != 0);
    CHECK((seals & F_SEAL_GROW) != 0);
    CHECK((seals & F_SEAL_SEAL) != 0);
    CHECK(seg.writeSealed());  // Linux >= 5.1
    if (seg.writeSealed()) CHECK((seals & F_SEAL_FUTURE_WRITE) != 0);
    seg.slots()[5] = std::byte{42};
    CHECK(seg.slots()[5] == std::byte{42});
    CHECK(::ftruncate(seg.fd(), 0) < 0);
  }

  TEST_CASE("the read-only descriptor cannot be mapped writable, and its reader sees updates") {
    auto seg = makeSegment();
    auto ro = seg.openReadOnly();
    REQUIRE(ro);
    CHECK((::fcntl(ro->get(), F_GETFL) & O_ACCMODE) == O_RDONLY);
    CHECK((::fcntl(ro->get(), F_GETFD) & FD_CLOEXEC) != 0);

    errno = 0;
    void* w = ::mmap(nullptr, seg.size(), PROT_READ | PROT_WRITE, MAP_SHARED, ro->get(), 0);
    CHECK(w == MAP_FAILED);
    CHECK(errno == EACCES);

    auto view = SegmentView::attach(ro->get(), {0, kTestSlotSize, kCatalog});
    REQUIRE(view);
    CHECK(view->generation() == seg.generation());
    CHECK(view->slots()[7] == std::byte{0});
    seg.slots()[7] = std::byte{0x5A};
    CHECK(view->slots()[7] == std::byte{0x5A});

    // Nor can the reader's own mapping be turned writable.
    errno = 0;
    CHECK(::mprotect(const_cast<SegmentHeader*>(&view->header()), view->size(),
                     PROT_READ | PROT_WRITE) < 0);
    CHECK(errno == EACCES);
  }

  TEST_CASE("a client that reopens its descriptor read-write still cannot write") {
    auto seg = makeSegment();
    if (!seg.writeSealed()) return;  // documented: kernels before 5.1
    auto ro = seg.openReadOnly();
    REQUIRE(ro);
    const std::string path = "/proc/self/fd/" + std::to_string(ro->get());
    UniqueFd rw(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!rw) return;  // refused outright: even better
    errno = 0;
    CHECK(::mmap(nullptr, seg.size(), PROT_READ | PROT_WRITE, MAP_SHARED, rw.get(), 0) ==
          MAP_FAILED);
    CHECK(errno == EPERM);
    CHECK(::pwrite(rw.get(), "x", 1, 0) < 0);
    CHECK(::ftruncate(rw.get(), 0) < 0);
  }

  TEST_CASE("attach accepts what the daemon made") {
    auto seg = makeSegment(64);
    CHECK(SegmentView::attach(seg.fd(), {64, kTestSlotSize, kCatalog}));
    CHECK(SegmentView::attach(seg.fd(), {0, kTestSlotSize, kCatalog}));
    UniqueFd good = craft(validHeader(), segmentSize(16, kTestSlotSize));
    CHECK(SegmentView::attach(good.get(), {0, kTestSlotSize, kCatalog}));
  }

  TEST_CASE("attach refuses a bad magic") {
    auto h = validHeader();
    h.magic ^= 1;
    UniqueFd fd = craft(h, segmentSize(16, kTestSlotSize));
    auto e = attachError(fd.get());
    CHECK(e.code == -EPROTO);
    CHECK(e.message.find("magic") != std::string::npos);
  }

  TEST_CASE("attach refuses another layout version") {
    auto h = validHeader();
    h.layoutVersion = kLayoutVersion + 1;
    UniqueFd fd = craft(h, segmentSize(16, kTestSlotSize));
    CHECK(attachError(fd.get()).message.find("layout version") != std::string::npos);
    // A daemon of layout 1 (no user epoch table; its file is that much shorter) is refused for
    // its version, before its size is looked at.
    h.layoutVersion = 1;
    UniqueFd v1 = craft(h, kSlotsOffset + 16 * kTestSlotSize);
    auto e = attachError(v1.get());
    CHECK(e.code == -EPROTO);
    CHECK(e.message.find("layout version 1, expected") != std::string::npos);
  }

  TEST_CASE("attach refuses a user epoch count that does not follow from the slot count") {
    for (uint64_t bad : {uint64_t{0}, uint64_t{4095}, uint64_t{8192}, ~uint64_t{0}}) {
      auto h = validHeader();
      h.userEpochCount = bad;
      UniqueFd fd = craft(h, segmentSize(16, kTestSlotSize));
      auto e = attachError(fd.get());
      CHECK(e.code == -EPROTO);
      CHECK(e.message.find("user epoch count") != std::string::npos);
    }
  }

  TEST_CASE("attach refuses a segment built for another catalog") {
    auto seg = makeSegment();
    auto e = attachError(seg.fd(), {0, kTestSlotSize, kCatalog + 1});
    CHECK(e.code == -EPROTO);
    CHECK(e.message.find("catalog version") != std::string::npos);
  }

  TEST_CASE("attach refuses another slot size or slot count") {
    auto seg = makeSegment();
    CHECK(attachError(seg.fd(), {0, 2 * kTestSlotSize, kCatalog}).message.find("slot size") !=
          std::string::npos);
    CHECK(attachError(seg.fd(), {32, kTestSlotSize, kCatalog}).message.find("slot count") !=
          std::string::npos);
    auto h = validHeader(12);  // not a power of two
    UniqueFd fd = craft(h, segmentSize(12, kTestSlotSize));
    CHECK(attachError(fd.get()).message.find("slot count") != std::string::npos);
    h = validHeader(kMaxSlotCount * 2);
    UniqueFd huge = craft(h, segmentSize(16, kTestSlotSize));
    CHECK(attachError(huge.get()).message.find("slot count") != std::string::npos);
  }

  TEST_CASE("attach refuses a truncated or oversized file") {
    UniqueFd shortFd = craft(validHeader(), segmentSize(16, kTestSlotSize) - kTestSlotSize);
    CHECK(attachError(shortFd.get()).message.find("size") != std::string::npos);
    UniqueFd longFd = craft(validHeader(), segmentSize(16, kTestSlotSize) + 4096);
    CHECK(attachError(longFd.get()).message.find("size") != std::string::npos);
    UniqueFd tiny = craft(validHeader(), 32);
    CHECK(attachError(tiny.get()).message.find("header") != std::string::npos);
    UniqueFd empty = craft(validHeader(), 0);
    CHECK(attachError(empty.get()).code == -EPROTO);
  }

  TEST_CASE("attach refuses a file that could shrink under the mapping") {
    UniqueFd fd = craft(validHeader(), segmentSize(16, kTestSlotSize), /*seal=*/false);
    CHECK(attachError(fd.get()).message.find("sealed") != std::string::npos);
  }

  TEST_CASE("attach refuses a descriptor that is not a memfd") {
    UniqueFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    REQUIRE(fd);
    CHECK_FALSE(SegmentView::attach(fd.get(), {0, kTestSlotSize, kCatalog}));
  }
}
