// Latency bucketing for the metrics histogram.
#include "daemon/metrics.h"

#include <bit>

namespace tokend::daemon {

int latencyBucket(uint64_t nanos) {
  if (nanos < 256) return 0;
  int exp = 63 - std::countl_zero(nanos);                // 8 .. 63
  int sub = static_cast<int>((nanos >> (exp - 2)) & 3);  // the next two bits: 4 per octave
  int b = (exp - 8) * 4 + sub;
  return b < kLatencyBuckets ? b : kLatencyBuckets - 1;
}

uint64_t latencyBucketUpper(int b) {
  int exp = b / 4 + 8, sub = b % 4;
  return (uint64_t{1} << exp) + (uint64_t(sub + 1) << (exp - 2));
}

}  // namespace tokend::daemon
