// Integration tests: the built tokenload against a started tokend, over each protocol, checking
// what a user of tokenload sees (its JSON, its exit status), including that a healthy daemon gets
// no wrong answers.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/daemon.h"
#include "tests/support/process.h"

using tokend::test::run;
using tokend::test::RunResult;
using tokend::test::TempDir;
using Json = nlohmann::json;

namespace {

// A tokend on a fresh data dir (stopped at the end of the test) and tokenload runs against it.
struct Load {
  tokend::test::Daemon daemon{{"--threads", "1"}};
  std::string data = daemon.dataDir();
  std::string adminToken = daemon.adminToken();
  const tokend::test::TempDir& dir = daemon.dir();

  RunResult load(std::vector<std::string> args) {
    std::vector<std::string> argv = {tokend::test::programPath("TOKENLOAD"), "--socket",
                                     daemon.socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv);
  }
  // A run that must succeed, as JSON.
  Json loadJson(std::vector<std::string> args) {
    args.push_back("--json");
    RunResult r = load(args);
    INFO("tokenload stderr: ", r.err, "\nstdout: ", r.out);
    REQUIRE(r.status == 0);
    return Json::parse(r.out);
  }
};

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

}  // namespace

TEST_SUITE("Tokenload") {
  TEST_CASE("each protocol gets answers, every one of them right") {
    Load d;
    for (const char* protocol : {"binary", "text", "http"}) {
      CAPTURE(protocol);
      Json j = d.loadJson({"--protocol", protocol, "--db", d.data, "--tokens", "200", "--duration",
                           "1s", "-c", "2", "-P", "4", "--mix",
                           "valid=60,unknown=10,bad_secret=10,expired=10,scope=10"});
      CHECK(j["config"]["protocol"] == protocol);
      CHECK(j["requests"].get<uint64_t>() > 0);
      CHECK(j["errors"]["wrong_answers"] == 0);
      CHECK(j["errors"]["protocol"] == 0);
      CHECK(j["errors"]["lost"] == 0);
      for (const char* reason : {"ok", "unknown", "bad_secret", "expired", "scope"}) {
        CAPTURE(reason);
        CHECK(j["outcomes"].value(reason, 0) > 0);
      }
      CHECK(j["throughput_rps"].get<double>() > 0);
      const Json& lat = j["latency_us"];
      CHECK(lat["p50"].get<double>() > 0);
      CHECK(lat["p50"].get<double>() <= lat["p99"].get<double>());
      CHECK(lat["p99"].get<double>() <= lat["max"].get<double>());
    }
  }

  TEST_CASE("shm mode answers through libtokend, when it is built in") {
    Load d;
    RunResult r = d.load({"--mode", "shm", "--db", d.data, "--tokens", "100", "--duration", "1s",
                          "-P", "8", "--json"});
    if (r.status == 2 && r.err.find("does not include") != std::string::npos) {
      MESSAGE("tokenload was built without libtokend: --mode shm is refused, as it should be");
      return;
    }
    INFO(r.err);
    REQUIRE(r.status == 0);
    Json j = Json::parse(r.out);
    CHECK(j["config"]["protocol"] == "shm");
    CHECK(j["requests"].get<uint64_t>() > 0);
    CHECK(j["errors"]["wrong_answers"] == 0);
    CHECK(j["shm"]["via_shm"].get<uint64_t>() > 0);
  }

  TEST_CASE("created tokens are kept in the token file and reused by the next run") {
    Load d;
    RunResult first = d.load({"--db", d.data, "--tokens", "50", "-n", "100"});
    INFO(first.err);
    CHECK(first.status == 0);
    CHECK(first.err.find("created 51 tokens") != std::string::npos);
    CHECK(first.out.find("wrong answers 0") != std::string::npos);
    RunResult second = d.load({"--db", d.data, "--tokens", "50", "-n", "100"});
    CHECK(second.status == 0);
    CHECK(second.err.find("created") == std::string::npos);
    // More tokens than the file holds: a new set.
    RunResult more = d.load({"--db", d.data, "--tokens", "80", "-n", "100"});
    CHECK(more.status == 0);
    CHECK(more.err.find("created 81 tokens") != std::string::npos);
  }

  TEST_CASE("a request count ends the run exactly, pipelined or not") {
    Load d;
    Json j = d.loadJson(
        {"--db", d.data, "--tokens", "20", "-n", "1000", "-c", "3", "-P", "32", "--dist", "zipf"});
    CHECK(j["requests"] == 1000);
    CHECK(j["sent"] == 1000);
    CHECK(j["config"]["dist"] == "zipf");
  }

  TEST_CASE("a token file of bare tokens, and a permission") {
    Load d;
    std::string file = d.dir / "tokens.txt";
    writeFile(file, "# the admin's token\n" + d.adminToken + "\n");
    Json j = d.loadJson({"--token-file", file, "--mix", "valid=1", "-n", "500", "--protocol",
                         "text", "--permission", "workspace:read"});
    CHECK(j["requests"] == 500);
    CHECK(j["outcomes"]["ok"] == 500);
  }

  TEST_CASE("open loop keeps to its schedule and counts what it could not send") {
    Load d;
    Json j = d.loadJson({"--db", d.data, "--tokens", "20", "--rate", "2000", "--duration", "1s",
                         "-c", "4", "-P", "16", "--protocol", "http"});
    CHECK(j["config"]["mode"] == "open");
    // 2000 requests are due in the second: each one was answered, or held back by a full window
    // (a daemon stalled by a busy machine) and counted as backlog.
    uint64_t due = j["requests"].get<uint64_t>() +
                   j["errors"]["open_loop_backlog"].get<uint64_t>() +
                   j["errors"]["lost"].get<uint64_t>();
    CHECK(due >= 1990);
    CHECK(due <= 2000);
    CHECK(j["requests"].get<uint64_t>() >= 1000);
    CHECK(j["errors"]["wrong_answers"] == 0);
  }

  TEST_CASE("wrong answers are counted and fail the run") {
    Load d;
    // A valid token listed as expired: every answer (ok) disagrees with what the file says.
    std::string file = d.dir / "tokens.txt";
    writeFile(file, "expired " + d.adminToken + "\n");
    RunResult r = d.load({"--token-file", file, "--mix", "expired=1", "-n", "100", "--json"});
    CHECK(r.status == 1);
    Json j = Json::parse(r.out);
    CHECK(j["errors"]["wrong_answers"] == 100);
    CHECK(j["ok"] == false);
  }

  TEST_CASE("runs without a bound, tokens or a daemon are refused") {
    TempDir dir;
    std::string bin = tokend::test::programPath("TOKENLOAD");
    std::string file = dir / "tokens.txt";
    writeFile(file, "a1B2c3D4e5-Xq9Zr8Ys7Wt6Vu5Ts4Rq3P\n");
    RunResult unbounded =
        run({bin, "--socket", dir / "none.sock", "--token-file", file, "--duration", "0"});
    CHECK(unbounded.status == 2);
    CHECK(unbounded.err.find("bounded") != std::string::npos);
    RunResult noTokens = run({bin, "--socket", dir / "none.sock"});
    CHECK(noTokens.status == 2);
    RunResult noDaemon = run(
        {bin, "--socket", dir / "none.sock", "--token-file", file, "--mix", "valid=1", "-n", "10"});
    CHECK(noDaemon.status == 3);
    CHECK(noDaemon.err.find("Failed to connect") != std::string::npos);
    RunResult noDb = run({bin, "--socket", dir / "none.sock", "--db", dir / "nothing"});
    CHECK(noDb.status == 3);
    CHECK(noDb.err.find("no key database") != std::string::npos);
    RunResult badPerm = run(
        {bin, "--socket", dir / "none.sock", "--token-file", file, "--permission", "nothing:here"});
    CHECK(badPerm.status == 2);
  }
}
