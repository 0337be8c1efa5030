#!/bin/sh
# Builds tests/client/c_example.c as a user would (the header and pkg-config, nothing else), once
# against the shared library and once against the static archive, and runs both against a tokend.
# Usage: c_example.sh BUILD_ROOT C_SOURCE TOKEND [CC]
set -eu
build=$1
src=$2
tokend=$3
cc=${4:-cc}

tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

export PKG_CONFIG_PATH="$build/meson-uninstalled"
cflags=$(pkg-config --cflags tokend)
libs=$(pkg-config --libs tokend)
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Wextra -Werror -pedantic $cflags "$src" -o "$tmp/c_shared" $libs
# The static archive carries libtokend's own objects; Libs.private and Requires.private name the
# rest (the C++ runtime, OpenSSL, LMDB, fmt).
static_libs=$(pkg-config --static --libs tokend | sed 's/-ltokend/-l:libtokend.a/')
# shellcheck disable=SC2086
"$cc" -std=c99 -Wall -Wextra -Werror -pedantic $cflags "$src" -o "$tmp/c_static" $static_libs
if ldd "$tmp/c_static" | grep -q libtokend; then
  echo "c_static is linked against the shared libtokend" >&2
  exit 1
fi
# libtokend never reads the test clock, linked either way (SPEC 12; tests/base/clock_test.cpp).
for variant in c_shared c_static; do
  if grep -q TOKEND_CLOCK_OFFSET "$tmp/$variant" "$build/client/libtokend.so"; then
    echo "$variant (or libtokend.so) reads TOKEND_CLOCK_OFFSET" >&2
    exit 1
  fi
done

"$tokend" --data-dir "$tmp/data" --log-level warn >"$tmp/out" 2>"$tmp/err" &
pid=$!
i=0
while [ ! -S "$tmp/data/tokend.sock" ]; do
  i=$((i + 1))
  if [ $i -gt 500 ]; then
    echo "tokend did not start:" >&2
    cat "$tmp/err" >&2
    exit 1
  fi
  sleep 0.01
done
# The owner's first token is in the data dir (stdout is not a terminal here, so not there).
token=$(head -n 1 "$tmp/data/first-token")

for variant in c_shared c_static; do
  LD_LIBRARY_PATH="$build/client" "$tmp/$variant" "$tmp/data/tokend.sock" "$token" >"$tmp/result"
  echo "--- $variant"
  cat "$tmp/result"
  # Two allowed answers, the second from shared memory; then the batch: ok, malformed, bad_request.
  [ "$(sed -n 2p "$tmp/result" | cut -d' ' -f1,3,5)" = "OK admin token" ]
  sed -n 3p "$tmp/result" | grep -q '^OK .* admin .*(shm)$'
  sed -n 4p "$tmp/result" | grep -q '^OK .* admin '
  [ "$(sed -n 5p "$tmp/result" | cut -d' ' -f1-3)" = "DENY malformed 401" ]
  [ "$(sed -n 6p "$tmp/result" | cut -d' ' -f1-3)" = "DENY bad_request 400" ]
  sed -n 1p "$tmp/result" | grep -q 'fast path on'
done
echo "c_example: ok"
