// Metrics: request counters by protocol and reason, a latency histogram, and the Prometheus
// text rendering of /metrics. Workers count into their own shard (no shared cache lines on the
// hot path); a scrape sums the shards.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "verifier/reason.h"

namespace tokend::daemon {

enum class Proto : uint8_t { Text = 0, Http = 1, Binary = 2 };
inline constexpr int kProtoCount = 3;

// Log-linear latency buckets in nanoseconds: 4 per power of two from 256 ns to ~1 s.
inline constexpr int kLatencyBuckets = 4 * 22;
int latencyBucket(uint64_t nanos);
uint64_t latencyBucketUpper(int bucket);

struct alignas(64) MetricsShard {
  // Relaxed everywhere: these are statistics; a scrape may see a count a moment old.
  std::array<std::atomic<uint64_t>, kProtoCount * verifier::kReasonCount> requests{};
  std::array<std::atomic<uint64_t>, kLatencyBuckets> latency{};
  std::atomic<uint64_t> latencySumNanos{0};
  std::atomic<uint64_t> cacheDecided{0};  // verdicts decided from the shared-memory cache
  std::atomic<uint64_t> dbDecided{0};     // verdicts that needed the key database
  std::atomic<uint64_t> protocolErrors{0};

  void count(Proto p, verifier::Reason r, uint64_t nanos) {
    requests[static_cast<int>(p) * verifier::kReasonCount + static_cast<int>(r)].fetch_add(
        1, std::memory_order_relaxed);
    latency[latencyBucket(nanos)].fetch_add(1, std::memory_order_relaxed);
    latencySumNanos.fetch_add(nanos, std::memory_order_relaxed);
  }
};

inline constexpr int kUseRefusalCount = 6;  // daemon::UseRefusal's values

class Metrics {
 public:
  explicit Metrics(int shards) : count_(shards + 1), shards_(new MetricsShard[shards + 1]) {}
  // Shard `i` for worker i; the last one for everything else (management, tests).
  MetricsShard& shard(int i) { return shards_[i < count_ ? i : count_ - 1]; }
  int shardCount() const { return count_; }
  const MetricsShard& at(int i) const { return shards_[i]; }

  std::atomic<uint64_t> invalidationRounds{0};
  std::atomic<uint64_t> invalidatedEntries{0};
  std::atomic<uint64_t> invalidationGaps{0};
  std::atomic<uint64_t> writebackBatches{0};
  std::atomic<uint64_t> writebackTokens{0};
  std::atomic<uint64_t> writebackErrors{0};
  std::atomic<uint64_t> usageReports{0};
  std::atomic<uint64_t> usageAccepted{0};  // report entries accepted
  // Report entries refused, by daemon::UseRefusal (service.h).
  std::array<std::atomic<uint64_t>, kUseRefusalCount> usageRefused{};
  std::atomic<uint64_t> shmGrants{0};
  std::atomic<uint64_t> shmRefusals{0};

 private:
  int count_;
  std::unique_ptr<MetricsShard[]> shards_;
};

}  // namespace tokend::daemon
