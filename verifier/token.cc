// Token minting, parsing and hashing.
#include "verifier/token.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>

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

std::string redactTokenRef(std::string_view ref) {
  if (ref.size() > kTokenIdLength && ref[kTokenIdLength] == '-' &&
      isTokenId(ref.substr(0, kTokenIdLength)))
    return std::string(ref.substr(0, kTokenIdLength)) + "-…";
  return std::string(ref);
}

TokenMinter::TokenMinter(size_t poolBytes)
    : poolBytes_(std::clamp<size_t>(poolBytes, 1, sizeof pool_)), pos_(poolBytes_) {}

TokenMinter::~TokenMinter() {
  OPENSSL_cleanse(pool_, sizeof pool_);
  OPENSSL_cleanse(key_, sizeof key_);
}

void TokenMinter::fill(char* out, size_t n) {
  for (size_t i = 0; i < n;) {
    if (pos_ == poolBytes_) {
      if (RAND_bytes(pool_, static_cast<int>(poolBytes_)) != 1) std::abort();
      pos_ = 0;
    }
    unsigned char b = pool_[pos_];
    pool_[pos_++] = 0;
    if (b >= kRejectFrom) continue;
    out[i++] = kAlphabet[b % kAlphabetSize];
  }
}

std::string_view TokenMinter::mint() {
  fill(key_, kTokenIdLength);
  key_[kTokenIdLength] = '-';
  fill(key_ + kTokenIdLength + 1, kSecretLength);
  return {key_, kTokenLength};
}

std::string randomAlnum(size_t n) {
  std::string out(n, '\0');
  TokenMinter().fill(out.data(), n);
  return out;
}

NewToken mintToken() {
  TokenMinter minter;
  std::string_view key = minter.mint();
  return NewToken{std::string(key.substr(0, kTokenIdLength)),
                  std::string(key.substr(kTokenIdLength + 1))};
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

// Four 8-byte words, not CRYPTO_memcmp's 32 bytes one by one (17 ns of a 200 ns libtokend fast
// path, docs/benchmarks.md): still no early exit and no data-dependent branch or index. The empty
// asm makes the accumulator opaque after each word, so the compiler can neither stop at the first
// difference nor turn the OR of XORs into compares and branches.
bool digestEquals(const uint8_t* a, const uint8_t* b) {
  uint64_t diff = 0;
  for (size_t i = 0; i < 32; i += 8) {
    uint64_t x;
    uint64_t y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    diff |= x ^ y;
    asm("" : "+r"(diff));
  }
  return diff == 0;
}

}  // namespace tokend::verifier
