// LatencyHistogram: bucket arithmetic, percentiles and merging.
#include "tools/load_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace tokend::tools {

size_t LatencyHistogram::bucketIndex(uint64_t v) {
  if (v < kSubBuckets) return static_cast<size_t>(v);
  // shift >= 1: keep the top kSubBucketBits bits of v; sub lands in [kHalf, kSubBuckets).
  int shift = (63 - std::countl_zero(v)) - kSubBucketBits + 1;
  uint64_t sub = v >> shift;
  return static_cast<size_t>(shift) * kHalf + static_cast<size_t>(sub);
}

uint64_t LatencyHistogram::bucketLow(size_t i) {
  if (i < kSubBuckets) return i;
  size_t shift = i / kHalf - 1;
  uint64_t sub = i - shift * kHalf;
  return sub << shift;
}

uint64_t LatencyHistogram::bucketHigh(size_t i) {
  if (i < kSubBuckets) return i;
  size_t shift = i / kHalf - 1;
  uint64_t sub = i - shift * kHalf;
  // The last bucket ends at 2^64 - 1; ((sub + 1) << shift) would wrap to 0 there, and 0 - 1 is it.
  return ((sub + 1) << shift) - 1;
}

void LatencyHistogram::recordN(uint64_t value, uint64_t n) {
  if (n == 0) return;
  counts_[bucketIndex(value)] += n;
  count_ += n;
  sum_ += value * n;
  min_ = std::min(min_, value);
  max_ = std::max(max_, value);
}

void LatencyHistogram::merge(const LatencyHistogram& o) {
  for (size_t i = 0; i < kBucketCount; ++i) counts_[i] += o.counts_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  min_ = std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
}

void LatencyHistogram::reset() {
  *this = LatencyHistogram{};
}

uint64_t LatencyHistogram::percentile(double q) const {
  if (count_ == 0) return 0;
  if (q <= 0) return min_;
  q = std::min(q, 100.0);
  auto rank = static_cast<uint64_t>(std::ceil(q / 100.0 * static_cast<double>(count_)));
  rank = std::clamp<uint64_t>(rank, 1, count_);
  uint64_t seen = 0;
  for (size_t i = 0; i < kBucketCount; ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::clamp(bucketHigh(i), min_, max_);
  }
  return max_;
}

}  // namespace tokend::tools
