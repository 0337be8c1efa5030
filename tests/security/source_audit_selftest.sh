#!/usr/bin/env bash
# Checks that source_audit.sh can fail: on a copy of the sources it passes, and it fails once a
# second minter (CSPRNG bytes mapped to the token alphabet) or a plain == on a secret hash is
# added to tools/ (the importer had both).
#   source_audit_selftest.sh <source root>
set -uo pipefail
root=$(cd "${1:-$(dirname "$0")/../..}" && pwd) || exit 1
audit=$root/tests/security/source_audit.sh
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
fail=0

# A fresh copy of the audited sources, with `line` appended to `file` (none: unchanged).
copy() {
  rm -rf "$tmp/src" && mkdir -p "$tmp/src" &&
    cp -r "$root"/{base,verifier,shm,daemon,client,tools} "$tmp/src/" || exit 1
  if [[ $# == 2 ]]; then printf '%s\n' "$2" >>"$tmp/src/$1"; fi
}
# expect <what> <pass|fail> <text the audit must print>
expect() {
  out=$(bash "$audit" "$tmp/src" 2>&1)
  rc=$?
  if [[ $2 == pass && $rc != 0 ]] || [[ $2 == fail && $rc == 0 ]] || ! grep -qF -- "$3" <<<"$out"; then
    echo "source audit self-test: $1: want $2 with \"$3\", got exit $rc:"$'\n'"$out"
    fail=1
  fi
}

copy
expect "the sources as they are" pass "ok"
copy tools/ctl_import.cc '    if (RAND_bytes(pool_, sizeof pool_) != 1) std::abort();'
expect "RAND_bytes in the importer" fail "CSPRNG bytes drawn outside the one minter"
copy tools/ctl_import.cc 'static constexpr char kMine[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";'
expect "the alphabet in the importer" fail "the token alphabet outside verifier/token.cc"
copy tools/tokenctl.cc '  std::string secret = id + "-" + randomAlnum(kSecretLength);'
expect "a secret from randomAlnum in tokenctl" fail "characters drawn by randomAlnum"
copy tools/ctl_import.cc '          if (stored->secretHash == mine->secretHash) return;'
expect "a plain == on secretHash in the importer" fail "compared other than in constant time"
copy tools/ctl_operator.cc '  bool same = std::memcmp(a.data(), digest.data(), 32) == 0;'
expect "memcmp on a digest in operator mode" fail "compared other than in constant time"

if ((fail)); then exit 1; fi
echo "source audit self-test: it passes the sources and catches a second minter and a plain compare"
