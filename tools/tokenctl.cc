// tokenctl: the admin and user CLI for tokend's users, tokens and sessions (SPEC 8).
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "base/duration.h"
#include "base/size.h"
#include "base/unique_fd.h"
#include "tools/ctl_backend.h"
#include "tools/ctl_import.h"
#include "tools/ctl_postgres.h"
#include "verifier/keydb.h"
#include "verifier/token.h"

namespace tokend::tools {
namespace {

// Exit codes: 0 success; 1 the operation failed (or `check` denied); 2 usage; 3 `check` could
// not get an answer.
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoAnswer = 3;

struct Options {
  std::string db;
  std::string socket;
  std::string token;
  std::string output;
  std::string postgres;
};

std::string envOr(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// JSON for people and scripts. A name stored before names were checked may hold bytes that are
// not UTF-8: print U+FFFD for them rather than throw.
std::string dumpJson(const Json& j) {
  return j.dump(2, ' ', false, Json::error_handler_t::replace);
}

// A table cell: control characters (from names stored before names were checked) are shown as
// '?', so that no cell can move the cursor, recolour or retitle the terminal.
std::string cell(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s;
}

void printTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rowsIn) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : rowsIn) {
    rows.emplace_back();
    for (const auto& c : r) rows.back().push_back(cell(c));
  }
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (size_t i = 0; i < cells.size(); ++i) {
      s += cells[i];
      if (i + 1 < cells.size()) s += std::string(width[i] - cells[i].size() + 2, ' ');
    }
    fmt::print("{}\n", s);
  };
  line(header);
  for (const auto& r : rows) line(r);
}

std::string joined(const Json& list) {
  std::string s;
  for (const auto& v : list) {
    // Allow list entries are Coder's {"type", "id"} objects; shown as "type:id".
    std::string e =
        v.is_object() ? v.value("type", "") + ":" + v.value("id", "") : v.get<std::string>();
    s += (s.empty() ? "" : ",") + e;
  }
  return s;
}

void printUsers(const Json& users, const std::string& output) {
  if (output == "json") {
    fmt::print("{}\n", dumpJson(users));
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& u : users) {
    rows.push_back({u["id"], u["username"], joined(u["roles"]), u["status"], u["created_at"]});
  }
  printTable({"ID", "USERNAME", "ROLES", "STATUS", "CREATED AT"}, rows);
}

void printTokens(const Json& tokens, const std::string& output, bool withOwner) {
  if (output == "json") {
    fmt::print("{}\n", dumpJson(tokens));
    return;
  }
  std::vector<std::string> header = {"ID",        "NAME",       "SCOPES",    "ALLOW LIST",
                                     "LAST USED", "EXPIRES AT", "CREATED AT"};
  if (withOwner) header.push_back("OWNER");
  std::vector<std::vector<std::string>> rows;
  for (const auto& t : tokens) {
    std::string lastUsed = t["last_used"];
    if (lastUsed == "1970-01-01T00:00:00Z") lastUsed = "never";
    std::string name = t["token_name"];
    if (name.empty()) name = std::string("(") + t["login_type"].get<std::string>() + ")";
    std::vector<std::string> row = {
        t["id"],         name,           joined(t["scopes"]), joined(t["allow_list"]), lastUsed,
        t["expires_at"], t["created_at"]};
    if (withOwner) row.push_back(t.value("username", t["user_id"].get<std::string>()));
    rows.push_back(row);
  }
  printTable(header, rows);
}

int fail(const Error& e) {
  fmt::print(stderr, "tokenctl: {}\n", e.message);
  return kExitFailed;
}

// The first line of `fd` without its line end: a token from stdin (`check -`) or --token-file.
// Reads byte by byte up to the newline, so that nothing after the first line is consumed.
Result<std::string> readFirstLine(int fd, const std::string& what) {
  constexpr size_t kMaxLine = 4096;
  std::string line;
  for (char c; line.size() < kMaxLine;) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::fromErrno(errno, "Failed to read the token from " + what);
    if (n == 0 || c == '\n') break;
    line.push_back(c);
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) return makeError("no token on the first line of " + what);
  return line;
}

Result<std::string> readTokenFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) return Error::fromErrno(errno, "Failed to open the token file " + path);
  return readFirstLine(fd.get(), path);
}

// Every local user reads another process's command line (ps, /proc/<pid>/cmdline). A secret
// given there anyway is masked in place once parsed, which shortens, but cannot close, the
// window in which it shows. Only the argument that is the secret ("T", or "--token=T").
void maskOnCommandLine(int argc, char** argv, const std::string& secret) {
  if (secret.empty()) return;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == secret || (arg.starts_with("--token=") && arg.substr(8) == secret)) {
      std::memset(argv[i] + arg.size() - secret.size(), '*', secret.size());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "tokenctl: manage tokend's users, API tokens and sessions, and check tokens.\n\n"
      "Operator mode (--db DIR or TOKEND_DB) works on the key database in the daemon's data dir\n"
      "directly; the database's file permissions are the only gate. User mode (--socket PATH with\n"
      "TOKEND_TOKEN or --token-file FILE) goes through the daemon as the token's user.\n"
      "Keep tokens off the command line, where every local user sees them (ps): `check -` reads\n"
      "the token from stdin; a token given as an argument works but draws a warning.",
      "tokenctl"};
  app.require_subcommand(1);
  Options o;
  o.db = envOr("TOKEND_DB");
  o.token = envOr("TOKEND_TOKEN");
  o.socket = envOr("TOKEND_SOCKET");
  app.add_option("--db", o.db, "Operator mode: the daemon's data dir (env TOKEND_DB)");
  app.add_option("--socket", o.socket, "User mode: the daemon's Unix socket (env TOKEND_SOCKET)");
  app.add_option("--token", o.token,
                 "User mode: act as this token's user; every local user sees it in ps: prefer "
                 "env TOKEND_TOKEN or --token-file");
  std::string tokenFile;
  app.add_option("--token-file", tokenFile,
                 "User mode: act as the user of the token on this file's first line");
  size_t maxDbSize = 0;
  app.add_option_function<std::string>(
         "--max-db-size",
         [&maxDbSize](const std::string& text) {
           auto n = parseSize(text);
           if (!n || *n < verifier::kMinMaxMapSize)
             throw CLI::ValidationError("--max-db-size",
                                        "want a size of at least 256K, like 512M or 2G");
           maxDbSize = *n;
         },
         "Operator mode: the cap on the key database's size (K, M, G, T), as tokend's; stored in "
         "the database for every process (without it, the stored cap holds)")
      ->envname("TOKEND_MAX_DB_SIZE");
  o.postgres = envOr("TOKEND_POSTGRES");
  app.add_option("--postgres", o.postgres,
                 "PostgreSQL mode (SPEC 11): a libpq conninfo or URI (env TOKEND_POSTGRES)");

  // users
  auto* users = app.add_subcommand("users", "Manage users");
  users->require_subcommand(1);
  std::string username, userRef, rolesCsv;
  std::vector<std::string> roles;
  std::string userOutput = "table";
  auto* usersCreate = users->add_subcommand("create", "Create a user; prints its id");
  usersCreate->add_option("username", username, "[a-z0-9][a-z0-9-_]{0,31}")->required();
  usersCreate->add_option(
      "--role", roles,
      "A role besides member (repeatable): owner, auditor, template-admin, user-admin");
  auto* usersList = users->add_subcommand("list", "List users");
  usersList->add_option("-o,--output", userOutput, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  auto* usersView = users->add_subcommand("view", "Show one user");
  usersView->add_option("user", userRef, "Username or id")->required();
  usersView->add_option("-o,--output", userOutput, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  auto* usersSuspend =
      users->add_subcommand("suspend", "Suspend a user: their tokens stop verifying");
  usersSuspend->add_option("user", userRef, "Username or id")->required();
  auto* usersActivate = users->add_subcommand("activate", "Reactivate a suspended user");
  usersActivate->add_option("user", userRef, "Username or id")->required();
  auto* usersDelete = users->add_subcommand("delete", "Delete a user and all of their tokens");
  usersDelete->add_option("user", userRef, "Username or id")->required();
  auto* usersRoles = users->add_subcommand("roles", "Set a user's roles (member is implied)");
  usersRoles->add_option("user", userRef, "Username or id")->required();
  usersRoles->add_option("--set", rolesCsv, "ROLE[,ROLE]; an empty value leaves only member")
      ->required();

  // tokens
  auto* tokens = app.add_subcommand("tokens", "Manage API tokens");
  tokens->require_subcommand(1);
  TokenCreateArgs create;
  std::string createUser, createName, lifetimeText, tokenOutput;
  auto* tokensCreate = tokens->add_subcommand("create", "Create an API token; prints it once");
  tokensCreate->add_option("--name", createName,
                           "Token name, unique per user (default: a random name)");
  tokensCreate->add_option(
      "--user", createUser,
      "The token's user (required in operator mode; needs owner in user mode)");
  tokensCreate->add_option("--lifetime", lifetimeText,
                           "Lifetime, e.g. 30d, 720h (default: --default-token-lifetime)");
  tokensCreate->add_option("--scope", create.scopes,
                           "Scope (repeatable, comma lists too); default coder:all");
  tokensCreate->add_option("--allow", create.allowList,
                           "Allow-list entry type:uuid, type:* or *:* (repeatable); default *:*");
  tokensCreate->add_option("-o,--output", tokenOutput, "text (the token alone) or json")
      ->check(CLI::IsMember({"text", "json"}));
  bool listAll = false, includeExpired = false;
  std::string listUser;
  auto* tokensList = tokens->add_subcommand("list", "List tokens (expired ones hidden)");
  tokensList->add_option("--user", listUser, "Whose tokens (operator mode default: everyone's)");
  tokensList->add_flag("--all", listAll, "Every user's tokens, with an OWNER column");
  tokensList->add_flag("--include-expired", includeExpired, "Show expired tokens too");
  tokensList->add_option("-o,--output", tokenOutput, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  std::string tokenRef, tokenUser;
  auto* tokensView = tokens->add_subcommand("view", "Show one token");
  tokensView->add_option("token", tokenRef, "Name or id (or the token itself: shows in ps)")
      ->required();
  tokensView->add_option("--user", tokenUser, "The user whose token name this is");
  tokensView->add_option("-o,--output", tokenOutput, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  bool hardDelete = false;
  auto* tokensRemove =
      tokens->add_subcommand("remove", "Expire a token now (the record is kept), or delete it");
  tokensRemove->add_option("token", tokenRef, "Name or id (or the token itself: shows in ps)")
      ->required();
  tokensRemove->add_option("--user", tokenUser, "The user whose token name this is");
  tokensRemove->add_flag("--delete", hardDelete, "Delete the record instead of expiring it");

  // sessions
  auto* sessions = app.add_subcommand("sessions", "Manage session tokens");
  sessions->require_subcommand(1);
  std::string sessionUser, loginType = "password";
  auto* sessionsCreate =
      sessions->add_subcommand("create", "Create a session token; prints it once");
  sessionsCreate->add_option("--user", sessionUser, "The session's user")->required();
  sessionsCreate->add_option("--login-type", loginType, "password, oidc or github")
      ->check(CLI::IsMember({"password", "oidc", "github"}));

  // check
  std::string checkToken, checkPerm, checkObject, checkOwner;
  auto* check = app.add_subcommand(
      "check", "Verify a token; prints the text protocol's answer line; exit 0 allowed, 1 denied");
  check
      ->add_option("token", checkToken,
                   "- to read the token from stdin (or the token itself: shows in ps)")
      ->required();
  check->add_option("permission", checkPerm, "resource:action");
  check->add_option("object", checkObject, "type:uuid");
  check->add_option("--owner", checkOwner, "The object's owner (user uuid)");

  // import
  ImportCommand import;
  addImportCommand(app, import);

  DbCommand db;
  addDbCommand(app, db);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }

  // Secrets: from a file or stdin; one given as an argument still works, with one warning.
  bool secretOnArgv = false;
  if (app.get_option("--token")->count() > 0) {
    if (!tokenFile.empty()) {
      fmt::print(stderr, "tokenctl: give --token or --token-file, not both\n");
      return kExitUsage;
    }
    secretOnArgv = true;
    maskOnCommandLine(argc, argv, o.token);
  }
  if (!tokenFile.empty()) {
    auto t = readTokenFile(tokenFile);
    if (!t) {
      fmt::print(stderr, "tokenctl: {}\n", t.error().message);
      return kExitUsage;
    }
    o.token = std::move(*t);
  }
  if (check->parsed()) {
    if (checkToken == "-") {
      auto t = readFirstLine(STDIN_FILENO, "stdin");
      if (!t) {
        fmt::print(stderr, "tokenctl: check -: {}\n", t.error().message);
        return kExitUsage;
      }
      checkToken = std::move(*t);
    } else {
      secretOnArgv = true;
      maskOnCommandLine(argc, argv, checkToken);
    }
  }
  if ((tokensView->parsed() || tokensRemove->parsed()) && verifier::parseToken(tokenRef)) {
    secretOnArgv = true;
    maskOnCommandLine(argc, argv, tokenRef);
  }
  if (secretOnArgv) {
    fmt::print(stderr,
               "tokenctl: warning: a token on the command line is visible to every local user "
               "(ps, /proc/<pid>/cmdline): use `check -` (the token on stdin), TOKEND_TOKEN or "
               "--token-file FILE, and name a token to view or remove by its id or name\n");
  }

  if (db.command->parsed()) {
    if (o.postgres.empty()) {
      fmt::print(stderr,
                 "tokenctl: db works on PostgreSQL: name it with --postgres CONNINFO (or "
                 "TOKEND_POSTGRES)\n");
      return kExitUsage;
    }
    return runDb(o.postgres, db);
  }
  if (o.db.empty() && o.socket.empty()) {
    fmt::print(stderr,
               "tokenctl: name the database with --db DIR (or TOKEND_DB), or the daemon with "
               "--socket PATH (or TOKEND_SOCKET)\n");
    return kExitUsage;
  }
  if (import.command->parsed()) {
    if (o.db.empty()) {
      fmt::print(stderr,
                 "tokenctl: import works in operator mode only: name the database with --db\n");
      return kExitUsage;
    }
    import.options.maxDbSize = maxDbSize;
    return runImport(o.db, import.options);
  }
  Result<std::unique_ptr<Backend>> backend = [&]() -> Result<std::unique_ptr<Backend>> {
    if (!o.db.empty()) return openOperatorBackend(o.db, maxDbSize);
    return openSocketBackend(o.socket, o.token);
  }();
  if (!backend) {
    fmt::print(stderr, "tokenctl: {}\n", backend.error().message);
    return check->parsed() ? kExitNoAnswer : kExitFailed;
  }
  Backend& b = **backend;
  auto opt = [](const std::string& s) {
    return s.empty() ? std::nullopt : std::optional<std::string>(s);
  };

  if (usersCreate->parsed()) {
    auto r = b.createUser(username, roles);
    if (!r) return fail(r.error());
    fmt::print("{}\n", (*r)["id"].get<std::string>());
  } else if (usersList->parsed()) {
    auto r = b.listUsers();
    if (!r) return fail(r.error());
    printUsers(*r, userOutput);
  } else if (usersView->parsed()) {
    auto r = b.viewUser(userRef);
    if (!r) return fail(r.error());
    printUsers(userOutput == "json" ? *r : Json::array({*r}), userOutput);
  } else if (usersSuspend->parsed() || usersActivate->parsed()) {
    auto r = b.setUserActive(userRef, usersActivate->parsed());
    if (!r) return fail(r.error());
    fmt::print("User {} is {}.\n", (*r)["username"].get<std::string>(),
               (*r)["status"].get<std::string>());
  } else if (usersDelete->parsed()) {
    auto r = b.deleteUser(userRef);
    if (!r) return fail(r.error());
    fmt::print("User {} and their tokens are deleted.\n", (*r)["username"].get<std::string>());
  } else if (usersRoles->parsed()) {
    auto r = b.setUserRoles(userRef, {rolesCsv});
    if (!r) return fail(r.error());
    fmt::print("User {} has roles {}.\n", (*r)["username"].get<std::string>(),
               joined((*r)["roles"]));
  } else if (tokensCreate->parsed()) {
    create.user = opt(createUser);
    create.name = opt(createName);
    if (tokensCreate->count("--name") && createName.empty()) {
      fmt::print(stderr, "tokenctl: --name must not be empty\n");
      return kExitUsage;
    }
    if (!lifetimeText.empty()) {
      auto d = parseDuration(lifetimeText);
      if (!d) return fail(d.error());
      create.lifetime = *d;
    }
    auto r = b.createToken(create);
    if (!r) return fail(r.error());
    if (tokenOutput == "json") {
      fmt::print("{}\n", dumpJson(*r));
    } else {
      fmt::print("{}\n", (*r)["key"].get<std::string>());
    }
  } else if (tokensList->parsed()) {
    auto r = b.listTokens(opt(listUser), listAll, includeExpired);
    if (!r) return fail(r.error());
    printTokens(*r, tokenOutput, listAll || (!o.db.empty() && listUser.empty()));
  } else if (tokensView->parsed()) {
    auto r = b.viewToken(tokenRef, opt(tokenUser));
    if (!r) return fail(r.error());
    printTokens(tokenOutput == "json" ? *r : Json::array({*r}), tokenOutput, true);
  } else if (tokensRemove->parsed()) {
    auto r = b.removeToken(tokenRef, opt(tokenUser), hardDelete);
    if (!r) return fail(r.error());
    fmt::print("Token {} ({}) is {}.\n", (*r)["token_name"].get<std::string>(),
               (*r)["id"].get<std::string>(), hardDelete ? "deleted" : "expired");
  } else if (sessionsCreate->parsed()) {
    auto r = b.createSession(sessionUser, loginType);
    if (!r) return fail(r.error());
    fmt::print("{}\n", (*r)["key"].get<std::string>());
  } else if (check->parsed()) {
    auto r = b.check(checkToken, checkPerm, checkObject, checkOwner);
    if (!r) {
      fmt::print(stderr, "tokenctl: {}\n", r.error().message);
      return kExitNoAnswer;
    }
    fmt::print("{}\n", *r);
    return r->rfind("OK ", 0) == 0 ? 0 : kExitFailed;
  }
  return 0;
}

}  // namespace tokend::tools

int main(int argc, char** argv) {
  return tokend::tools::main(argc, argv);
}
