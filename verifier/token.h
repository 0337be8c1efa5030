// Token format: minting from the CSPRNG, strict parsing, SHA-256 of the secret, constant-time
// compare.
#pragma once

#include <openssl/evp.h>

#include <optional>
#include <string>
#include <string_view>

#include "verifier/records.h"

namespace tokend::verifier {

struct ParsedToken {
  std::string_view id;      // kTokenIdLength characters
  std::string_view secret;  // kSecretLength characters
};

// "<10 alnum>-<22 alnum>", nothing else; nullopt is the `malformed` verdict.
std::optional<ParsedToken> parseToken(std::string_view text);
bool isTokenId(std::string_view id);

// `ref` (a token name, id or whole token from a user) as a message may show it: anything that
// starts like a token ("<10 alnum>-...") is cut to "<id>-…", so a whole token, or one mistyped or
// cut short, never has its secret echoed into an error message, a log or a 404 body.
std::string redactTokenRef(std::string_view ref);

// The one minter of secrets: characters drawn without bias from 0-9A-Za-z by rejection sampling
// of RAND_bytes, from a pool of CSPRNG bytes refilled `poolBytes` at a time (each byte is zeroed
// once used, and the pool on destruction). Aborts if the CSPRNG fails, since a predictable token
// is worse than no token. randomAlnum() and mintToken() use a small pool per call; a bulk minter
// (tokenctl import) keeps one with kBulkPool, since one RAND_bytes call per token costs more than
// the rest of an import line. Not thread-safe: one per thread.
class TokenMinter {
 public:
  static constexpr size_t kSmallPool = 64;
  static constexpr size_t kBulkPool = 4096;
  explicit TokenMinter(size_t poolBytes = kSmallPool);
  ~TokenMinter();
  TokenMinter(const TokenMinter&) = delete;
  TokenMinter& operator=(const TokenMinter&) = delete;

  // n characters into `out`.
  void fill(char* out, size_t n);
  // A new "<id>-<secret>", valid until the next call or the minter's end.
  std::string_view mint();

 private:
  unsigned char pool_[kBulkPool];
  size_t poolBytes_;
  size_t pos_;
  char key_[kTokenLength];
};

// n characters from a TokenMinter.
std::string randomAlnum(size_t n);

struct NewToken {
  std::string id;
  std::string secret;
  std::string text() const { return id + "-" + secret; }
};
// A new token's id and secret, from a TokenMinter.
NewToken mintToken();

// SHA-256 through one reused EVP context. Not thread-safe: one per thread.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  Digest digest(std::string_view data);

 private:
  EVP_MD_CTX* ctx_;
  EVP_MD* md_;
};

// Constant-time comparison of two 32-byte digests: the OR of the XORs of their four words.
bool digestEquals(const uint8_t* a, const uint8_t* b);

}  // namespace tokend::verifier
