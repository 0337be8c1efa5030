// Clock: the wall clock in Unix seconds, injectable so that the token model is testable.
#pragma once

#include <cstdint>
#include <ctime>

namespace tokend {

inline int64_t unixNow() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec;
}

inline int64_t monotonicNanos() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// The clock the daemon and tools read: the wall clock, moved by TOKEND_CLOCK_OFFSET (seconds)
// only in builds configured with -Dtest_clock=true. libtokend reads unixNow() instead.
int64_t clockNow();
// clockNow() - unixNow(): 0 unless a test build was given TOKEND_CLOCK_OFFSET.
int64_t clockOffset();
// Whether this build honours TOKEND_CLOCK_OFFSET (-Dtest_clock=true).
bool testClockCompiledIn();

}  // namespace tokend
