#!/usr/bin/env bash
# bench/run_load.sh: tokend's socket throughput with tokenload, against redis-benchmark GET on a
# Unix-socket redis-server as the reference, at the same connections and pipeline depths.
#
# Starts tokend daemons and a redis-server in a temporary directory, runs the matrix
#   protocol (binary, text, http) x connections (1, 16, 64) x depth (1, 32) x cache (hit, miss)
# with tokenload, and redis-benchmark -t get at each (connections, depth); writes one result file
# per case and repeat into $RESULTS and prints a markdown table (the median repeat of each case)
# and the tokend-binary / Redis-GET throughput ratios.
#
#   cache hit:  the default cache (65536 slots), 100 tokens chosen by Zipf (s = 1): every token
#               is cached after its first use.
#   cache miss: --cache-entries 1024 and 100000 tokens chosen uniformly: ~99% of verifications
#               read LMDB and recompile the token.
#
# Environment (defaults in brackets): BUILD [build] the Meson build dir; RESULTS
# [$BUILD/bench-load]; DURATION [3s] and WARMUP [500ms] per case; REPEAT [3] runs of each case,
# spread over the whole run; DAEMON_THREADS [2]; LOAD_THREADS [1] (tokenload's client threads:
# the machine this was written on has 2 cores); MIX [valid=100]; PROTOCOLS, CONNS, DEPTHS,
# CACHES to cut the matrix down; REDIS [1], 0 skips redis; NICE [-10 as root, else 0]: the
# servers and load generators of both sides run at this nice level, so that unrelated work on a
# shared machine disturbs the figures less. Needs python3, and redis-server, redis-benchmark and
# redis-cli for the reference (Debian: redis-server, redis-tools).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
RESULTS=${RESULTS:-$BUILD/bench-load}
DURATION=${DURATION:-3s}
WARMUP=${WARMUP:-500ms}
REPEAT=${REPEAT:-3}
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
    command -v "$bin" >/dev/null ||
      { echo "run_load.sh: $bin is missing (apt-get install redis-server redis-tools), or set REDIS=0" >&2; exit 2; }
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
rm -f "$RESULTS"/tokend-*.json "$RESULTS"/redis-*.csv "$RESULTS"/*.cpu "$RESULTS"/machine.txt

wait_socket() {
  for _ in $(seq 1 400); do
    [[ -S $1 ]] && return 0
    sleep 0.05
  done
  echo "run_load.sh: no socket at $1" >&2
  return 1
}

# CPU time (user + system, in clock ticks) a process has used so far. On a shared machine the
# server's CPU per request is steadier than its throughput, which follows the CPU it is given.
cpu_ticks() {
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# start_tokend NAME ARGS...: a daemon on $tmp/NAME; sets TOKEND_SOCK and TOKEND_PID.
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

# redis_case C P R: redis-benchmark GET for about $DURATION, sized by a short first run
# (redis-benchmark takes a request count, not a duration).
redis_case() {
  local c=$1 p=$2 r=$3 probe n secs before
  probe=$("${run[@]}" redis-benchmark -s "$REDIS_SOCK" -t get -c "$c" -P "$p" \
    -n $((20000 * c > 200000 ? 20000 * c : 200000)) --csv | tail -1)
  secs=$(python3 -c "import re; m = re.fullmatch(r'([0-9.]+)(ms|s)', '$DURATION'); print(float(m[1]) / (1000 if m[2] == 'ms' else 1))")
  n=$(python3 -c "import csv, io, sys; r = next(csv.reader(io.StringIO(sys.argv[1]))); print(max(10000, int(float(r[1]) * $secs)))" "$probe")
  before=$(cpu_ticks "$REDIS_PID")
  "${run[@]}" redis-benchmark -s "$REDIS_SOCK" -t get -c "$c" -P "$p" -n "$n" --csv \
    >"$RESULTS/redis-c$c-P$p.r$r.csv"
  echo "$(($(cpu_ticks "$REDIS_PID") - before)) $n" >"$RESULTS/redis-c$c-P$p.r$r.cpu"
}

if [[ $REDIS == 1 ]]; then
  mkdir -p "$tmp/redis"
  (cd "$tmp/redis" && exec "${run[@]}" redis-server --port 0 --unixsocket "$tmp/redis/redis.sock" \
    --save '' --appendonly no --dir "$tmp/redis" >"$tmp/redis.log" 2>&1) &
  REDIS_PID=$!
  pids+=("$REDIS_PID")
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
  echo "tokend threads: $DAEMON_THREADS, tokenload threads: $LOAD_THREADS, duration $DURATION, warmup $WARMUP, repeats $REPEAT, mix $MIX"
  if [[ $REDIS == 1 ]]; then echo "redis: $(redis-server --version | cut -d' ' -f3)"; fi
} >"$RESULTS/machine.txt"

# Both daemons stay up for the whole run (an idle one costs nothing), so that the repeats of a
# case are spread over the run rather than back to back: on a shared machine a burst of other
# work then spoils one repeat of a case, not all of them.
declare -A SOCK TOKENS PID
for cache in $CACHES; do
  case $cache in
    hit) start_tokend hit; TOKENS[hit]="--tokens 100 --dist zipf" ;;
    miss) start_tokend miss --cache-entries 1024; TOKENS[miss]="--tokens 100000 --dist uniform" ;;
    *) echo "run_load.sh: unknown cache case $cache" >&2; exit 2 ;;
  esac
  SOCK[$cache]=$TOKEND_SOCK
  PID[$cache]=$TOKEND_PID
  read -ra tokens <<<"${TOKENS[$cache]}"
  # Create the tokens once, outside the measured cases, then use every one of them once: a
  # token's first verification queues its last_used write (then none for an hour, SPEC 3), and
  # the measured cases should see the steady state, not the daemon committing 100k first uses.
  "$TOKENLOAD" --socket "$TOKEND_SOCK" --db "$tmp/$cache" "${tokens[@]}" --mix "$MIX" -n 1 >/dev/null
  "${run[@]}" "$TOKENLOAD" --socket "$TOKEND_SOCK" --db "$tmp/$cache" --tokens "${tokens[1]}" \
    --dist uniform --mix "$MIX" -c 16 -P 32 --duration 30s -n "$((tokens[1] * 3))" >/dev/null
done
sleep 1 # the write-back commits at least once a second

for r in $(seq 1 "$REPEAT"); do
  for cache in $CACHES; do
    read -ra tokens <<<"${TOKENS[$cache]}"
    for c in $CONNS; do
      for p in $DEPTHS; do
        for proto in $PROTOCOLS; do
          out="$RESULTS/tokend-$cache-$proto-c$c-P$p.r$r.json"
          echo "[$r/$REPEAT] tokend $cache $proto c=$c P=$p" >&2
          before=$(cpu_ticks "${PID[$cache]}")
          "${run[@]}" "$TOKENLOAD" --socket "${SOCK[$cache]}" --db "$tmp/$cache" "${tokens[@]}" \
            --mix "$MIX" --protocol "$proto" -c "$c" -P "$p" -t "$LOAD_THREADS" \
            --duration "$DURATION" --warmup "$WARMUP" --json >"$out" ||
            echo "run_load.sh: tokenload reported errors, see $out" >&2
          echo "$(($(cpu_ticks "${PID[$cache]}") - before))" >"${out%.json}.cpu"
        done
        # Redis right after tokend at the same shape, so that both see the same machine load.
        if [[ $REDIS == 1 && $cache == hit ]]; then
          echo "[$r/$REPEAT] redis c=$c P=$p" >&2
          redis_case "$c" "$p" "$r"
        fi
      done
    done
  done
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/machine.txt"

# The table: per case the repeat with the median throughput, and the range over the repeats.
python3 - "$RESULTS" "$(getconf CLK_TCK)" <<'PY'
import csv, glob, json, os, re, sys
from collections import defaultdict

results, tick = sys.argv[1], 1e6 / float(sys.argv[2])  # microseconds per clock tick


def cpu_per_request(path, requests):
    """The server's CPU microseconds per request over a case, or None."""
    try:
        ticks = float(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return ticks * tick / requests if requests else None


runs, redis_runs = defaultdict(list), defaultdict(list)
for f in glob.glob(os.path.join(results, "tokend-*.json")):
    m = re.search(r"tokend-(\w+)-(\w+)-c(\d+)-P(\d+)\.r\d+\.json$", f)
    try:
        j = json.load(open(f))
    except ValueError:
        continue
    lat, err = j["latency_us"], j["errors"]
    cpu = cpu_per_request(f[:-len(".json")] + ".cpu", j.get("answered_with_warmup", 0))
    runs[(m[1], m[2], int(m[3]), int(m[4]))].append(
        (j["throughput_rps"], lat["p50"], lat["p99"], lat["p999"],
         err["wrong_answers"] + err["protocol"] + err["lost"], cpu))
for f in glob.glob(os.path.join(results, "redis-*.csv")):
    m = re.search(r"redis-c(\d+)-P(\d+)\.r\d+\.csv$", f)
    r = list(csv.DictReader(open(f)))[-1]
    cpu_file = f[:-len(".csv")] + ".cpu"
    n = int(open(cpu_file).read().split()[1]) if os.path.exists(cpu_file) else 0
    redis_runs[(int(m[1]), int(m[2]))].append(
        (float(r["rps"]), float(r["p50_latency_ms"]) * 1000, float(r["p99_latency_ms"]) * 1000,
         cpu_per_request(cpu_file, n)))


def median(rs):
    rs = sorted(rs, key=lambda r: r[0])
    return rs[(len(rs) - 1) // 2], rs[0][0], rs[-1][0]


def span(lo, hi):
    return f"{lo / 1000:,.0f}k-{hi / 1000:,.0f}k"


def median_cpu(rs):
    cpus = sorted(r[-1] for r in rs if r[-1] is not None)
    return cpus[(len(cpus) - 1) // 2] if cpus else None


def us(v):
    return f"{v:.2f}" if v is not None else "n/a"


order = {"binary": 0, "text": 1, "http": 2}
keys = sorted(runs, key=lambda k: (k[0] != "hit", k[2], k[3], order.get(k[1], 9)))
redis = {k: median(v) for k, v in redis_runs.items()}
print("| server | protocol | cache | conns | depth | req/s (median) | range | p50 us | p99 us | p99.9 us | server CPU us/req | errors |")
print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
shown = set()
for k in keys:
    cache, proto, c, p = k
    (rps, p50, p99, p999, _, _), lo, hi = median(runs[k])
    errors = sum(r[4] for r in runs[k])
    print(f"| tokend | {proto} | {cache} | {c} | {p} | {rps:,.0f} | {span(lo, hi)} | {p50:.1f} | {p99:.1f} | {p999:.1f} | {us(median_cpu(runs[k]))} | {errors} |")
    if cache == "hit" and proto == "http" and (c, p) in redis:
        (rrps, rp50, rp99, _), rlo, rhi = redis[(c, p)]
        print(f"| redis | GET | - | {c} | {p} | {rrps:,.0f} | {span(rlo, rhi)} | {rp50:.1f} | {rp99:.1f} | n/a | {us(median_cpu(redis_runs[(c, p)]))} | - |")
        shown.add((c, p))
for (c, p), ((rrps, rp50, rp99, _), rlo, rhi) in sorted(redis.items()):
    if (c, p) not in shown:
        print(f"| redis | GET | - | {c} | {p} | {rrps:,.0f} | {span(rlo, rhi)} | {rp50:.1f} | {rp99:.1f} | n/a | {us(median_cpu(redis_runs[(c, p)]))} | - |")
if redis:
    print()
    # Throughput ratio, and CPU-efficiency ratio: Redis's server CPU per request over tokend's
    # (above 1: tokend does a request on less CPU than Redis does a GET).
    print("| conns | depth | req/s binary hit / Redis GET | req/s binary miss / Redis GET | CPU/req Redis / binary hit | CPU/req Redis / binary miss |")
    print("|---:|---:|---:|---:|---:|---:|")
    for (c, p), ((rrps, _, _, _), _, _) in sorted(redis.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rcpu = median_cpu(redis_runs[(c, p)])
        cells = []
        for cache in ("hit", "miss"):
            k = (cache, "binary", c, p)
            cells.append(f"{median(runs[k])[0][0] / rrps:.2f}x" if k in runs else "-")
        for cache in ("hit", "miss"):
            k = (cache, "binary", c, p)
            tcpu = median_cpu(runs[k]) if k in runs else None
            cells.append(f"{rcpu / tcpu:.2f}x" if rcpu and tcpu else "-")
        print(f"| {c} | {p} | " + " | ".join(cells) + " |")
PY
echo
cat "$RESULTS/machine.txt"
