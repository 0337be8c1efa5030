// Micro-benchmarks of libtokend against a live tokend, side by side: SHA-256 of one secret (the
// floor every verification pays), the shared-memory fast path (a hit), the socket at depth 1,
// and the socket batched (pipelined). Starts the built tokend (env TOKEND) in a temporary dir.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <tokend/client.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "verifier/token.h"

namespace {

constexpr const char* kPermission = "workspace:read";
constexpr const char* kObject = "workspace:3f2504e0-4f89-41d3-9a0c-0305e82c3301";
constexpr size_t kBatch = 256;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "client_bench: %s\n", what.c_str());
  std::exit(1);
}

// One tokend for the whole run, stopped at exit.
struct Daemon {
  std::string dir;
  std::string socket;
  std::string token;
  pid_t pid = -1;

  Daemon() {
    const char* bin = std::getenv("TOKEND");
    if (bin == nullptr)
      die("set TOKEND to the built tokend (meson sets it for `meson test --benchmark`)");
    char tmpl[] = "/tmp/tokend-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) die("mkdtemp failed");
    dir = tmpl;
    socket = dir + "/data/tokend.sock";
    const std::string out = dir + "/out", err = dir + "/err";
    pid = ::fork();
    if (pid == 0) {
      int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(o, 1);
      ::dup2(e, 2);
      const std::string data = dir + "/data";
      ::execl(bin, bin, "--data-dir", data.c_str(), "--log-level", "warn", nullptr);
      _exit(127);
    }
    // The admin's first token is left in <data>/first-token once the database is ready; open
    // retries until the socket listens.
    for (int i = 0; i < 1000 && token.empty(); ++i) {
      std::ifstream f(dir + "/data/first-token");
      std::getline(f, token);
      if (token.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (token.empty()) die("tokend left no first token; see " + err);
  }
  ~Daemon() {
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

Daemon& daemon() {
  static Daemon d;
  return d;
}

tokend_client* open(unsigned flags) {
  tokend_client* c = nullptr;
  int rc = -ENOENT;
  for (int i = 0; i < 500; ++i) {
    rc = tokend_open_ex(daemon().socket.c_str(), flags, &c);
    if (rc != -ENOENT && rc != -ECONNREFUSED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (rc < 0) die(std::string("tokend_open: ") + std::strerror(-rc));
  return c;
}

void BM_Sha256OfSecret(benchmark::State& state) {
  tokend::verifier::Sha256 sha;
  const std::string secret = daemon().token.substr(tokend::verifier::kTokenIdLength + 1);
  for (auto _ : state) {
    auto d = sha.digest(secret);
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Sha256OfSecret);

void BM_FastPathHit(benchmark::State& state) {
  tokend_client* c = open(0);
  tokend_result r;
  const std::string& tok = daemon().token;
  for (int i = 0; i < 1000; ++i) {
    tokend_verify(c, tok.c_str(), kPermission, kObject, nullptr, &r);
    if (r.via_shm) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!r.via_shm || !r.allowed) state.SkipWithError("the token is not answered from shared memory");
  for (auto _ : state) {
    tokend_verify(c, tok.c_str(), kPermission, kObject, nullptr, &r);
    benchmark::DoNotOptimize(r);
  }
  if (!r.via_shm || !r.allowed) state.SkipWithError("the last answer did not come from memory");
  state.SetItemsProcessed(state.iterations());
  tokend_close(c);
}
BENCHMARK(BM_FastPathHit);

// As above with a different object each time: the library remembers the parse of the last
// (permission, object, owner), so this is the cost when every request names a new object.
void BM_FastPathHitNewObject(benchmark::State& state) {
  tokend_client* c = open(0);
  tokend_result r;
  const std::string& tok = daemon().token;
  std::vector<std::string> objects;
  for (int i = 0; i < 1024; ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "workspace:3f2504e0-4f89-41d3-9a0c-%012x", i);
    objects.emplace_back(buf);
  }
  for (int i = 0; i < 1000; ++i) {
    tokend_verify(c, tok.c_str(), kPermission, kObject, nullptr, &r);
    if (r.via_shm) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  size_t i = 0;
  for (auto _ : state) {
    tokend_verify(c, tok.c_str(), kPermission, objects[i++ & 1023].c_str(), nullptr, &r);
    benchmark::DoNotOptimize(r);
  }
  if (!r.via_shm || !r.allowed) state.SkipWithError("the last answer did not come from memory");
  state.SetItemsProcessed(state.iterations());
  tokend_close(c);
}
BENCHMARK(BM_FastPathHitNewObject);

void BM_SocketDepth1(benchmark::State& state) {
  tokend_client* c = open(TOKEND_OPEN_NO_SHM);
  tokend_result r;
  const std::string& tok = daemon().token;
  for (auto _ : state) {
    if (tokend_verify(c, tok.c_str(), kPermission, kObject, nullptr, &r) != 0) {
      state.SkipWithError("tokend_verify failed");
      break;
    }
    benchmark::DoNotOptimize(r);
  }
  if (!r.allowed || r.via_shm) state.SkipWithError("unexpected answer");
  state.SetItemsProcessed(state.iterations());
  tokend_close(c);
}
BENCHMARK(BM_SocketDepth1)->UseRealTime();

void BM_SocketBatched(benchmark::State& state) {
  tokend_client* c = open(TOKEND_OPEN_NO_SHM);
  const std::string& tok = daemon().token;
  std::vector<tokend_request> reqs(kBatch,
                                   tokend_request{tok.c_str(), kPermission, kObject, nullptr});
  std::vector<tokend_result> res(kBatch);
  for (auto _ : state) {
    if (tokend_verify_batch(c, reqs.data(), reqs.size(), res.data()) != 0) {
      state.SkipWithError("tokend_verify_batch failed");
      break;
    }
    benchmark::DoNotOptimize(res.data());
  }
  if (!res.back().allowed) state.SkipWithError("unexpected answer");
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(kBatch));
  state.counters["batch"] = kBatch;
  tokend_close(c);
}
BENCHMARK(BM_SocketBatched)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
