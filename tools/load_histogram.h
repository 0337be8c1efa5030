// LatencyHistogram: tokenload's log-linear latency histogram (HdrHistogram-like), fixed size and
// mergeable across threads.
//
// Values (nanoseconds, but any unit works) below 2^kSubBucketBits are counted exactly. Above, each
// power of two [2^k, 2^(k+1)) is cut into 2^(kSubBucketBits-1) equal sub-buckets, so a value is
// known to within 1/64 of itself whatever its size: 1 us and 10 s latencies keep the same relative
// precision, in 3776 counters (30 KiB), with no allocation after construction. That makes record()
// a few instructions (a count-leading-zeros and an add), cheap enough for every answer, and makes
// merging thread-local histograms an element-wise sum.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace tokend::tools {

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 7;
  static constexpr size_t kSubBuckets = size_t{1} << kSubBucketBits;  // 128
  static constexpr size_t kHalf = kSubBuckets / 2;                    // 64 per power of two
  static constexpr size_t kBucketCount = (64 - kSubBucketBits) * kHalf + kSubBuckets;

  void record(uint64_t value) { recordN(value, 1); }
  void recordN(uint64_t value, uint64_t n);
  // Adds every count of `other` (another thread's histogram) to this one.
  void merge(const LatencyHistogram& other);
  void reset();

  uint64_t count() const { return count_; }
  uint64_t min() const { return count_ ? min_ : 0; }
  uint64_t max() const { return max_; }
  double mean() const { return count_ ? static_cast<double>(sum_) / count_ : 0.0; }

  // The value at percentile q (0..100): the upper edge of the bucket holding the
  // ceil(q/100 * count)-th smallest value, clamped to [min, max], so it never understates a
  // latency; p0 and p100 are the exact minimum and maximum. 0 when empty.
  uint64_t percentile(double q) const;

  // Bucket arithmetic, public for tests.
  static size_t bucketIndex(uint64_t value);
  static uint64_t bucketLow(size_t index);
  static uint64_t bucketHigh(size_t index);  // inclusive

 private:
  std::array<uint64_t, kBucketCount> counts_{};
  uint64_t count_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
  // 2^64 ns is 584 years: no overflow for latencies summed over any bounded run.
  uint64_t sum_ = 0;
};

}  // namespace tokend::tools
