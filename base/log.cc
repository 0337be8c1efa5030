// Logging to stderr: a whole line per write(2) so that threads never interleave within a line.
#include "base/log.h"

#include <unistd.h>

#include <atomic>
#include <ctime>
#include <string>

namespace tokend::log {
namespace {
// Relaxed: the level is a hint read on every log call; a stale value for a moment is harmless.
std::atomic<int> gLevel{static_cast<int>(Level::Info)};
constexpr const char* kNames[] = {"debug", "info", "warn", "error"};
}  // namespace

void setLevel(Level l) { gLevel.store(static_cast<int>(l), std::memory_order_relaxed); }
Level level() { return static_cast<Level>(gLevel.load(std::memory_order_relaxed)); }

void write(Level l, std::string_view msg) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  gmtime_r(&ts.tv_sec, &t);
  std::string line = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {} {}\n",
                                 t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min,
                                 t.tm_sec, ts.tv_nsec / 1000000, kNames[static_cast<int>(l)], msg);
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

}  // namespace tokend::log
