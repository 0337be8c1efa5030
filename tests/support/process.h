// Test support: run a program and capture its output, make and remove temporary directories.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace tokend::test {

struct RunResult {
  int status = -1;  // exit code, or 128 + signal
  std::string out;
  std::string err;
};

// Runs argv[0] (a path) with argv, extra environment variables, and optional stdin text.
RunResult run(const std::vector<std::string>& argv,
              const std::map<std::string, std::string>& env = {}, const std::string& input = {});

// A program started in the background with its stderr captured to a file.
struct Child {
  pid_t pid = -1;
  std::string errPath;
  std::string outPath;
  // Sends `sig` and waits; returns the exit status as run() reports it.
  int stop(int sig);
  std::string err() const;
  std::string out() const;
};
Child spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
            const std::string& dir);

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The environment variable `name`, which the Meson test definition sets to a built program.
std::string programPath(const char* name);

std::string readFile(const std::string& path);

// Polls `cond` every millisecond until it holds (true) or `limit` has passed (false).
bool waitFor(const std::function<bool()>& cond,
             std::chrono::milliseconds limit = std::chrono::seconds(5));

// Runs argv (stdin /dev/null, output to files in `dir`) and waits at most `limit` for it to end;
// one still running then is killed and reported with status -1 (a program expected to refuse to
// start that starts instead fails the test rather than hanging it).
RunResult runWithin(const std::vector<std::string>& argv, const std::string& dir,
                    std::chrono::milliseconds limit = std::chrono::seconds(10));

// A "<field>: <n> kB" line of /proc/<pid>/status (VmRSS, RssAnon, ...), in KiB; -1 when it
// cannot be read. RssAnon is the heap and stacks, without mapped files such as the database.
long statusKiB(pid_t pid, const char* field);
inline long rssKiB(pid_t pid) {
  return statusKiB(pid, "VmRSS");
}

// Whether a running process has a sanitizer runtime mapped (ASan or TSan): its memory figures
// then include the runtime's quarantine and shadow, and its timing is several times slower.
bool sanitized(pid_t pid);

// How long after a revocation commits the test lets tokend go on answering OK: SPEC 6's 10 ms,
// or 200 ms when `daemon` runs under a sanitizer runtime (there the tests check the ordering, not
// the figure). Add Starvation's figure: time the machine did not give tokend is not tokend's.
std::chrono::milliseconds revocationBound(pid_t daemon);

// Time the machine kept a thread from running since construction: the thread's wait on the run
// queue (/proc/<pid>/task/<tid>/schedstat, the guest's scheduler) plus the steal time of the CPU
// that lost the most to the host (/proc/stat: a virtual machine's vCPU taken away; that counter
// moves in 10 ms clock ticks, so a tick is added when it moved, and less than a tick can go
// unseen). For tokend's changelog watcher ("tokend-watcher"): on a shared two-core machine it can
// be left runnable, or its vCPU descheduled, for longer than SPEC 6's 10 ms, and a revocation then
// shows late through no fault of tokend's. No thread of that name: its run-queue part is zero.
class Starvation {
 public:
  Starvation(pid_t pid, const std::string& threadName);
  std::chrono::nanoseconds sinceStart() const;
  bool threadFound() const { return !schedstat_.empty(); }

 private:
  std::string schedstat_;  // the thread's schedstat path; empty when not found
  long long waitAtStart_ = 0;
  std::vector<long long> stealAtStart_;
};

}  // namespace tokend::test
