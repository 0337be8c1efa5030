// tokenload's token sets: creating many tokens in the key database in a few big write
// transactions, and the token file that lets later runs reuse them.
//
// Token file (mode 0600: it holds secrets), one entry a line:
//   # comment lines, e.g. the header tokenload writes
//   <token>            a token expected to verify (the "valid" pool)
//   expired <token>    a token expected to be refused as expired
// A file of bare tokens, one a line, is therefore a valid token file too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"

namespace tokend::tools {

struct TokenSet {
  std::vector<std::string> valid;
  std::vector<std::string> expired;
};

Result<TokenSet> readTokenFile(const std::string& path);
// Replaces the file whole (write to a temporary, rename), mode 0600.
Result<void> writeTokenFile(const std::string& path, const TokenSet& set,
                            const std::string& header);

struct CreateTokensOptions {
  std::string dbDir;                // the daemon's data dir (tokenctl --db)
  size_t valid = 0;                 // tokens that verify
  size_t expired = 0;               // tokens created already expired
  std::vector<std::string> scopes;  // of every token; the permission asked for must be in them
  int64_t lifetimeSeconds = 365 * 86400;
  size_t batch = 10000;  // tokens per write transaction
};

// Creates a fresh user "tokenload-<random>" with the owner role (so that roles never deny what
// the scopes grant) and the tokens, directly in the key database. Expired tokens are written
// with expires_at = now - 1, as Manager::expireToken does. The returned `user` names the user.
struct CreatedTokens {
  TokenSet set;
  std::string username;
};
Result<CreatedTokens> createTokens(const CreateTokensOptions& options);

// What a run expects of its tokens, checked on a sample against the database before a run
// reuses a token file: the first valid token verifies for `permission` (empty: none), is refused
// `scope` for `deniedPermission` (when not empty), and the first expired token is refused
// `expired`. False (with a reason in `why`) when the file no longer fits the database, e.g. the
// data dir was recreated.
Result<bool> tokensFit(const std::string& dbDir, const TokenSet& set, const std::string& permission,
                       const std::string& deniedPermission, std::string& why);

}  // namespace tokend::tools
