// Test support: the counting global operator new and its matching deletes.
#include "tests/support/alloc_counter.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
// Relaxed: a counter read by the test thread after the work it measures has been joined.
std::atomic<long> gAllocations{0};
}  // namespace

namespace tokend::test {
long allocations() {
  return gAllocations.load(std::memory_order_relaxed);
}
}  // namespace tokend::test

// noinline: once inlined, GCC 12 pairs malloc() and free() with the other side's operator and
// warns (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t n) {
  gAllocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void* operator new[](std::size_t n) {
  return ::operator new(n);
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p) noexcept {
  std::free(p);
}
[[gnu::noinline]] void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
