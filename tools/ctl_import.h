// tokenctl import: bulk-loads tokens from JSON lines into the key database.
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
// How, and what is atomic:
//  1. Check. The input is read and every line parsed, checked and hashed (on every core), then
//     sorted by token id and checked as a whole (an id or a user's token name twice) and against
//     the database (users, ids and names already taken). Any bad line refuses the whole import
//     before anything is written, naming the bad lines.
//  2. Write. One write transaction per --batch tokens, in id order, through
//     Writer::insertNewTokens (sorted cursor writes: each B-tree page is touched once per batch,
//     not once per token). A batch that fails (a full disk, or another writer taking an id or a
//     name since the check) is rolled back whole and the import stops; the batches before it
//     stay, and the message says how many tokens they hold and how to finish (--skip-existing).
//  Minted keys are printed (stdout, or --keys-out, mode 0600) in input order, only for tokens
//  that were committed.
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
  size_t batch = 50000;     // tokens per write transaction
  std::string keysOut;      // where minted keys go, one a line; empty: stdout
  bool createUsers = false;
  bool skipExisting = false;  // a token already stored with the same id, user and hash: skip it
  bool dryRun = false;        // check everything against the database, write nothing
  bool quiet = false;         // no progress lines
  unsigned threads = 0;       // parsing threads; 0: one per core
  size_t maxDbSize = 0;       // KeyDbOptions::maxMapSize: 0 keeps the database's stored cap
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
