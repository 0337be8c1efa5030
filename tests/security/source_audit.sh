#!/usr/bin/env bash
# Source audit (docs/security.md): secrets come only from the CSPRNG and are compared only in
# constant time. Greps the sources the daemon, the CLI and the client library are built from.
#   source_audit.sh <source root>
set -uo pipefail
root=${1:-$(dirname "$0")/../..}
cd "$root" || exit 1
dirs=(base verifier shm daemon client tools/tokenctl.cc tools/ctl_operator.cc tools/ctl_socket.cc tools/ctl_backend.h)
fail=0
problem() {
  echo "source audit: $*"
  fail=1
}

# 1. No non-cryptographic randomness anywhere a secret, an id or a name could come from.
if hits=$(grep -rnE '\b(rand|random|srand|srandom|drand48|lrand48|mrand48)\s*\(|std::(mt19937|minstd_rand|default_random_engine|random_device|ranlux)' \
  "${dirs[@]}" 2>/dev/null | grep -v 'Uuid::random\|Uuid random' | grep -vE '^\S+:[0-9]+:\s*//'); then
  problem "non-CSPRNG randomness:"$'\n'"$hits"
fi
# 2. Token secrets are minted by randomAlnum (RAND_bytes with rejection sampling) only.
grep -q 'RAND_bytes(buf, sizeof buf) != 1) std::abort()' verifier/token.cc ||
  problem "randomAlnum no longer draws from RAND_bytes (verifier/token.cc)"
grep -q 'if (b >= kRejectFrom) continue;' verifier/token.cc ||
  problem "randomAlnum no longer rejects biased bytes (verifier/token.cc)"
grep -q 'return NewToken{randomAlnum(kTokenIdLength), randomAlnum(kSecretLength)};' verifier/token.cc ||
  problem "mintToken no longer takes id and secret from randomAlnum"
if hits=$(grep -rn 'randomAlnum(' "${dirs[@]}" | grep -v '^verifier/token\.[ch]'); then
  problem "secrets minted outside verifier/token.cc:"$'\n'"$hits"
fi
# 3. Secret hashes are compared only by digestEquals, which ORs the XORs of the four words of
#    the digests behind an optimisation barrier and tests the result once, after the loop.
body=$(sed -n '/^bool digestEquals(const uint8_t\* a, const uint8_t\* b) {$/,/^}$/p' verifier/token.cc)
grep -q 'diff |= x ^ y;' <<<"$body" && grep -qF 'asm("" : "+r"(diff));' <<<"$body" &&
  [[ $(grep -c 'return' <<<"$body") == 1 ]] && grep -q 'return diff == 0;' <<<"$body" &&
  ! grep -qE '\b(if|while|break|goto)\b|\?' <<<"$body" ||
  problem "digestEquals is no longer the branch-free OR of XORs (verifier/token.cc)"
if hits=$(grep -rnE 'secretHash\s*[!=]=|[!=]=\s*[a-zA-Z_.>-]*secretHash|memcmp\([^)]*([Hh]ash|[Dd]igest|secret)|(presented|digest)[a-zA-Z_]*\s*[!=]=' \
  "${dirs[@]}" | grep -v CRYPTO_memcmp | grep -vE '^\S+:[0-9]+:\s*//'); then
  problem "secret hashes compared other than in constant time:"$'\n'"$hits"
fi
# 4. The decision compares through digestEquals.
grep -q 'if (!digestEquals(t.secretHash, presented.data())) return Reason::BadSecret;' verifier/verify.cc ||
  problem "decide() no longer checks the secret with digestEquals (verifier/verify.cc)"

if ((fail)); then exit 1; fi
echo "source audit: CSPRNG-only secrets, constant-time comparison: ok"
