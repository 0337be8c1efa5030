// CLI tests: tokenctl import, the bulk loader, against temporary key databases.
#include <doctest/doctest.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "tests/support/process.h"

using tokend::test::run;
using tokend::test::RunResult;
using tokend::test::TempDir;

namespace {

struct Ctl {
  TempDir dir;
  std::string bin = tokend::test::programPath("TOKENCTL");

  RunResult operator()(std::vector<std::string> args, const std::string& input = {}) {
    std::vector<std::string> argv = {bin, "--db", dir / "data"};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, {}, input);
  }
  std::string ok(std::vector<std::string> args, const std::string& input = {}) {
    RunResult r = (*this)(args, input);
    INFO("tokenctl ", args[0], ": ", r.err);
    REQUIRE(r.status == 0);
    return r.out;
  }
  RunResult import(const std::string& lines, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"import", "-q"};
    args.insert(args.end(), extra.begin(), extra.end());
    return (*this)(args, lines);
  }
  size_t tokenCount() {
    return nlohmann::json::parse(ok({"tokens", "list", "--include-expired", "-o", "json"})).size();
  }
};

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::string sha256Hex(const std::string& s) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
  std::string hex;
  for (unsigned char c : d) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
  return hex;
}

const char* kKey1 = "AAAAAAAAA1-abcdefghijklmnopqrstuv";
const char* kKey2 = "AAAAAAAAA2-bcdefghijklmnopqrstuvw";

}  // namespace

TEST_SUITE("TokenctlImport") {
  TEST_CASE("lines without a key mint tokens whose keys are printed in input order and verify") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    RunResult r = ctl.import(
        "{\"user\":\"alice\",\"name\":\"one\"}\n"
        "\n"
        "{\"user\":\"alice\",\"name\":\"two\",\"scopes\":[\"workspace:read\"]}\n"
        "{\"user\":\"alice\",\"name\":\"three\",\"lifetime\":\"30d\"}\n");
    REQUIRE(r.status == 0);
    auto keys = lines(r.out);
    REQUIRE(keys.size() == 3);
    for (const auto& k : keys) {
      CHECK(std::regex_match(k, std::regex("[0-9A-Za-z]{10}-[0-9A-Za-z]{22}")));
      CHECK(ctl.ok({"check", k}).rfind("OK ", 0) == 0);
    }
    auto two = nlohmann::json::parse(ctl.ok({"tokens", "view", keys[1], "-o", "json"}));
    CHECK(two["token_name"] == "two");
    CHECK(two["scopes"] == nlohmann::json::array({"workspace:read"}));
    auto three = nlohmann::json::parse(ctl.ok({"tokens", "view", "three", "-o", "json"}));
    CHECK(three["lifetime_seconds"] == 30 * 86400);
  }

  TEST_CASE("a key, an id with its secret, or an id with the secret's hash all import") {
    Ctl ctl;
    ctl.ok({"users", "create", "bob"});
    std::string secret3 = "cdefghijklmnopqrstuvwx";
    std::string in = std::string("{\"user\":\"bob\",\"key\":\"") + kKey1 + "\"}\n" +
                     "{\"username\":\"bob\",\"id\":\"AAAAAAAAA2\",\"secret\":\"" +
                     std::string(kKey2).substr(11) + "\"}\n" +
                     "{\"user\":\"bob\",\"id\":\"AAAAAAAAA3\",\"hashed_secret\":\"\\\\x" +
                     sha256Hex(secret3) + "\",\"token_name\":\"from-coder\"}\n";
    RunResult r = ctl.import(in);
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK(r.out.empty());  // nothing was minted
    CHECK(ctl.ok({"check", kKey1}).rfind("OK ", 0) == 0);
    CHECK(ctl.ok({"check", kKey2}).rfind("OK ", 0) == 0);
    CHECK(ctl.ok({"check", "AAAAAAAAA3-" + secret3}).rfind("OK ", 0) == 0);
    CHECK(ctl({"check", "AAAAAAAAA3-" + std::string(22, 'z')}).out == "DENY bad_secret 401\n");
    auto named = nlohmann::json::parse(ctl.ok({"tokens", "view", kKey1, "-o", "json"}));
    CHECK(named["token_name"] == "import-AAAAAAAAA1");
  }

  TEST_CASE("one bad line refuses the whole import, naming every bad line, and writes nothing") {
    Ctl ctl;
    ctl.ok({"users", "create", "carol"});
    std::string in;
    for (int i = 0; i < 10; ++i) in += "{\"user\":\"carol\"}\n";
    in += "{\"user\":\"carol\",\"scopes\":[\"nope:read\"]}\n";      // line 11
    in += "{\"user\":\"carol\",\"scope\":[\"workspace:read\"]}\n";  // line 12: misspelt
    in += "not json\n";                                             // line 13
    RunResult r = ctl.import(in, {"--batch", "4"});
    CHECK(r.status == 1);
    CHECK(r.out.empty());
    CHECK(r.err.find("line 11: invalid or unsupported API key scope: \"nope:read\"") !=
          std::string::npos);
    CHECK(r.err.find("line 12: unknown field \"scope\"") != std::string::npos);
    CHECK(r.err.find("line 13: not JSON") != std::string::npos);
    CHECK(r.err.find("3 bad lines") != std::string::npos);
    CHECK(r.err.find("nothing was written") != std::string::npos);
    CHECK(ctl.tokenCount() == 0);
  }

  TEST_CASE("ids and names twice in the input, or already in the database, are refused") {
    Ctl ctl;
    ctl.ok({"users", "create", "dave"});
    std::string k1 = std::string("{\"user\":\"dave\",\"key\":\"") + kKey1 + "\"}\n";
    RunResult dupId = ctl.import(k1 + "{\"user\":\"dave\"}\n" + k1);
    CHECK(dupId.status == 1);
    CHECK(dupId.err.find("line 3: token id \"AAAAAAAAA1\" is also on line 1") != std::string::npos);
    RunResult dupName =
        ctl.import("{\"user\":\"dave\",\"name\":\"x\"}\n{\"user\":\"dave\",\"name\":\"x\"}\n");
    CHECK(dupName.status == 1);
    CHECK(dupName.err.find("line 2: A token with name \"x\" is also on line 1") !=
          std::string::npos);
    CHECK(ctl.tokenCount() == 0);

    REQUIRE(ctl.import(k1).status == 0);
    ctl.ok({"tokens", "create", "--user", "dave", "--name", "taken"});
    RunResult again = ctl.import(k1 + "{\"user\":\"dave\",\"name\":\"taken\"}\n");
    CHECK(again.status == 1);
    CHECK(again.err.find("line 1: token id \"AAAAAAAAA1\" already exists") != std::string::npos);
    CHECK(again.err.find("line 2: A token with name \"taken\" already exists.") !=
          std::string::npos);
    // The same token again is what a rerun after a partial import looks like.
    RunResult resumed =
        ctl.import(k1 + "{\"user\":\"dave\",\"name\":\"new\"}\n", {"--skip-existing"});
    INFO(resumed.err);
    CHECK(resumed.status == 0);
    CHECK(ctl.tokenCount() == 3);
  }

  TEST_CASE("unknown users are refused unless --create-users makes them") {
    Ctl ctl;
    RunResult r = ctl.import("{\"user\":\"erin\"}\n{\"user\":\"erin\"}\n");
    CHECK(r.status == 1);
    CHECK(r.err.find("line 1: user \"erin\" not found") != std::string::npos);
    CHECK(r.err.find("line 2: user \"erin\" not found") != std::string::npos);
    RunResult made = ctl.import("{\"user\":\"erin\"}\n{\"user\":\"frank\"}\n", {"--create-users"});
    INFO(made.err);
    REQUIRE(made.status == 0);
    CHECK(lines(made.out).size() == 2);
    auto users = nlohmann::json::parse(ctl.ok({"users", "list", "-o", "json"}));
    CHECK(users.size() == 2);
  }

  TEST_CASE("lifetimes follow tokens create unless the line carries its own expiry") {
    Ctl ctl;
    ctl.ok({"users", "create", "root", "--role", "owner"});
    RunResult capped = ctl.import("{\"user\":\"root\",\"lifetime\":\"30d\"}\n");
    CHECK(capped.status == 1);
    CHECK(capped.err.find("line 1: ") != std::string::npos);
    CHECK(capped.err.find("168h") != std::string::npos);
    RunResult zero = ctl.import("{\"user\":\"root\",\"lifetime\":0}\n");
    CHECK(zero.err.find("lifetime must be positive") != std::string::npos);
    RunResult kept = ctl.import(
        "{\"user\":\"root\",\"expires_at\":\"2099-01-02T03:04:05Z\",\"created_at\":1700000000,"
        "\"login_type\":\"oidc\"}\n");
    INFO(kept.err);
    REQUIRE(kept.status == 0);
    auto t = nlohmann::json::parse(ctl.ok({"tokens", "view", lines(kept.out)[0], "-o", "json"}));
    CHECK(t["expires_at"] == "2099-01-02T03:04:05Z");
    CHECK(t["created_at"] == "2023-11-14T22:13:20Z");
    CHECK(t["login_type"] == "oidc");
    RunResult named = ctl.import("{\"user\":\"root\",\"login_type\":\"github\",\"name\":\"x\"}\n");
    CHECK(named.err.find("has no name") != std::string::npos);
  }

  TEST_CASE("many batches: every token lands and the summary counts the transactions") {
    Ctl ctl;
    std::string in;
    for (int i = 0; i < 25; ++i) in += "{\"user\":\"u" + std::to_string(i % 3) + "\"}\n";
    RunResult r = ctl({"import", "--batch", "4", "--create-users"}, in);
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK(lines(r.out).size() == 25);
    CHECK(r.err.find("imported 25 tokens (25 minted, 0 skipped)") != std::string::npos);
    CHECK(r.err.find("in 7 transactions") != std::string::npos);
    CHECK(ctl.tokenCount() == 25);
    for (const auto& k : lines(r.out)) CHECK(ctl.ok({"check", k}).rfind("OK ", 0) == 0);
  }

  TEST_CASE("--keys-out writes the minted keys to a file of mode 0600; --dry-run writes nothing") {
    Ctl ctl;
    ctl.ok({"users", "create", "gina"});
    RunResult dry = ctl.import("{\"user\":\"gina\"}\n", {"--dry-run"});
    CHECK(dry.status == 0);
    CHECK(dry.out.empty());
    CHECK(ctl.tokenCount() == 0);
    std::string path = ctl.dir / "keys";
    RunResult r = ctl.import("{\"user\":\"gina\"}\n{\"user\":\"gina\"}\n", {"--keys-out", path});
    REQUIRE(r.status == 0);
    CHECK(r.out.empty());
    CHECK(lines(tokend::test::readFile(path)).size() == 2);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
  }

  TEST_CASE("--keys-out refuses an existing file and a symlink before writing anything") {
    Ctl ctl;
    ctl.ok({"users", "create", "gina"});
    const std::string input = "{\"user\":\"gina\"}\n";
    auto write = [](const std::string& path, const std::string& text, mode_t mode) {
      FILE* f = std::fopen(path.c_str(), "w");
      REQUIRE(f);
      std::fputs(text.c_str(), f);
      std::fclose(f);
      REQUIRE(::chmod(path.c_str(), mode) == 0);
    };
    auto modeOf = [](const std::string& path) {
      struct stat st {};
      REQUIRE(::lstat(path.c_str(), &st) == 0);
      return st.st_mode & 0777;
    };

    // An existing world-readable file keeps its bytes and its mode; nothing is imported.
    std::string existing = ctl.dir / "existing";
    write(existing, "old\n", 0644);
    RunResult r = ctl.import(input, {"--keys-out", existing});
    CHECK(r.status == 1);
    CHECK(r.err.find("--keys-out " + existing + " already exists") != std::string::npos);
    CHECK(r.err.find("nothing was written") != std::string::npos);
    CHECK(tokend::test::readFile(existing) == "old\n");
    CHECK(modeOf(existing) == 0644);
    CHECK(ctl.tokenCount() == 0);

    // A symlink to a 0666 file is not followed; nor is a dangling one (its target is not made).
    std::string target = ctl.dir / "target", link = ctl.dir / "link";
    write(target, "", 0666);
    REQUIRE(::symlink(target.c_str(), link.c_str()) == 0);
    r = ctl.import(input, {"--keys-out", link});
    CHECK(r.status == 1);
    CHECK(r.err.find("already exists") != std::string::npos);
    CHECK(tokend::test::readFile(target).empty());
    std::string nowhere = ctl.dir / "nowhere", dangling = ctl.dir / "dangling";
    REQUIRE(::symlink(nowhere.c_str(), dangling.c_str()) == 0);
    r = ctl.import(input, {"--keys-out", dangling});
    CHECK(r.status == 1);
    struct stat st {};
    CHECK(::stat(nowhere.c_str(), &st) != 0);
    CHECK(ctl.tokenCount() == 0);

    // A new file is made 0600 even under umask 0, and holds the key.
    std::string fresh = ctl.dir / "fresh";
    mode_t old = ::umask(0);
    r = ctl.import(input, {"--keys-out", fresh});
    ::umask(old);
    REQUIRE(r.status == 0);
    CHECK(modeOf(fresh) == 0600);
    CHECK(lines(tokend::test::readFile(fresh)).size() == 1);
    CHECK(ctl.tokenCount() == 1);
  }

  TEST_CASE("user mode refuses import") {
    Ctl ctl;
    RunResult r = run({ctl.bin, "--socket", ctl.dir / "none.sock", "--token", kKey1, "import"},
                      {{"TOKEND_DB", ""}}, "");
    CHECK(r.status == 2);
    CHECK(r.err.find("operator mode only") != std::string::npos);
  }
}
