#!/usr/bin/env bash
# libpq stays in replica/ (and tokenctl's ctl_postgres.cc): the token model, the cache and the
# daemon's core never see it (docs/replication.md, STYLE.md's dependency table).
#   layering.sh <source root>
set -uo pipefail
cd "${1:-$(dirname "$0")/../..}" || exit 1
fail=0
if hits=$(grep -rnE '#include\s*[<"](libpq-fe\.h|postgresql/|replica/)' base verifier shm client \
  daemon/*.h daemon/service.cc daemon/session.cc daemon/management.cc 2>/dev/null); then
  echo "libpq or replica/ included below the replica module:"$'\n'"$hits"
  fail=1
fi
if grep -n "libpq" verifier/meson.build shm/meson.build base/meson.build client/meson.build; then
  echo "libpq linked below the replica module"
  fail=1
fi
exit $fail
