#!/bin/bash
# Memory and connections one local peer (uid 65534) holds with N connections that each pipeline
# 3000 GET /metrics and never read. Needs root (setpriv). Usage:
#   bench/limits/never_reading_peer.sh build/daemon/tokend 1200
set -eu
B=$1; N=$2
HERE=$(cd "$(dirname "$0")" && pwd)
D=$(mktemp -d /tmp/tokend-peer.XXXXXX); chmod 755 "$D"; mkdir -m 755 "$D/sock"
cp "$HERE/hog.py" "$D/hog.py"; chmod 644 "$D/hog.py"
"$B" --data-dir "$D/data" --socket "$D/sock/t.sock" --socket-mode 0666 --threads 2 >"$D/out" 2>"$D/err" &
P=$!
for _ in $(seq 50); do [ -S "$D/sock/t.sock" ] && break; sleep 0.1; done
sleep 0.5
r0=$(awk '/VmRSS/{print $2}' /proc/$P/status)
setpriv --reuid 65534 --regid 65534 --clear-groups /usr/bin/python3 "$D/hog.py" "$D/sock/t.sock" "$N" &
H=$!
sleep 7.5
r1=$(awk '/VmRSS/{print $2}' /proc/$P/status)
curl -s --unix-socket "$D/sock/t.sock" http://x/metrics |
  grep -E "^tokend_(connections_open|buffered_output_bytes|connections_shed_total|connections_refused_per_uid_total|connections_refused_total) " || true
wait $H
echo "VmRSS $r0 -> $r1 KiB (+$(( (r1 - r0) / 1024 )) MiB)"
kill $P; wait $P || true; rm -rf "$D"
