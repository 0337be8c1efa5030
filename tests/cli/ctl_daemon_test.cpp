// CLI tests: tokenctl beside a running tokend: user mode's token sources, and the database size
// cap (--max-db-size) that every process on one database enforces.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <csignal>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/daemon.h"
#include "tests/support/http_client.h"
#include "tests/support/process.h"

using namespace tokend::test;
using Json = nlohmann::json;

namespace {

// A token listing without the fields the daemon's write-back changes on its own schedule (each
// listing is a use of the caller's token): what the same caller sees whichever way it sent it.
Json listingAsOf(const std::string& out) {
  Json j = Json::parse(out);
  for (Json& t : j) {
    t.erase("last_used");
    t.erase("updated_at");
  }
  return j;
}

size_t argvWarnings(const std::string& err) {
  size_t n = 0;
  for (size_t at = err.find("warning: a token on the command line"); at != std::string::npos;
       at = err.find("warning: a token on the command line", at + 1)) {
    ++n;
  }
  return n;
}

void writeFile(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  REQUIRE(f);
  std::fputs(text.c_str(), f);
  std::fclose(f);
  REQUIRE(::chmod(path.c_str(), 0600) == 0);
}

// 128 allow-list entries: a token record of several KiB, so a small cap fills in a few dozen.
std::string bigAllowList(int n) {
  std::string list;
  for (int i = 0; i < 128; ++i) {
    char id[37];
    std::snprintf(id, sizeof id, "%08x-0000-4000-8000-%012x", n, i);
    list += std::string(list.empty() ? "" : ",") + "workspace:" + id;
  }
  return list;
}

// tokenctl --db `dir` args..., with stdin `input`.
RunResult ctlOn(const std::string& dir, std::vector<std::string> args,
                std::map<std::string, std::string> env = {}, const std::string& input = {}) {
  std::vector<std::string> argv = {programPath("TOKENCTL"), "--db", dir};
  argv.insert(argv.end(), args.begin(), args.end());
  env.emplace("TOKEND_MAX_DB_SIZE", "");
  return run(argv, env, input);
}

// Creates big tokens for `user` with tokenctl (no --max-db-size) until one is refused; returns
// the refusal.
RunResult fillWithTokenctl(const std::string& dir, const std::string& user, int& created) {
  for (created = 0; created < 500; ++created) {
    RunResult r = ctlOn(dir, {"tokens", "create", "--user", user, "--name",
                              "fill-" + std::to_string(created), "--allow", bigAllowList(created)});
    if (r.status != 0) return r;
  }
  return {};
}

std::string importLines(int n, const std::string& user) {
  std::string lines;
  for (int i = 0; i < n; ++i) lines += "{\"user\":\"" + user + "\"}\n";
  return lines;
}

long fileSize(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<long>(st.st_size) : -1;
}

}  // namespace

TEST_SUITE("TokenctlUserMode") {
  TEST_CASE("user mode takes TOKEND_TOKEN or --token-file; only --token on argv draws a warning") {
    Daemon d;
    const std::string admin = d.adminToken();
    REQUIRE(admin.size() == 33);
    const std::string bin = programPath("TOKENCTL");
    auto user = [&](std::vector<std::string> args, std::map<std::string, std::string> env = {},
                    const std::string& input = {}) {
      std::vector<std::string> argv = {bin, "--socket", d.socket()};
      argv.insert(argv.end(), args.begin(), args.end());
      env.emplace("TOKEND_DB", "");
      env.emplace("TOKEND_TOKEN", "");
      return run(argv, env, input);
    };

    RunResult env = user({"tokens", "list", "-o", "json"}, {{"TOKEND_TOKEN", admin}});
    CHECK(env.status == 0);
    CHECK(env.err.empty());
    CHECK(Json::parse(env.out).is_array());

    const std::string file = d.dir() / "token";
    writeFile(file, admin + "\n");
    RunResult fromFile = user({"--token-file", file, "tokens", "list", "-o", "json"});
    CHECK(fromFile.status == 0);
    CHECK(fromFile.err.empty());
    CHECK(listingAsOf(fromFile.out) == listingAsOf(env.out));
    // The file wins over the environment.
    RunResult both = user({"--token-file", file, "tokens", "list", "-o", "json"},
                          {{"TOKEND_TOKEN", "AAAAAAAAAA-0123456789012345678901"}});
    CHECK(both.status == 0);

    RunResult argv = user({"--token", admin, "tokens", "list", "-o", "json"});
    CHECK(argv.status == 0);
    CHECK(argvWarnings(argv.err) == 1);
    CHECK(argv.err.find(admin) == std::string::npos);
    CHECK(listingAsOf(argv.out) == listingAsOf(env.out));

    RunResult twice = user({"--token", admin, "--token-file", file, "tokens", "list"});
    CHECK(twice.status == 2);
    CHECK(twice.err == "tokenctl: give --token or --token-file, not both\n");
    RunResult missing = user({"--token-file", d.dir() / "missing", "tokens", "list"});
    CHECK(missing.status == 2);
    CHECK(missing.err.find("Failed to open the token file " + (d.dir() / "missing")) !=
          std::string::npos);
    writeFile(d.dir() / "empty", "\n");
    RunResult empty = user({"--token-file", d.dir() / "empty", "tokens", "list"});
    CHECK(empty.status == 2);
    CHECK(empty.err.find("no token on the first line of") != std::string::npos);
    RunResult none = user({"tokens", "list"});
    CHECK(none.status == 1);
    CHECK(none.err == "tokenctl: user mode needs a token: TOKEND_TOKEN or --token-file FILE\n");

    // check - through the daemon, and check <token> with its warning.
    RunResult check = user({"check", "-"}, {}, admin + "\n");
    CHECK(check.status == 0);
    CHECK(check.out.rfind("OK ", 0) == 0);
    CHECK(check.err.empty());
    RunResult checkArgv = user({"check", admin});
    CHECK(checkArgv.status == 0);
    CHECK(argvWarnings(checkArgv.err) == 1);
  }
}

TEST_SUITE("TokenctlArgv") {
  TEST_CASE("a token given with --token is masked in tokenctl's command line once parsed") {
    // A socket that takes the connection and never answers holds tokenctl where the review
    // read the whole token from /proc/<pid>/cmdline.
    TempDir tmp;
    const std::string path = tmp / "mute.sock";
    tokend::UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(listener);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listener.get(), 4) == 0);
    const std::string token = "AAAAAAAAAA-0123456789012345678901";
    Child c = spawn({programPath("TOKENCTL"), "--socket", path, "--token", token, "tokens", "list"},
                    {{"TOKEND_DB", ""}}, tmp.path());
    tokend::UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(conn);
    // tokenctl connects only after it parsed (and masked) its arguments.
    std::string cmdline = readFile("/proc/" + std::to_string(c.pid) + "/cmdline");
    conn.reset();
    c.stop(SIGKILL);
    CHECK(cmdline.find("--token") != std::string::npos);
    CHECK(cmdline.find(token) == std::string::npos);
    CHECK(cmdline.find(std::string(token.size(), '*')) != std::string::npos);
  }
}

TEST_SUITE("TokenctlDbCap") {
  TEST_CASE(
      "tokenctl --max-db-size is stored: later runs without it enforce it, an explicit one "
      "replaces it") {
    TempDir tmp;
    const std::string dir = tmp / "data";
    RunResult tooSmall = ctlOn(dir, {"--max-db-size", "100K", "users", "list"});
    CHECK(tooSmall.status == 2);
    CHECK(tooSmall.err.find("at least 256K") != std::string::npos);

    RunResult made = ctlOn(dir, {"--max-db-size", "512K", "users", "create", "alice"});
    REQUIRE(made.status == 0);
    int created = 0;
    RunResult full = fillWithTokenctl(dir, "alice", created);
    INFO("created ", created, " tokens; then: ", full.err);
    CHECK(full.status == 1);
    CHECK(full.err.find("the key database is full") != std::string::npos);
    CHECK(full.err.find("of its 512 KiB cap") != std::string::npos);
    CHECK(created > 5);
    CHECK(fileSize(dir + "/data.mdb") <= 512 * 1024);
    RunResult import = ctlOn(dir, {"import", "-q"}, {}, importLines(1, "alice"));
    CHECK(import.status == 1);
    CHECK(import.err.find("the key database is full") != std::string::npos);

    // An explicit cap, here from the environment, replaces the stored one for the runs after it.
    RunResult raised =
        ctlOn(dir, {"tokens", "create", "--user", "alice"}, {{"TOKEND_MAX_DB_SIZE", "2M"}});
    CHECK(raised.status == 0);
    RunResult after = ctlOn(dir, {"tokens", "create", "--user", "alice", "--allow",
                                  bigAllowList(9999), "--name", "after"});
    CHECK(after.status == 0);
  }

  TEST_CASE(
      "a cap tokend was given holds for tokenctl import and tokens create in another "
      "process, and for a tokend started again without it") {
    Daemon d({"--max-db-size", "1M"});
    const std::string dir = d.dataDir();
    REQUIRE(ctlOn(dir, {"users", "create", "alice"}).status == 0);
    RunResult key = ctlOn(dir, {"tokens", "create", "--user", "alice", "--name", "keep"});
    REQUIRE(key.status == 0);
    const std::string aliceKey = key.out.substr(0, 33);

    // An import bigger than the cap is refused whole while tokend runs (review L6: it was
    // written, and grew data.mdb to 3.4 MB).
    RunResult big = ctlOn(dir, {"import", "-q"}, {}, importLines(8000, "alice"));
    INFO("import: ", big.err);
    CHECK(big.status == 1);
    CHECK(big.err.find("the key database is full") != std::string::npos);
    CHECK(big.err.find("of its 1024 KiB cap") != std::string::npos);
    CHECK(big.err.find("0 of 8000 tokens") != std::string::npos);

    int created = 0;
    RunResult full = fillWithTokenctl(dir, "alice", created);
    INFO("created ", created, " tokens; then: ", full.err);
    CHECK(full.status == 1);
    CHECK(full.err.find("the key database is full") != std::string::npos);
    CHECK(created > 5);
    CHECK(fileSize(dir + "/data.mdb") <= 1024 * 1024);
    // tokend holds the same cap.
    const std::string body = Json{{"token_name", "api"}}.dump();
    HttpReply api = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", aliceKey, body);
    CHECK(api.status == 507);

    // Started again without --max-db-size, tokend adopts the stored cap.
    REQUIRE(d.stop() == 0);
    Daemon again({"--data-dir", dir});
    HttpReply later =
        httpRequest(again.socket(), "POST", "/api/v2/users/me/keys/tokens", aliceKey, body);
    CHECK(later.status == 507);
    CHECK(later.body.find("1024 KiB cap") != std::string::npos);
  }

  TEST_CASE("a running tokend enforces a cap tokenctl stores after it started") {
    Daemon d;
    const std::string admin = d.adminToken();
    REQUIRE(admin.size() == 33);
    REQUIRE(ctlOn(d.dataDir(), {"--max-db-size", "512K", "users", "create", "alice"}).status == 0);
    HttpReply refused;
    int created = 0;
    for (; created < 500; ++created) {
      Json allow = Json::array();
      std::string list = bigAllowList(created);
      for (size_t at = 0, comma; at < list.size(); at = comma + 1) {
        comma = list.find(',', at);
        if (comma == std::string::npos) comma = list.size();
        allow.push_back(list.substr(at, comma - at));
      }
      std::string body =
          Json{{"token_name", "fill-" + std::to_string(created)}, {"allow_list", allow}}.dump();
      refused = httpRequest(d.socket(), "POST", "/api/v2/users/me/keys/tokens", admin, body);
      if (refused.status != 201) break;
    }
    INFO("created ", created, "; then ", refused.status, " ", refused.body);
    CHECK(refused.status == 507);
    CHECK(refused.body.find("of its 512 KiB cap") != std::string::npos);
    CHECK(created > 5);
  }
}
