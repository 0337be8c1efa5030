// Tests for tokenload's log-linear latency histogram: bucket arithmetic, percentiles, merging.
#include "tools/load_histogram.h"

#include <doctest/doctest.h>

#include <cstdint>
#include <random>

using tokend::tools::LatencyHistogram;

TEST_SUITE("LatencyHistogram") {
  TEST_CASE("buckets tile the whole u64 range without gaps or overlaps") {
    CHECK(LatencyHistogram::bucketLow(0) == 0);
    for (size_t i = 0; i + 1 < LatencyHistogram::kBucketCount; ++i) {
      CAPTURE(i);
      REQUIRE(LatencyHistogram::bucketHigh(i) + 1 == LatencyHistogram::bucketLow(i + 1));
      REQUIRE(LatencyHistogram::bucketIndex(LatencyHistogram::bucketLow(i)) == i);
      REQUIRE(LatencyHistogram::bucketIndex(LatencyHistogram::bucketHigh(i)) == i);
    }
    CHECK(LatencyHistogram::bucketHigh(LatencyHistogram::kBucketCount - 1) == UINT64_MAX);
    CHECK(LatencyHistogram::bucketIndex(UINT64_MAX) == LatencyHistogram::kBucketCount - 1);
  }

  TEST_CASE("small values are exact and large ones are within 1/64 of themselves") {
    for (uint64_t v = 0; v < 128; ++v) {
      size_t i = LatencyHistogram::bucketIndex(v);
      CHECK(LatencyHistogram::bucketLow(i) == v);
      CHECK(LatencyHistogram::bucketHigh(i) == v);
    }
    for (size_t i = 128; i < LatencyHistogram::kBucketCount; ++i) {
      uint64_t low = LatencyHistogram::bucketLow(i);
      uint64_t width = LatencyHistogram::bucketHigh(i) - low;  // + 1 overflows at the top
      CAPTURE(i);
      REQUIRE(width < low / 64 + 1);
    }
  }

  TEST_CASE("percentiles of a known distribution are within the histogram's precision") {
    LatencyHistogram h;
    for (uint64_t v = 1; v <= 100000; ++v) h.record(v * 1000);  // 1 us .. 100 ms in ns
    CHECK(h.count() == 100000);
    CHECK(h.min() == 1000);
    CHECK(h.max() == 100000000);
    CHECK(h.mean() == doctest::Approx(50000500.0));
    auto near = [](uint64_t got, double want) {
      // Never below the true value (upper bucket edge), never more than 1/64 above it.
      return static_cast<double>(got) >= want && static_cast<double>(got) <= want * (1 + 1.0 / 64);
    };
    CHECK(near(h.percentile(50), 50000000));
    CHECK(near(h.percentile(90), 90000000));
    CHECK(near(h.percentile(99), 99000000));
    CHECK(near(h.percentile(99.9), 99900000));
    CHECK(h.percentile(100) == 100000000);
    CHECK(h.percentile(0) == 1000);
  }

  TEST_CASE("a single value is every percentile") {
    LatencyHistogram h;
    h.record(123456);
    for (double q : {0.0, 50.0, 99.9, 100.0}) CHECK(h.percentile(q) == 123456);
  }

  TEST_CASE("an empty histogram reports zeros") {
    LatencyHistogram h;
    CHECK(h.count() == 0);
    CHECK(h.min() == 0);
    CHECK(h.max() == 0);
    CHECK(h.mean() == 0.0);
    CHECK(h.percentile(99) == 0);
  }

  TEST_CASE("merging per-thread histograms equals recording everything in one") {
    std::mt19937_64 rng(42);
    std::lognormal_distribution<double> latency(10.0, 1.5);
    LatencyHistogram a, b, all;
    for (int i = 0; i < 50000; ++i) {
      auto v = static_cast<uint64_t>(latency(rng));
      (i % 3 == 0 ? a : b).record(v);
      all.record(v);
    }
    LatencyHistogram merged;
    merged.merge(a);
    merged.merge(b);
    CHECK(merged.count() == all.count());
    CHECK(merged.min() == all.min());
    CHECK(merged.max() == all.max());
    CHECK(merged.mean() == doctest::Approx(all.mean()));
    for (double q : {50.0, 90.0, 99.0, 99.9}) CHECK(merged.percentile(q) == all.percentile(q));
    merged.reset();
    CHECK(merged.count() == 0);
  }

  TEST_CASE("recordN counts a value n times") {
    LatencyHistogram h;
    h.recordN(10, 99);
    h.recordN(1000000, 1);
    h.recordN(5, 0);
    CHECK(h.count() == 100);
    CHECK(h.min() == 10);
    CHECK(h.percentile(99) == 10);
    CHECK(h.percentile(99.5) >= 1000000);
  }
}
