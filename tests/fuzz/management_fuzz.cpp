// libFuzzer target: the management API (SPEC 8) behind an authenticated caller: routing, JSON
// bodies, authorisation and the key-database writes they lead to, on a real LMDB in a temp dir.
//
// Input: byte 0 picks the caller (an owner, a member, a member's token without api_key, or a
// bogus token); then "METHOD /path?query" up to the first '\n'; the rest is the JSON body. The
// database is rebuilt every kRunsPerWorld inputs so it stays small.
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "base/clock.h"
#include "base/log.h"
#include "daemon/http.h"
#include "daemon/management.h"
#include "daemon/service.h"
#include "shm/cache.h"
#include "tests/fuzz/fuzz_support.h"
#include "verifier/catalog.h"
#include "verifier/manage.h"

using namespace tokend;
using namespace tokend::daemon;
using tokend::fuzz::require;

namespace {

constexpr int kRunsPerWorld = 2000;

struct World {
  std::string dir;
  std::unique_ptr<verifier::KeyDb> db;
  std::unique_ptr<verifier::Manager> manager;
  std::unique_ptr<shm::Cache> cache;
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<Service> service;
  std::unique_ptr<Service::Worker> worker;
  std::unique_ptr<Management> management;
  std::string tokens[4];

  World() {
    char tmpl[] = "/tmp/tokend-fuzz-mgmt-XXXXXX";
    require(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    auto d = verifier::KeyDb::open(dir + "/data");
    require(d.has_value());
    db = std::move(*d);
    manager = std::make_unique<verifier::Manager>(*db, verifier::LifetimeConfig{});
    const int64_t now = clockNow();
    auto boss = manager->createUser("boss", {"owner"}, now);
    auto mia = manager->createUser("mia", {}, now);
    require(boss && mia);
    verifier::CreateTokenRequest r;
    r.user = boss->id;
    r.name = "all";
    auto t0 = manager->createToken(r, now);
    r.user = mia->id;
    auto t1 = manager->createToken(r, now);
    r.name = "narrow";
    r.scopes = {"workspace:read"};
    auto t2 = manager->createToken(r, now);
    require(t0 && t1 && t2);
    tokens[0] = t0->key;
    tokens[1] = t1->key;
    tokens[2] = t2->key;
    tokens[3] = "AAAAAAAAAA-0123456789012345678901";
    auto c = shm::Cache::create({1024, verifier::catalog::version()});
    require(c.has_value());
    cache = std::make_unique<shm::Cache>(std::move(*c));
    metrics = std::make_unique<Metrics>(1);
    service = std::make_unique<Service>(*db, *cache, *metrics, ServiceOptions{});
    auto w = service->makeWorker(0);
    require(w.has_value());
    worker = std::move(*w);
    management = std::make_unique<Management>(*service, *manager);
  }
  ~World() {
    management.reset();
    service.reset();  // before its workers: it flushes their uses
    worker.reset();
    metrics.reset();
    cache.reset();
    manager.reset();
    db.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

std::unique_ptr<World> world;
int runs = 0;

void cleanup() {
  world.reset();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  log::setLevel(log::Level::Error);
  std::atexit(cleanup);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > kMaxHttpBody) return 0;
  if (!world || ++runs % kRunsPerWorld == 0) {
    world.reset();
    world = std::make_unique<World>();
  }
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  size_t nl = in.find('\n');
  std::string_view line = in.substr(0, nl);
  std::string_view body = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
  size_t sp = line.find(' ');
  std::string_view method = sp == std::string_view::npos ? "GET" : line.substr(0, sp);
  std::string_view target = sp == std::string_view::npos ? line : line.substr(sp + 1);

  std::string request = std::string(method) + " /api/v2/" + std::string(target) +
                        " HTTP/1.1\r\nCoder-Session-Token: " + world->tokens[data[0] % 4] +
                        "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
                        std::string(body);
  static HttpRequest req;
  HttpParse p = parseHttpRequest(request, req);
  if (p.status != ParseStatus::Complete) return 0;
  static DecodeBuffer scratch;
  scratch.reset();
  std::string out;
  world->management->handle(*world->worker, req, scratch, out);

  // One whole response with a JSON body (none for a 204: expire and delete), and never the
  // answer of an unexpected exception.
  require(out.starts_with("HTTP/1.1 "));
  int status = std::atoi(out.c_str() + 9);
  require(status >= 200 && status < 600);
  size_t end = out.find("\r\n\r\n");
  require(end != std::string::npos);
  const std::string answer = out.substr(end + 4);
  if (status == 204) {
    require(answer.empty());
    return 0;
  }
  auto json = nlohmann::json::parse(answer, nullptr, false);
  require(!json.is_discarded());
  // The backstop's answer, exactly (a refused name may echo the words themselves).
  require(answer != R"({"detail":"unexpected exception","message":"Internal error."})");
  return 0;
}
