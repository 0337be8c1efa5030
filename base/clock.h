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

// The clock the daemon and tools read. Tests set TOKEND_TEST_CLOCK_OFFSET (seconds) to move it.
int64_t clockNow();

}  // namespace tokend
