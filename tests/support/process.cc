// Test support: processes and temporary directories.
#include "tests/support/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace tokend::test {
namespace {

void execWith(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
  for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  execv(args[0], args.data());
  _exit(127);
}

int decode(int wstatus) {
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return -1;
}

}  // namespace

RunResult run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
              const std::string& input) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    throw std::runtime_error("pipe failed");
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    execWith(argv, env);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  signal(SIGPIPE, SIG_IGN);
  if (!input.empty()) {
    ssize_t ignored = write(in[1], input.data(), input.size());
    (void)ignored;
  }
  close(in[1]);
  RunResult r;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open = 2;
  char buf[65536];
  while (open > 0) {
    if (poll(fds, 2, 60000) <= 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);
  int ws = 0;
  waitpid(pid, &ws, 0);
  r.status = decode(ws);
  return r;
}

Child spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
            const std::string& dir) {
  Child c;
  static int counter = 0;
  ++counter;
  c.errPath = dir + "/child" + std::to_string(counter) + ".err";
  c.outPath = dir + "/child" + std::to_string(counter) + ".out";
  c.pid = fork();
  if (c.pid == 0) {
    int e = open(c.errPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int o = open(c.outPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(e, 2);
    dup2(o, 1);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    execWith(argv, env);
  }
  return c;
}

int Child::stop(int sig) {
  if (pid <= 0) return -1;
  kill(pid, sig);
  int ws = 0;
  waitpid(pid, &ws, 0);
  pid = -1;
  return decode(ws);
}

std::string Child::err() const {
  return readFile(errPath);
}
std::string Child::out() const {
  return readFile(outPath);
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/tokend-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string programPath(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) throw std::runtime_error(std::string("set ") + name + " to the program's path");
  return v;
}

std::string readFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

long statusKiB(pid_t pid, const char* field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  const std::string prefix = std::string(field) + ":";
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(prefix, 0) == 0) return std::strtol(line.c_str() + prefix.size(), nullptr, 10);
  }
  return -1;
}

bool sanitized(pid_t pid) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find("libasan") != std::string::npos || line.find("libtsan") != std::string::npos)
      return true;
  }
  return false;
}

bool waitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

RunResult runWithin(const std::vector<std::string>& argv, const std::string& dir,
                    std::chrono::milliseconds limit) {
  Child c = spawn(argv, {}, dir);
  int ws = 0;
  RunResult r;
  if (waitFor([&] { return waitpid(c.pid, &ws, WNOHANG) == c.pid; }, limit)) {
    r.status = decode(ws);
    c.pid = -1;
  } else {
    c.stop(SIGKILL);
  }
  r.out = c.out();
  r.err = c.err();
  return r;
}

std::chrono::milliseconds revocationBound(pid_t daemon) {
  return std::chrono::milliseconds(sanitized(daemon) ? 200 : 10);
}

namespace {

// The second field of a schedstat line: nanoseconds spent runnable but not running.
long long runQueueWait(const std::string& path) {
  if (path.empty()) return 0;
  std::ifstream in(path);
  long long onCpu = 0, waiting = 0;
  if (!(in >> onCpu >> waiting)) return 0;
  return waiting;
}

// Each CPU's steal time in clock ticks (/proc/stat's "cpuN" lines, the eighth number).
std::vector<long long> stealTicks() {
  std::ifstream in("/proc/stat");
  std::vector<long long> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("cpu", 0) != 0 || line.size() < 4 ||
        !std::isdigit(static_cast<unsigned char>(line[3])))
      continue;
    std::istringstream fields(line);
    std::string name;
    long long v[8] = {};
    fields >> name;
    for (long long& x : v) fields >> x;
    out.push_back(fields ? v[7] : 0);
  }
  return out;
}

}  // namespace

Starvation::Starvation(pid_t pid, const std::string& threadName) {
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  for (const auto& t : std::filesystem::directory_iterator(tasks, ec)) {
    std::string comm = readFile(t.path().string() + "/comm");
    while (!comm.empty() && comm.back() == '\n') comm.pop_back();
    if (comm == threadName) {
      schedstat_ = t.path().string() + "/schedstat";
      break;
    }
  }
  waitAtStart_ = runQueueWait(schedstat_);
  stealAtStart_ = stealTicks();
}

std::chrono::nanoseconds Starvation::sinceStart() const {
  long long stolen = 0;
  const std::vector<long long> now = stealTicks();
  for (size_t i = 0; i < now.size() && i < stealAtStart_.size(); ++i)
    stolen = std::max(stolen, now[i] - stealAtStart_[i]);
  // A tick's worth more when any was seen: the counter shows whole ticks, the steal was more.
  if (stolen > 0) ++stolen;
  const long long tickNanos = 1000000000LL / ::sysconf(_SC_CLK_TCK);
  return std::chrono::nanoseconds(runQueueWait(schedstat_) - waitAtStart_ + stolen * tickNanos);
}

}  // namespace tokend::test
