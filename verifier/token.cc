// Token minting, parsing and hashing.
#include "verifier/token.h"

#include <openssl/rand.h>

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
