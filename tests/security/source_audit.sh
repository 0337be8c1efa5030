#!/usr/bin/env bash
# Source audit (docs/security.md): secrets come only from the CSPRNG, through one minter, and are
# compared only in constant time. Greps the sources the daemon, the CLI (tokenctl and its
# importer) and the client library are built from, and tokenload's (which mints its test tokens
# with the same minter).
#   source_audit.sh <source root>
# tests/security/source_audit_selftest.sh checks that it catches a second minter and a plain
# compare.
set -uo pipefail
root=${1:-$(dirname "$0")/../..}
cd "$root" || exit 1
dirs=(base verifier shm daemon client tools)
# The load generator draws its request mix from a seeded std::mt19937_64, so that a run can be
# repeated; no secret, id or name comes from it (its tokens come from mintToken). Rules 2 and 3
# hold there too.
not_secret_rng='^tools/tokenload\.cc:'
# The one minter's home, and the other places allowed to draw CSPRNG bytes: UUIDs, the random
# readable token names ("<adjective>-<noun>") and the segment's generation number, none of
# them a secret.
minter='^verifier/token\.(cc|h):'
other_csprng='^(base/uuid\.cc|verifier/manage\.cc|shm/segment\.cc):'
fail=0
problem() {
  echo "source audit: $*"
  fail=1
}

# 1. No non-cryptographic randomness anywhere a secret, an id or a name could come from.
if hits=$(grep -rnE '\b(rand|random|srand|srandom|drand48|lrand48|mrand48)\s*\(|std::(mt19937|minstd_rand|default_random_engine|random_device|ranlux)' \
  "${dirs[@]}" 2>/dev/null | grep -v 'Uuid::random\|Uuid random' | grep -vE "$not_secret_rng" |
  grep -vE '^\S+:[0-9]+:\s*//'); then
  problem "non-CSPRNG randomness:"$'\n'"$hits"
fi
# 2. Token secrets are minted by TokenMinter (RAND_bytes with rejection sampling) only: its fill()
#    draws from RAND_bytes and rejects biased bytes, and mint(), mintToken() and randomAlnum()
#    take every character from fill().
fill=$(sed -n '/^void TokenMinter::fill(char\* out, size_t n) {$/,/^}$/p' verifier/token.cc)
grep -qF 'if (RAND_bytes(pool_, static_cast<int>(poolBytes_)) != 1) std::abort();' <<<"$fill" ||
  problem "TokenMinter::fill no longer draws from RAND_bytes (verifier/token.cc)"
grep -qF 'if (b >= kRejectFrom) continue;' <<<"$fill" ||
  problem "TokenMinter::fill no longer rejects biased bytes (verifier/token.cc)"
grep -qF 'out[i++] = kAlphabet[b % kAlphabetSize];' <<<"$fill" ||
  problem "TokenMinter::fill no longer maps an unbiased byte to one character (verifier/token.cc)"
mint=$(sed -n '/^std::string_view TokenMinter::mint() {$/,/^}$/p' verifier/token.cc)
[[ $(grep -c '^  fill(' <<<"$mint") == 2 ]] ||
  problem "TokenMinter::mint no longer takes the id and the secret from fill() (verifier/token.cc)"
grep -A3 '^NewToken mintToken() {$' verifier/token.cc | grep -qF 'minter.mint();' ||
  problem "mintToken no longer takes its token from TokenMinter::mint (verifier/token.cc)"
grep -A3 '^std::string randomAlnum(size_t n) {$' verifier/token.cc | grep -qF 'TokenMinter().fill(' ||
  problem "randomAlnum no longer takes its characters from TokenMinter::fill (verifier/token.cc)"
#    A second minter needs CSPRNG bytes or the token alphabet: neither appears anywhere else.
if hits=$(grep -rnE '\bRAND_(priv_)?bytes\s*\(|\bgetrandom\s*\(|/dev/u?random' "${dirs[@]}" |
  grep -vE "$minter|$other_csprng" | grep -vE '^\S+:[0-9]+:\s*//'); then
  problem "CSPRNG bytes drawn outside the one minter (verifier/token.cc): a second minter?"$'\n'"$hits"
fi
if hits=$(grep -rnE '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ|ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz' \
  "${dirs[@]}" | grep -vE "$minter"); then
  problem "the token alphabet outside verifier/token.cc: a second minter?"$'\n'"$hits"
fi
#    Secrets come from mint() or mintToken(); randomAlnum() (the same draw) makes only a tokenload
#    user's name suffix.
if hits=$(grep -rn 'randomAlnum(' "${dirs[@]}" | grep -vE "$minter" |
  grep -vF 'tools/load_tokens.cc:96:  std::string suffix = randomAlnum(8);'); then
  problem "characters drawn by randomAlnum outside verifier/token.cc (a secret minted by hand?):"$'\n'"$hits"
fi
# 3. Secret hashes are compared only by digestEquals, which ORs the XORs of the four words of
#    the digests behind an optimisation barrier and tests the result once, after the loop.
body=$(sed -n '/^bool digestEquals(const uint8_t\* a, const uint8_t\* b) {$/,/^}$/p' verifier/token.cc)
grep -q 'diff |= x ^ y;' <<<"$body" && grep -qF 'asm("" : "+r"(diff));' <<<"$body" &&
  [[ $(grep -c 'return' <<<"$body") == 1 ]] && grep -q 'return diff == 0;' <<<"$body" &&
  ! grep -qE '\b(if|while|break|goto)\b|\?' <<<"$body" ||
  problem "digestEquals is no longer the branch-free OR of XORs (verifier/token.cc)"
if hits=$(grep -rnE 'secretHash\s*[!=]=|[!=]=\s*[a-zA-Z_.>-]*secretHash|memcmp\(.*([Hh]ash|[Dd]igest|[Ss]ecret)|(presented|digest)[a-zA-Z_]*\s*[!=]=' \
  "${dirs[@]}" | grep -v CRYPTO_memcmp | grep -vE '^\S+:[0-9]+:\s*//'); then
  problem "secret hashes compared other than in constant time:"$'\n'"$hits"
fi
# 4. The decision compares through digestEquals.
grep -q 'if (!digestEquals(t.secretHash, presented.data())) return Reason::BadSecret;' verifier/verify.cc ||
  problem "decide() no longer checks the secret with digestEquals (verifier/verify.cc)"

if ((fail)); then exit 1; fi
echo "source audit: CSPRNG-only secrets from one minter, constant-time comparison: ok"
