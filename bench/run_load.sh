#!/usr/bin/env bash
# bench/run_load.sh: tokend's socket throughput with tokenload, against redis-benchmark GET on a
# Unix-socket redis-server as the reference, at the same connections and pipeline depths.
#
# Starts a tokend (and a redis-server) in a temporary directory, runs the matrix
#   protocol (binary, text, http) x connections (1, 16, 64) x depth (1, 32) x cache (hit, miss)
# with tokenload, and redis-benchmark -t get at each (connections, depth); writes one result file
# per case into $RESULTS and prints a markdown table and the tokend-binary / Redis-GET ratios.
#
#   cache hit:  the default cache (65536 slots), 100 tokens chosen by Zipf (s = 1): every token
#               is cached after its first use.
#   cache miss: --cache-entries 1024 and 100000 tokens chosen uniformly: ~99% of verifications
#               read LMDB and recompile the token.
#
# Environment (defaults in brackets): BUILD [build] the Meson build dir; RESULTS
# [bench/results/load]; DURATION [3s] and WARMUP [500ms] per case; DAEMON_THREADS [2];
# LOAD_THREADS [1] (tokenload's client threads: the machine this was written on has 2 cores);
# MIX [valid=100]; PROTOCOLS, CONNS, DEPTHS, CACHES to cut the matrix down; REDIS [1] 0 skips
# redis; NICE [-10 as root, else 0]: the servers and the load generators run at this nice level,
# so that unrelated work on a shared machine (builds) disturbs the figures less; both sides get
# the same. Needs python3 (for the table) and redis-server/redis-benchmark/redis-cli for the
# reference.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
RESULTS=${RESULTS:-$ROOT/bench/results/load}
DURATION=${DURATION:-3s}
WARMUP=${WARMUP:-500ms}
DAEMON_THREADS=${DAEMON_THREADS:-2}
LOAD_THREADS=${LOAD_THREADS:-1}
MIX=${MIX:-valid=100}
PROTOCOLS=${PROTOCOLS:-"binary text http"}
CONNS=${CONNS:-"1 16 64"}
DEPTHS=${DEPTHS:-"1 32"}
CACHES=${CACHES:-"hit miss"}
REDIS=${REDIS:-1}
NICE=${NICE:-$([[ $(id -u) == 0 ]] && echo -10 || echo 0)}
run=(nice -n "$NICE")

TOKEND="$BUILD/daemon/tokend"
TOKENLOAD="$BUILD/tools/tokenload"
for bin in "$TOKEND" "$TOKENLOAD"; do
  [[ -x $bin ]] || { echo "run_load.sh: $bin is missing: build first (ninja -C $BUILD)" >&2; exit 2; }
done
if [[ $REDIS == 1 ]]; then
  for bin in redis-server redis-benchmark redis-cli; do
    command -v "$bin" >/dev/null || { echo "run_load.sh: $bin is missing (apt-get install redis-server redis-tools), or set REDIS=0" >&2; exit 2; }
  done
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokend-load.XXXXXX")
pids=()
cleanup() {
  # Only the servers this script started, by pid.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json "$RESULTS"/*.csv

wait_socket() {
  for _ in $(seq 1 200); do
    [[ -S $1 ]] && return 0
    sleep 0.05
  done
  echo "run_load.sh: no socket at $1" >&2
  return 1
}

# start_tokend NAME ARGS...: a daemon on $tmp/NAME; sets TOKEND_PID and TOKEND_SOCK.
start_tokend() {
  local name=$1
  shift
  "${run[@]}" "$TOKEND" --data-dir "$tmp/$name" --threads "$DAEMON_THREADS" --log-level warn "$@" \
    >"$tmp/$name.out" 2>"$tmp/$name.err" &
  TOKEND_PID=$!
  pids+=("$TOKEND_PID")
  TOKEND_SOCK="$tmp/$name/tokend.sock"
  wait_socket "$TOKEND_SOCK"
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# redis_case C P: redis-benchmark GET for about $DURATION, calibrated by a short first run
# (redis-benchmark takes a request count, not a duration).
redis_case() {
  local c=$1 p=$2 probe n secs
  probe=$("${run[@]}" redis-benchmark -s "$REDIS_SOCK" -t get -c "$c" -P "$p" -n $((20000 * c > 200000 ? 20000 * c : 200000)) --csv | tail -1)
  secs=$(python3 -c "import re,sys; d='$DURATION'; m=re.fullmatch(r'([0-9.]+)(ms|s)', d); print(float(m[1])/(1000 if m[2]=='ms' else 1))")
  n=$(python3 -c "import csv,io,sys; r=next(csv.reader(io.StringIO(sys.argv[1]))); print(max(10000, int(float(r[1]) * $secs)))" "$probe")
  "${run[@]}" redis-benchmark -s "$REDIS_SOCK" -t get -c "$c" -P "$p" -n "$n" --csv >"$RESULTS/redis-c$c-P$p.csv"
}

if [[ $REDIS == 1 ]]; then
  mkdir -p "$tmp/redis"
  (cd "$tmp/redis" && exec "${run[@]}" redis-server --port 0 --unixsocket "$tmp/redis/redis.sock" --save '' \
    --appendonly no --dir "$tmp/redis" >"$tmp/redis.log" 2>&1) &
  pids+=("$!")
  REDIS_SOCK="$tmp/redis/redis.sock"
  wait_socket "$REDIS_SOCK"
  # redis-benchmark -t get reads the key "key:__rand_int__" (no -r): a 3-byte value, its -d default.
  redis-cli -s "$REDIS_SOCK" set key:__rand_int__ xxx >/dev/null
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "kernel: $(uname -r)"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "nice: $NICE"
  echo "tokend threads: $DAEMON_THREADS, tokenload threads: $LOAD_THREADS, duration $DURATION, warmup $WARMUP, mix $MIX"
  [[ $REDIS == 1 ]] && echo "redis: $(redis-server --version | cut -d' ' -f3)"
} >"$RESULTS/machine.txt"

for cache in $CACHES; do
  case $cache in
    hit) start_tokend hit; tokens=(--tokens 100 --dist zipf) ;;
    miss) start_tokend miss --cache-entries 1024; tokens=(--tokens 100000 --dist uniform) ;;
    *) echo "run_load.sh: unknown cache case $cache" >&2; exit 2 ;;
  esac
  # Create the tokens once, outside the measured cases.
  "$TOKENLOAD" --socket "$TOKEND_SOCK" --db "$tmp/$cache" "${tokens[@]}" --mix "$MIX" -n 1 >/dev/null
  for c in $CONNS; do
    for p in $DEPTHS; do
      for proto in $PROTOCOLS; do
        out="$RESULTS/tokend-$cache-$proto-c$c-P$p.json"
        echo "tokend $cache $proto c=$c P=$p" >&2
        "${run[@]}" "$TOKENLOAD" --socket "$TOKEND_SOCK" --db "$tmp/$cache" "${tokens[@]}" \
          --mix "$MIX" --protocol "$proto" -c "$c" -P "$p" -t "$LOAD_THREADS" --duration "$DURATION" \
          --warmup "$WARMUP" --json >"$out" || echo "run_load.sh: tokenload reported errors, see $out" >&2
      done
      # Redis right after tokend at the same shape, so both see the same machine load.
      if [[ $REDIS == 1 && $cache == hit ]]; then
        echo "redis c=$c P=$p" >&2
        redis_case "$c" "$p"
      fi
    done
  done
  stop_pid "$TOKEND_PID"
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"

python3 - "$RESULTS" <<'EOF'
import csv, glob, json, os, re, sys
results = sys.argv[1]
rows, redis = [], {}
for f in glob.glob(os.path.join(results, "tokend-*.json")):
    m = re.search(r"tokend-(\w+)-(\w+)-c(\d+)-P(\d+)\.json$", f)
    try:
        j = json.load(open(f))
    except ValueError:
        continue
    cache, proto, c, p = m[1], m[2], int(m[3]), int(m[4])
    lat, err = j["latency_us"], j["errors"]
    rows.append((cache, proto, c, p, j["throughput_rps"], lat["p50"], lat["p99"], lat["p999"],
                 err["wrong_answers"] + err["protocol"] + err["lost"]))
for f in glob.glob(os.path.join(results, "redis-*.csv")):
    m = re.search(r"redis-c(\d+)-P(\d+)\.csv$", f)
    r = list(csv.DictReader(open(f)))[-1]
    redis[(int(m[1]), int(m[2]))] = (float(r["rps"]), float(r["p50_latency_ms"]) * 1000,
                                     float(r["p99_latency_ms"]) * 1000)
order = {"binary": 0, "text": 1, "http": 2}
rows.sort(key=lambda r: (r[0] != "hit", r[2], r[3], order.get(r[1], 9)))
print("| server | protocol | cache | conns | depth | req/s | p50 us | p99 us | p99.9 us | errors |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
done = set()
for cache, proto, c, p, rps, p50, p99, p999, errors in rows:
    print(f"| tokend | {proto} | {cache} | {c} | {p} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {p999:.1f} | {errors} |")
    if cache == "hit" and (c, p) in redis and (c, p) not in done and proto == "http":
        r = redis[(c, p)]
        print(f"| redis | GET | - | {c} | {p} | {r[0]:,.0f} | {r[1]:.1f} | {r[2]:.1f} | n/a | - |")
        done.add((c, p))
for (c, p), r in sorted(redis.items()):
    if (c, p) not in done:
        print(f"| redis | GET | - | {c} | {p} | {r[0]:,.0f} | {r[1]:.1f} | {r[2]:.1f} | n/a | - |")
if redis:
    print()
    print("| conns | depth | tokend binary (hit) / Redis GET | tokend binary (miss) / Redis GET |")
    print("|---:|---:|---:|---:|")
    byKey = {(r[0], r[1], r[2], r[3]): r[4] for r in rows}
    for (c, p), r in sorted(redis.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        hit = byKey.get(("hit", "binary", c, p))
        miss = byKey.get(("miss", "binary", c, p))
        fmt = lambda v: f"{v / r[0]:.2f}x" if v else "-"
        print(f"| {c} | {p} | {fmt(hit)} | {fmt(miss)} |")
EOF
echo
cat "$RESULTS/machine.txt"
