// Test support: run a program and capture its output, make and remove temporary directories.
#pragma once

#include <sys/types.h>

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

// A "<field>: <n> kB" line of /proc/<pid>/status (VmRSS, RssAnon, ...), in KiB; -1 when it
// cannot be read. RssAnon is the heap and stacks, without mapped files such as the database.
long statusKiB(pid_t pid, const char* field);
inline long rssKiB(pid_t pid) {
  return statusKiB(pid, "VmRSS");
}

// Whether a running process has a sanitizer runtime mapped (ASan or TSan): its memory figures
// then include the runtime's quarantine and shadow, and its timing is several times slower.
bool sanitized(pid_t pid);

}  // namespace tokend::test
