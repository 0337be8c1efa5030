// tokenctl import: bulk-loads tokens from JSON lines into the key database, in large transactions.
//
// Input: one JSON object a line (blank lines are skipped), in the shape `tokens list -o json`
// prints, plus where the secret comes from:
//   "user" (or "username", "user_id")   username or uuid of the token's user (required)
//   "key": "<id>-<secret>"              the whole token, or
//   "id" + "secret"                     its two halves, or
//   "id" + "hashed_secret"              the id and the hex SHA-256 of the secret (Coder's
//                                       api_keys.hashed_secret): the secret is never needed, or
//   none of them                        a new token is minted; its key is printed once
//   "name" (or "token_name")            token kind only; default "import-<id>"
//   "login_type"                        token (default), password, oidc or github
//   "scopes", "allow_list"              arrays of strings (or comma-separated strings)
//   "lifetime" (or "lifetime_seconds")  seconds or a duration ("30d"); default and cap as for
//                                       `tokens create` (sessions: --session-duration)
//   "expires_at", "created_at", "last_used", "updated_at"
//                                       Unix seconds or RFC 3339; an explicit expires_at is kept
//                                       as given (a migration keeps its expiries), uncapped
// Unknown fields are refused, so that a misspelt "scope" does not silently grant coder:all.
//
// Writing: lines are read, parsed and hashed on one thread while the previous batch is written on
// another. Each batch of --batch lines is one write transaction, written in id order (so the
// B-tree pages it touches are visited once, in order). A batch with any bad line is refused
// whole: nothing of it is written, every bad line is named (up to a limit), and the import stops;
// the batches before it stay committed and the message says which lines they were, so a rerun
// with --from-line resumes after them. Minted keys are printed (stdout, or --keys-out) only once
// their batch is committed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace tokend::tools {

struct ImportOptions {
  std::string input = "-";  // a path, or "-" for stdin
  size_t batch = 50000;     // lines per write transaction
  std::string keysOut;      // where minted keys go, one a line; empty: stdout
  bool createUsers = false;
  uint64_t fromLine = 1;  // lines before it are skipped
  bool dryRun = false;    // check every batch against the database, write nothing
  bool quiet = false;     // no progress lines
};

struct ImportCommand {
  CLI::App* command = nullptr;
  ImportOptions options;
};

// Adds the `import` subcommand to `app`; `cmd` receives its options when it is parsed.
void addImportCommand(CLI::App& app, ImportCommand& cmd);

// Runs the import on the key database in `dbDir`; prints its summary and errors to stderr and
// returns tokenctl's exit code (0 all imported, 1 refused or failed).
int runImport(const std::string& dbDir, const ImportOptions& options);

}  // namespace tokend::tools
