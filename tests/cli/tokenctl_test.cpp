// CLI tests: the built tokenctl against a temporary key database, as an operator would use it.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "tests/support/process.h"

using tokend::test::run;
using tokend::test::RunResult;
using tokend::test::TempDir;

namespace {

const char* kA = "aaaaaaaa-0000-4000-8000-000000000001";
const char* kB = "bbbbbbbb-0000-4000-8000-000000000002";

struct Ctl {
  TempDir dir;
  std::string bin = tokend::test::programPath("TOKENCTL");

  RunResult operator()(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv = {bin, "--db", dir / "data"};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, env);
  }
  // Runs a command that must succeed and returns its stdout without the final newline.
  std::string ok(std::vector<std::string> args) {
    RunResult r = (*this)(args);
    INFO("tokenctl ", args[0], " ", args.size() > 1 ? args[1] : "", ": ", r.err);
    REQUIRE(r.status == 0);
    std::string out = r.out;
    if (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }
};

bool isUuid(const std::string& s) {
  return std::regex_match(
      s, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"));
}
bool isToken(const std::string& s) {
  return std::regex_match(s, std::regex("[0-9A-Za-z]{10}-[0-9A-Za-z]{22}"));
}
std::string ws(const char* id) {
  return std::string("workspace:") + id;
}

// How many times tokenctl warned that a secret was on its command line.
size_t argvWarnings(const std::string& err) {
  size_t n = 0;
  for (size_t at = err.find("warning: a token on the command line"); at != std::string::npos;
       at = err.find("warning: a token on the command line", at + 1)) {
    ++n;
  }
  return n;
}

}  // namespace

TEST_SUITE("Tokenctl") {
  TEST_CASE("users create prints the new id; duplicates and bad names are refused") {
    Ctl ctl;
    std::string id = ctl.ok({"users", "create", "alice"});
    CHECK(isUuid(id));
    RunResult dup = ctl({"users", "create", "alice"});
    CHECK(dup.status == 1);
    CHECK(dup.err == "tokenctl: user \"alice\" already exists\n");
    for (const char* bad : {"Alice", "_bob", "a b", "this-name-is-far-too-long-for-a-user-1"}) {
      RunResult r = ctl({"users", "create", bad});
      CAPTURE(bad);
      CHECK(r.status == 1);
      CHECK(r.err.find("invalid username") != std::string::npos);
    }
    RunResult role = ctl({"users", "create", "carol", "--role", "root"});
    CHECK(role.status == 1);
    CHECK(role.err.find("unknown role \"root\"") != std::string::npos);
  }

  TEST_CASE("users list, view, roles, suspend and activate") {
    Ctl ctl;
    std::string id = ctl.ok({"users", "create", "alice", "--role", "auditor"});
    ctl.ok({"users", "create", "bob"});
    std::string table = ctl.ok({"users", "list"});
    CHECK(table.find("ID") == 0);
    CHECK(table.find("alice") != std::string::npos);
    CHECK(table.find("member,auditor") != std::string::npos);
    auto list = nlohmann::json::parse(ctl.ok({"users", "list", "-o", "json"}));
    CHECK(list.size() == 2);
    auto alice = nlohmann::json::parse(ctl.ok({"users", "view", id, "-o", "json"}));
    CHECK(alice["username"] == "alice");
    CHECK(alice["status"] == "active");

    CHECK(ctl.ok({"users", "roles", "alice", "--set", "owner,user-admin"}) ==
          "User alice has roles member,owner,user-admin.");
    // The last active owner stays (SPEC 8), in operator mode too: bob becomes one first.
    RunResult last = ctl({"users", "suspend", "alice"});
    CHECK(last.status == 1);
    CHECK(last.err ==
          "tokenctl: cannot suspend \"alice\": they are the last active owner; make another user "
          "an owner first\n");
    ctl.ok({"users", "roles", "bob", "--set", "owner"});
    CHECK(ctl.ok({"users", "suspend", "alice"}) == "User alice is suspended.");
    CHECK(nlohmann::json::parse(ctl.ok({"users", "view", "alice", "-o", "json"}))["status"] ==
          "suspended");
    CHECK(ctl.ok({"users", "activate", "alice"}) == "User alice is active.");
    RunResult missing = ctl({"users", "view", "nobody"});
    CHECK(missing.status == 1);
    CHECK(missing.err == "tokenctl: user \"nobody\" not found\n");
  }

  TEST_CASE("tokens create prints the token alone; json holds the record and the key") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    std::string token = ctl.ok({"tokens", "create", "--user", "alice", "--name", "ci"});
    CHECK(isToken(token));
    auto j = nlohmann::json::parse(ctl.ok({"tokens", "create", "--user", "alice", "--name",
                                           "deploy", "--scope", "workspace:read,template:*",
                                           "--allow", ws(kA), "--lifetime", "30d", "-o", "json"}));
    CHECK(isToken(j["key"].get<std::string>()));
    CHECK(j["token_name"] == "deploy");
    CHECK(j["login_type"] == "token");
    CHECK(j["scopes"] == nlohmann::json({"template:*", "workspace:read"}));
    CHECK(j["allow_list"] == nlohmann::json::array({{{"type", "workspace"}, {"id", kA}}}));
    CHECK(j["lifetime_seconds"] == 30 * 86400);
    CHECK(j["last_used"] == "1970-01-01T00:00:00Z");
    // The secret is shown once: nothing that lists or views tokens shows it again.
    std::string secret = j["key"].get<std::string>().substr(11);
    CHECK(ctl.ok({"tokens", "list", "-o", "json"}).find(secret) == std::string::npos);
    CHECK(ctl.ok({"tokens", "view", "deploy", "-o", "json"}).find(secret) == std::string::npos);
    // Without --name a readable random name is chosen.
    auto unnamed =
        nlohmann::json::parse(ctl.ok({"tokens", "create", "--user", "alice", "-o", "json"}));
    CHECK(std::regex_match(unnamed["token_name"].get<std::string>(),
                           std::regex("[a-z]+-[a-z]+-[0-9]{4}")));
  }

  TEST_CASE("tokens create refuses with the SPEC's messages and writes nothing") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    ctl.ok({"tokens", "create", "--user", "alice", "--name", "ci"});
    std::string before = ctl.ok({"tokens", "list", "-o", "json"});

    RunResult dup = ctl({"tokens", "create", "--user", "alice", "--name", "ci"});
    CHECK(dup.status == 1);
    CHECK(dup.err == "tokenctl: A token with name \"ci\" already exists.\n");
    RunResult scope = ctl({"tokens", "create", "--user", "alice", "--scope", "workspace:fly"});
    CHECK(scope.err == "tokenctl: invalid or unsupported API key scope: \"workspace:fly\"\n");
    RunResult star = ctl({"tokens", "create", "--user", "alice", "--scope", "*:*"});
    CHECK(star.err == "tokenctl: invalid or unsupported API key scope: \"*:*\"\n");
    RunResult allow = ctl({"tokens", "create", "--user", "alice", "--allow", "workspace:nope"});
    CHECK(allow.status == 1);
    CHECK(allow.err.find("\"workspace:nope\"") != std::string::npos);
    RunResult zero = ctl({"tokens", "create", "--user", "alice", "--lifetime", "0s"});
    CHECK(zero.err == "tokenctl: lifetime must be positive\n");
    RunResult negative = ctl({"tokens", "create", "--user", "alice", "--lifetime", "-1h"});
    CHECK(negative.err == "tokenctl: lifetime must be positive\n");
    RunResult noUser = ctl({"tokens", "create"});
    CHECK(noUser.status == 1);
    CHECK(noUser.err.find("--user") != std::string::npos);
    RunResult badDuration = ctl({"tokens", "create", "--user", "alice", "--lifetime", "soon"});
    CHECK(badDuration.err.find("invalid duration \"soon\"") != std::string::npos);

    CHECK(ctl.ok({"tokens", "list", "-o", "json"}) == before);
  }

  TEST_CASE(
      "a lifetime equal to the cap is accepted, one second more refused; owners have the admin "
      "cap") {
    Ctl ctl;
    ctl.ok({"users", "create", "member1"});
    ctl.ok({"users", "create", "boss", "--role", "owner"});
    CHECK(isToken(ctl.ok({"tokens", "create", "--user", "member1", "--lifetime", "876600h"})));
    RunResult over = ctl({"tokens", "create", "--user", "member1", "--lifetime", "876600h1s"});
    CHECK(over.status == 1);
    CHECK(over.err.find("876600h") != std::string::npos);
    CHECK(isToken(ctl.ok({"tokens", "create", "--user", "boss", "--lifetime", "168h"})));
    RunResult adminOver = ctl({"tokens", "create", "--user", "boss", "--lifetime", "168h1s"});
    CHECK(adminOver.status == 1);
    CHECK(adminOver.err.find("168h") != std::string::npos);
    // The caps come from the environment too (Coder's names accepted).
    RunResult envCap = ctl({"tokens", "create", "--user", "member1", "--lifetime", "2h"},
                           {{"CODER_MAX_TOKEN_LIFETIME", "1h"}});
    CHECK(envCap.status == 1);
  }

  TEST_CASE("check: the seed rules, with exit 0 when allowed and 1 when denied") {
    Ctl ctl;
    ctl.ok({"users", "create", "boss", "--role", "owner"});
    std::string token = ctl.ok(
        {"tokens", "create", "--user", "boss", "--scope", "workspace:read", "--allow", ws(kA)});
    RunResult a = ctl({"check", token, "workspace:read", ws(kA)});
    CHECK(a.status == 0);
    CHECK(a.out.rfind("OK ", 0) == 0);
    CHECK(a.out.find(" boss " + token.substr(0, 10) + " token ") != std::string::npos);
    RunResult b = ctl({"check", token, "workspace:read", ws(kB)});
    CHECK(b.status == 1);
    CHECK(b.out == "DENY allow_list 403\n");
    CHECK(ctl({"check", token, "template:read", std::string("template:") + kA}).out ==
          "DENY scope 403\n");
    CHECK(ctl({"check", token, "workspace:update", ws(kA)}).out == "DENY scope 403\n");
    CHECK(ctl({"check", token, "workspace:fly"}).out == "DENY bad_request 400\n");
    CHECK(ctl({"check", "nope"}).out == "DENY malformed 401\n");
    CHECK(ctl({"check", "AAAAAAAAAA-0123456789012345678901"}).out == "DENY unknown 401\n");
    CHECK(ctl({"check", token.substr(0, 11) + "0123456789012345678901"}).out ==
          "DENY bad_secret 401\n");
    CHECK(ctl({"check", token}).status == 0);

    std::string wider =
        ctl.ok({"tokens", "create", "--user", "boss", "--scope", "workspace:read", "--scope",
                "template:*", "--allow", ws(kA), "--allow", "template:*"});
    CHECK(ctl({"check", wider, "template:update", std::string("template:") + kB}).status == 0);
  }

  TEST_CASE("check: coder:all grants only what the user's roles grant, owned needs --owner") {
    Ctl ctl;
    std::string id = ctl.ok({"users", "create", "alice"});
    std::string token = ctl.ok({"tokens", "create", "--user", "alice"});
    CHECK(ctl({"check", token, "template:read"}).status == 0);
    CHECK(ctl({"check", token, "system:read"}).out == "DENY role 403\n");
    CHECK(ctl({"check", token, "workspace:read", ws(kA)}).out == "DENY role 403\n");
    auto owned = ctl({"check", token, "workspace:read", ws(kA), "--owner", id});
    CHECK(owned.status == 0);
    // The grant rests on the owner named: the line says so (SPEC 6).
    CHECK(owned.out.ends_with(" owned\n"));
    CHECK_FALSE(ctl({"check", token, "template:read"}).out.ends_with(" owned\n"));
    // A role change applies to existing tokens at once.
    ctl.ok({"users", "roles", "alice", "--set", "owner"});
    CHECK(ctl({"check", token, "system:read"}).status == 0);
    CHECK_FALSE(
        ctl({"check", token, "workspace:read", ws(kA), "--owner", id}).out.ends_with(" owned\n"));
  }

  TEST_CASE("suspension, removal and deletion are refused by check") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    std::string t1 = ctl.ok({"tokens", "create", "--user", "alice", "--name", "one"});
    std::string t2 = ctl.ok({"tokens", "create", "--user", "alice", "--name", "two"});
    ctl.ok({"users", "suspend", "alice"});
    CHECK(ctl({"check", t1}).out == "DENY user_inactive 401\n");
    ctl.ok({"users", "activate", "alice"});
    CHECK(ctl({"check", t1}).status == 0);

    CHECK(ctl.ok({"tokens", "remove", "one"}) ==
          "Token one (" + t1.substr(0, 10) + ") is expired.");
    CHECK(ctl({"check", t1}).out == "DENY expired 401\n");
    // The record is kept, hidden from the list unless asked for.
    CHECK(ctl.ok({"tokens", "list"}).find(" one ") == std::string::npos);
    CHECK(ctl.ok({"tokens", "list", "--include-expired"}).find("one") != std::string::npos);

    ctl.ok({"tokens", "remove", t2.substr(0, 10), "--delete"});
    CHECK(ctl({"check", t2}).out == "DENY unknown 401\n");
    CHECK(ctl.ok({"tokens", "list", "--include-expired", "-o", "json"}).find("two") ==
          std::string::npos);
  }

  TEST_CASE("deleting a user deletes their tokens") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    std::string t = ctl.ok({"tokens", "create", "--user", "alice"});
    ctl.ok({"users", "delete", "alice"});
    CHECK(ctl({"check", t}).out == "DENY unknown 401\n");
    CHECK(nlohmann::json::parse(ctl.ok({"tokens", "list", "--include-expired", "-o", "json"}))
              .empty());
  }

  TEST_CASE("tokens list and view: columns, owners, lookup by name, id or token, ambiguity") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    ctl.ok({"users", "create", "bob"});
    std::string a = ctl.ok({"tokens", "create", "--user", "alice", "--name", "ci"});
    ctl.ok({"tokens", "create", "--user", "bob", "--name", "ci"});
    std::string table = ctl.ok({"tokens", "list", "--user", "alice"});
    CHECK(table.find("ID  ") == 0);
    for (const char* col :
         {"NAME", "SCOPES", "ALLOW LIST", "LAST USED", "EXPIRES AT", "CREATED AT"})
      CHECK(table.find(col) != std::string::npos);
    CHECK(table.find("OWNER") == std::string::npos);
    CHECK(table.find("never") != std::string::npos);
    CHECK(ctl.ok({"tokens", "list", "--all"}).find("OWNER") != std::string::npos);

    RunResult ambiguous = ctl({"tokens", "view", "ci"});
    CHECK(ambiguous.status == 1);
    CHECK(ambiguous.err.find("ambiguous") != std::string::npos);
    CHECK(ambiguous.err.find("--user") != std::string::npos);
    auto byName =
        nlohmann::json::parse(ctl.ok({"tokens", "view", "ci", "--user", "alice", "-o", "json"}));
    CHECK(byName["id"] == a.substr(0, 10));
    auto byId = nlohmann::json::parse(ctl.ok({"tokens", "view", a.substr(0, 10), "-o", "json"}));
    CHECK(byId["token_name"] == "ci");
    auto byToken = nlohmann::json::parse(ctl.ok({"tokens", "view", a, "-o", "json"}));
    CHECK(byToken["username"] == "alice");
  }

  TEST_CASE("sessions create makes a session of the given login type") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    std::string s = ctl.ok({"sessions", "create", "--user", "alice", "--login-type", "oidc"});
    CHECK(isToken(s));
    RunResult c = ctl({"check", s});
    CHECK(c.status == 0);
    CHECK(c.out.find(" oidc ") != std::string::npos);
    CHECK(ctl({"sessions", "create", "--user", "alice", "--login-type", "saml"}).status == 2);
    CHECK(ctl({"sessions", "create", "--user", "nobody"}).status == 1);
  }

  TEST_CASE("usage errors exit 2 with help on stderr; --help exits 0") {
    Ctl ctl;
    RunResult none = run({ctl.bin, "tokens", "list"});
    CHECK(none.status == 2);
    CHECK(none.err.find("--db") != std::string::npos);
    CHECK(ctl({"frobnicate"}).status == 2);
    RunResult help = run({ctl.bin, "tokens", "create", "--help"});
    CHECK(help.status == 0);
    CHECK(help.out.find("--scope") != std::string::npos);
  }

  TEST_CASE("check - reads the token from stdin; a token on the command line draws one warning") {
    Ctl ctl;
    ctl.ok({"users", "create", "alice"});
    std::string token = ctl.ok({"tokens", "create", "--user", "alice", "--name", "t"});
    auto stdinCheck = [&](const std::string& input, std::vector<std::string> more = {}) {
      std::vector<std::string> argv = {ctl.bin, "--db", ctl.dir / "data", "check", "-"};
      argv.insert(argv.end(), more.begin(), more.end());
      return run(argv, {}, input);
    };

    // From stdin: one line, its newline (and a CR before it) stripped; no warning.
    for (const std::string& input : {token + "\n", token, token + "\r\n", token + "\nmore\n"}) {
      RunResult r = stdinCheck(input);
      CAPTURE(input);
      CHECK(r.status == 0);
      CHECK(r.out.rfind("OK ", 0) == 0);
      CHECK(r.err.empty());
    }
    RunResult scoped = stdinCheck(token + "\n", {"template:read"});
    CHECK(scoped.status == 0);
    CHECK(scoped.out.rfind("OK ", 0) == 0);
    RunResult wrong = stdinCheck("AAAAAAAAAA-0123456789012345678901\n");
    CHECK(wrong.status == 1);
    CHECK(wrong.out == "DENY unknown 401\n");
    RunResult none = stdinCheck("");
    CHECK(none.status == 2);
    CHECK(none.err == "tokenctl: check -: no token on the first line of stdin\n");

    // On the command line it still works, with one warning that names the safe ways.
    RunResult argv = ctl({"check", token});
    CHECK(argv.status == 0);
    CHECK(argvWarnings(argv.err) == 1);
    CHECK(argv.err.find("`check -`") != std::string::npos);
    CHECK(argv.err.find("TOKEND_TOKEN") != std::string::npos);
    CHECK(argv.err.find("--token-file") != std::string::npos);
    CHECK(argv.err.find(token) == std::string::npos);

    // tokens view/remove: the whole token warns, its id or name does not.
    std::string id = token.substr(0, 10);
    RunResult byToken = ctl({"tokens", "view", token, "-o", "json"});
    CHECK(byToken.status == 0);
    CHECK(argvWarnings(byToken.err) == 1);
    for (const std::string& ref : {id, std::string("t")}) {
      RunResult r = ctl({"tokens", "view", ref, "--user", "alice", "-o", "json"});
      CHECK(r.status == 0);
      CHECK(r.err.empty());
    }
    RunResult remove = ctl({"tokens", "remove", token});
    CHECK(remove.status == 0);
    CHECK(argvWarnings(remove.err) == 1);
    CHECK(ctl({"users", "list"}).err.empty());
  }
}
