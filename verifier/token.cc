// Token minting, parsing and hashing.
#include "verifier/token.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>
#include <cstdlib>

namespace tokend::verifier {
namespace {
constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr unsigned kAlphabetSize = 62;
// The largest multiple of 62 below 256: bytes at or above it are redrawn, so each character is
// equally likely.
constexpr unsigned kRejectFrom = 256 - 256 % kAlphabetSize;

// [0-9A-Za-z] by table: parseToken() runs on every request, and the three range tests per
// character cost more than the load.
constexpr std::array<bool, 256> kIsAlnum = [] {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  return t;
}();
bool allAlnum(std::string_view s) {
  bool ok = true;
  for (char c : s) ok &= kIsAlnum[static_cast<unsigned char>(c)];  // no early exit: no branch
  return ok;
}
}  // namespace

std::optional<ParsedToken> parseToken(std::string_view text) {
  if (text.size() != kTokenLength || text[kTokenIdLength] != '-') return std::nullopt;
  ParsedToken t{text.substr(0, kTokenIdLength), text.substr(kTokenIdLength + 1)};
  if (!allAlnum(t.id) || !allAlnum(t.secret)) return std::nullopt;
  return t;
}

bool isTokenId(std::string_view id) {
  return id.size() == kTokenIdLength && allAlnum(id);
}

std::string randomAlnum(size_t n) {
  std::string out;
  out.reserve(n);
  unsigned char buf[64];
  while (out.size() < n) {
    if (RAND_bytes(buf, sizeof buf) != 1) std::abort();
    for (unsigned char b : buf) {
      if (b >= kRejectFrom) continue;
      out.push_back(kAlphabet[b % kAlphabetSize]);
      if (out.size() == n) break;
    }
  }
  return out;
}

NewToken mintToken() {
  return NewToken{randomAlnum(kTokenIdLength), randomAlnum(kSecretLength)};
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()), md_(EVP_MD_fetch(nullptr, "SHA256", nullptr)) {
  if (ctx_ == nullptr || md_ == nullptr) std::abort();
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(ctx_);
  EVP_MD_free(md_);
}

Digest Sha256::digest(std::string_view data) {
  Digest d;
  unsigned len = 0;
  // A fetched EVP_MD and a reused context avoid OpenSSL 3's per-call provider lookups.
  if (EVP_DigestInit_ex2(ctx_, md_, nullptr) != 1 ||
      EVP_DigestUpdate(ctx_, data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx_, d.data(), &len) != 1) {
    std::abort();
  }
  return d;
}

bool digestEquals(const uint8_t* a, const uint8_t* b) {
  return CRYPTO_memcmp(a, b, 32) == 0;
}

}  // namespace tokend::verifier
