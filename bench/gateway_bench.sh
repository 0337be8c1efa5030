#!/usr/bin/env bash
# bench/gateway_bench.sh: what tokend costs nginx as its auth_request service, measured with wrk.
#
# Starts, in a temporary directory, each as its own process: tokend; the upstreams, "static" (an
# nginx `return 200`: the gateway is the bottleneck, the worst case for auth) and "echo" (the
# gateway tests' tests/gateway/echo_upstream.py, Python: an application that does some work per
# request); a trivial auth service (an nginx on a Unix socket that always answers 200, with the
# header fields of tokend's answer as fixed values); and the gateway nginx under test, with one
# server per case, upstream x auth:
#
#   none     proxy_pass only, no auth_request
#   tokend   auth_request to tokend over its socket, with examples/nginx's snippets and keepalive
#            pool; workspace:read on one workspace checked for every request
#   trivial  the same auth_request configuration pointed at the trivial service: the floor of
#            nginx's subrequest mechanism itself
#
# and, when Debian's apache2 and libapache2-mod-oauth2 are installed (APACHE=0 leaves them out),
# the same upstreams behind one Apache (event MPM, one child process, as nginx has one worker):
#
#   apache-none        ProxyPass only
#   apache-introspect  examples/apache/tokend.conf's mod_oauth2 setup: every request introspected
#                      by tokend over --http-listen (RFC 7662, cache off: expiry=0)
#
# Every case sends the same request (the same Authorization header). wrk runs each case REPEAT
# times, the cases taking turns so that a burst of unrelated load on a shared machine does not fall
# on one case. Beside wrk's figures it reads the CPU time that the gateway's worker, the auth
# service and the upstream spent during each run (/proc/<pid>/stat), per request: on a loaded
# machine that figure moves far less than throughput and latency do. Prints a markdown table of
# the medians, and the ratios.
#
# Environment (defaults in brackets): BUILD [build] the Meson build dir with tokend and tokenctl
# (an optimised one: meson setup build-release --buildtype=release); DURATION [5s] per run;
# THREADS [1] and CONNECTIONS [16] of wrk; REPEAT [3]; UPSTREAMS ["static echo"];
# DAEMON_THREADS [1] tokend's --threads; NICE [-10 as root, else 0] the nice level of every
# process this starts; APACHE [1] adds the Apache cases. The gateway has one worker process. Needs nginx (with auth_request), wrk,
# curl, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
DURATION=${DURATION:-5s}
THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-16}
REPEAT=${REPEAT:-3}
UPSTREAMS=${UPSTREAMS:-"static echo"}
DAEMON_THREADS=${DAEMON_THREADS:-1}
NICE=${NICE:-$([[ $(id -u) == 0 ]] && echo -10 || echo 0)}
run=(nice -n "$NICE")

TOKEND=$BUILD/daemon/tokend
TOKENCTL=$BUILD/tools/tokenctl
for bin in "$TOKEND" "$TOKENCTL"; do
  [[ -x $bin ]] || { echo "gateway_bench.sh: $bin is missing: build first (ninja -C $BUILD)" >&2; exit 2; }
done
NGINX=$(PATH=$PATH:/usr/sbin command -v nginx) ||
  { echo "gateway_bench.sh: nginx is missing (scripts/bootstrap, or apt-get install nginx)" >&2; exit 2; }
"$NGINX" -V 2>&1 | grep -q -- --with-http_auth_request_module ||
  { echo "gateway_bench.sh: $NGINX has no auth_request module" >&2; exit 2; }
command -v wrk >/dev/null || { echo "gateway_bench.sh: wrk is missing (apt-get install wrk)" >&2; exit 2; }
PY=/usr/bin/python3
[[ -x $PY ]] || PY=$(command -v python3) || { echo "gateway_bench.sh: python3 is missing" >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tokend-gwbench.XXXXXX")
pids=()
cleanup() {
  # Only the processes this script started, by pid.
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_http() {  # wait_http <curl arguments>: until it answers 200, 10 s at most
  for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$@") == 200 ]] && return 0
    sleep 0.1
  done
  echo "gateway_bench.sh: no answer from $*" >&2
  exit 1
}
user=""
[[ $(id -u) -eq 0 ]] && user="user root;"  # else nginx's workers would be nobody, shut out of $tmp

# start_nginx <name> <http block contents>: one nginx, one worker, in $tmp/<name>; sets nginx_pid
start_nginx() {
  mkdir -p "$tmp/$1"
  cat >"$tmp/$1/nginx.conf" <<EOF
worker_processes 1;
events { worker_connections 4096; }
http {
    client_body_temp_path client_body_temp;
    proxy_temp_path proxy_temp;
    fastcgi_temp_path fastcgi_temp;
    uwsgi_temp_path uwsgi_temp;
    scgi_temp_path scgi_temp;
    access_log off;
    keepalive_requests 1000000;
$2
}
EOF
  "${run[@]}" "$NGINX" -p "$tmp/$1" -c "$tmp/$1/nginx.conf" \
    -g "daemon off; $user pid $tmp/$1/nginx.pid; error_log $tmp/$1/error.log warn;" >/dev/null 2>&1 &
  nginx_pid=$!
  pids+=("$nginx_pid")
}
# workers_of <master pid>: its worker processes, once it has started them
workers_of() {
  local w=""
  for _ in $(seq 100); do
    w=$(pgrep -P "$1" | tr '\n' ' ')
    [[ -n $w ]] && break
    sleep 0.1
  done
  echo "$w"
}

# --- tokend, and a token that may read one workspace ---------------------------------------------
sock=$tmp/data/tokend.sock
tokend_http=127.0.0.1:$(free_port)
"${run[@]}" "$TOKEND" --data-dir "$tmp/data" --threads "$DAEMON_THREADS" --log-level warn \
  --http-listen "$tokend_http" --introspect-user apache >"$tmp/tokend.out" 2>"$tmp/tokend.log" &
tokend_pid=$!
pids+=("$tokend_pid")
wait_http --unix-socket "$sock" http://tokend/healthz
WS=3f2504e0-4f89-41d3-9a0c-0305e82c3301
"$TOKENCTL" --db "$tmp/data" users create bench --role owner >/dev/null
token=$("$TOKENCTL" --db "$tmp/data" tokens create --user bench --scope workspace:read \
  --allow "workspace:$WS")
# Apache's mod_oauth2 authenticates to the introspection endpoint with this token's id and secret.
"$TOKENCTL" --db "$tmp/data" users create apache >/dev/null
gateway_token=$("$TOKENCTL" --db "$tmp/data" tokens create --user apache --name mod-oauth2)

# --- the upstreams and the trivial auth service ----------------------------------------------------
declare -A upstream_addr upstream_pids
static_port=$(free_port)
start_nginx static "    server { listen 127.0.0.1:$static_port; location / { return 200 \"ok\\n\"; } }"
upstream_addr[static]=127.0.0.1:$static_port
upstream_pids[static]=$(workers_of "$nginx_pid")
wait_http "http://127.0.0.1:$static_port/"

"${run[@]}" "$PY" "$ROOT/tests/gateway/echo_upstream.py" --port-file "$tmp/echo.port" >/dev/null 2>&1 &
pids+=($!)
upstream_pids[echo]=$!
for _ in $(seq 100); do [[ -s $tmp/echo.port ]] && break; sleep 0.1; done
upstream_addr[echo]=127.0.0.1:$(cat "$tmp/echo.port")

start_nginx trivial "    server {
        listen unix:$tmp/trivial.sock;
        location / {
            add_header X-Tokend-Reason ok;
            add_header X-Tokend-User-Id 6f1c2b0e-9a4d-4f3b-8a51-1f0e2d3c4b5a;
            add_header X-Tokend-Username bench;
            add_header X-Tokend-Token-Id a1B2c3D4e5;
            add_header X-Tokend-Login-Type token;
            add_header X-Tokend-Expires-At 1767225600;
            add_header Cache-Control no-store;
            return 200;
        }
    }"
trivial_pids=$(workers_of "$nginx_pid")

# --- the gateway nginx, from examples/nginx --------------------------------------------------------
gw=$tmp/gateway
mkdir -p "$gw"
cp -r "$ROOT/examples/nginx/conf.d" "$ROOT/examples/nginx/snippets" "$gw/"
sed -i "s|__TOKEND_SOCKET__|$sock|" "$gw/conf.d/tokend.conf"
# The trivial case: the same auth configuration, against the trivial service.
sed 's|http://tokend/|http://trivial_auth/|' "$gw/snippets/tokend-server.conf" >"$gw/snippets/trivial-server.conf"

cases=()
declare -A port
http="    include conf.d/tokend.conf;
    upstream trivial_auth { server unix:$tmp/trivial.sock; keepalive 32; keepalive_requests 1000000; }"
for up in $UPSTREAMS; do
  http+="
    upstream $up { server ${upstream_addr[$up]}; keepalive 64; keepalive_requests 1000000; }"
  for a in none tokend trivial; do
    c=$up/$a
    cases+=("$c")
    port[$c]=$(free_port)
    include=""
    [[ $a != none ]] && include="include snippets/$a-server.conf;"
    http+="
    server {
        listen 127.0.0.1:${port[$c]};
        $include
        location / {
            set \$tokend_permission workspace:read;
            set \$tokend_object workspace:$WS;
            include snippets/tokend-upstream.conf;
            proxy_pass http://$up;
        }
    }"
  done
done
start_nginx gateway "$http"
gateway_pids=$(workers_of "$nginx_pid")

# --- the gateway Apache, from examples/apache --------------------------------------------------------
APACHE=${APACHE:-1}
APACHE2=/usr/sbin/apache2
MODULES=/usr/lib/apache2/modules
apache_pids=""
if [[ $APACHE == 1 && -x $APACHE2 && -f $MODULES/mod_oauth2.so ]]; then
  ap=$tmp/apache
  mkdir -p "$ap"
  aconf="ServerRoot \"$ap\"
ServerName 127.0.0.1
PidFile \"$ap/httpd.pid\"
ErrorLog \"$ap/error.log\"
LogLevel warn
$([[ $(id -u) -eq 0 ]] && printf 'User www-data\nGroup www-data')
LoadModule mpm_event_module $MODULES/mod_mpm_event.so
LoadModule authn_core_module $MODULES/mod_authn_core.so
LoadModule authz_core_module $MODULES/mod_authz_core.so
LoadModule authz_user_module $MODULES/mod_authz_user.so
LoadModule proxy_module $MODULES/mod_proxy.so
LoadModule proxy_http_module $MODULES/mod_proxy_http.so
LoadModule oauth2_module $MODULES/mod_oauth2.so
# One child process with enough threads for wrk's connections: nginx's one worker's counterpart.
StartServers 1
ServerLimit 1
MinSpareThreads 1
MaxSpareThreads 256
ThreadsPerChild 256
MaxRequestWorkers 256
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0"
  for up in $UPSTREAMS; do
    for a in apache-none apache-introspect; do
      c=$up/$a
      cases+=("$c")
      port[$c]=$(free_port)
      sed -e "s|__TOKEND_URL__|http://$tokend_http|g" -e "s|__CLIENT_ID__|${gateway_token:0:10}|g" \
        -e "s|__CLIENT_SECRET__|${gateway_token:11}|g" -e "s|__APP__|${upstream_addr[$up]}|g" \
        "$ROOT/examples/apache/tokend.conf" >"$ap/$up.conf"
      body="ProxyPass \"/\" \"http://${upstream_addr[$up]}/\""
      [[ $a == apache-introspect ]] && body="Include \"$ap/$up.conf\""
      aconf+="
Listen 127.0.0.1:${port[$c]}
<VirtualHost 127.0.0.1:${port[$c]}>
$body
</VirtualHost>"
    done
  done
  echo "$aconf" >"$ap/httpd.conf"
  "${run[@]}" "$APACHE2" -d "$ap" -f "$ap/httpd.conf" -D FOREGROUND >"$ap/out.log" 2>&1 &
  pids+=($!)
  apache_pids=$(workers_of "$!")
  for up in $UPSTREAMS; do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$up/apache-introspect]}/api/bench") == 401 ]] ||
      { echo "gateway_bench.sh: the $up/apache-introspect case does not verify" >&2; exit 1; }
  done
fi
auth=(-H "Authorization: Bearer $token")
for c in "${cases[@]}"; do wait_http "${auth[@]}" "http://127.0.0.1:${port[$c]}/api/bench"; done
# tokend must really be asked: without the token its servers refuse.
for up in $UPSTREAMS; do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$up/tokend]}/api/bench") == 401 ]] ||
    { echo "gateway_bench.sh: the $up/tokend case does not verify" >&2; exit 1; }
done

# --- the runs --------------------------------------------------------------------------------------
accepted() {
  curl -s --unix-socket "$sock" http://tokend/metrics | sed -n 's/^tokend_connections_accepted_total //p'
}
# cpu_ticks <pid>...: user + system CPU of these processes, all their threads, in clock ticks
cpu_ticks() {
  local t=0 pid stat
  for pid in "$@"; do
    read -r -a stat <"/proc/$pid/stat"
    t=$((t + stat[13] + stat[14]))
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)
# wrk's latency in ms ("812.00us", "1.53ms", "1.02s")
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else { print "nan" } }'
}

# wrk_run <case> <duration> <out file>: one wrk run; <out file>.cpu gets the CPU ticks that the
# gateway's worker, the auth service (none: 0) and the upstream spent during it
wrk_run() {
  local up=${1%/*} a=${1#*/} auth_pids="" g0 s0 u0 gateway_pids=$gateway_pids
  case $a in tokend | apache-introspect) auth_pids=$tokend_pid ;; trivial) auth_pids=$trivial_pids ;; esac
  [[ $a == apache-* ]] && gateway_pids=$apache_pids
  # shellcheck disable=SC2086 # pid lists
  {
    g0=$(cpu_ticks $gateway_pids)
    s0=$(cpu_ticks $auth_pids)
    u0=$(cpu_ticks ${upstream_pids[$up]})
    "${run[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency "${auth[@]}" \
      "http://127.0.0.1:${port[$1]}/api/bench" >"$3"
    echo "$(($(cpu_ticks $gateway_pids) - g0)) $(($(cpu_ticks $auth_pids) - s0))" \
      "$(($(cpu_ticks ${upstream_pids[$up]}) - u0))" >"$3.cpu"
  }
  if grep -qE 'Non-2xx|Socket errors' "$3"; then
    echo "gateway_bench.sh: errors in the $1 run:" >&2
    cat "$3" >&2
    exit 1
  fi
}

for c in "${cases[@]}"; do wrk_run "$c" 1s "$tmp/warmup"; done
connections_before=$(accepted)
for ((r = 0; r < REPEAT; r++)); do
  for ((i = 0; i < ${#cases[@]}; i++)); do
    c=${cases[(i + r) % ${#cases[@]}]}  # each round starts with another case
    wrk_run "$c" "$DURATION" "$tmp/${c/\//-}.$r"
  done
done
connections_after=$(accepted)

# --- the figures -----------------------------------------------------------------------------------
# Each figure is the median of its runs, taken one figure at a time. CPU per request: the ticks
# a process spent during a run over the requests wrk completed in it.
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
per_request_us() { awk -v t="$1" -v n="$2" -v hz="$hz" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (1 - a / b) * 100 }'; }
plus() { awk -v a="$1" -v b="$2" -v f="${3:-%+.2f}" 'BEGIN { printf f, a - b }'; }
sum() { awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { printf "%.1f", a + b + c }'; }
declare -A rps p50 p99 cpu_gw cpu_auth cpu_up cpu_all
verified=0
introspected=0
for c in "${cases[@]}"; do
  for ((r = 0; r < REPEAT; r++)); do
    out=$tmp/${c/\//-}.$r
    n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$out")
    [[ $c == */tokend ]] && verified=$((verified + n))
    [[ $c == */apache-introspect ]] && introspected=$((introspected + n))
    read -r g s u <"$out.cpu"
    echo "$(sed -n 's/^Requests\/sec: *//p' "$out")" \
      "$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")" \
      "$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")" \
      "$(per_request_us "$g" "$n")" "$(per_request_us "$s" "$n")" "$(per_request_us "$u" "$n")" \
      "$(per_request_us $((g + s + u)) "$n")"
  done >"$tmp/${c/\//-}.figures"
  col() { cut -d' ' -f"$1" "$tmp/${c/\//-}.figures" | median; }
  rps[$c]=$(col 1) p50[$c]=$(col 2) p99[$c]=$(col 3)
  cpu_gw[$c]=$(col 4) cpu_auth[$c]=$(col 5) cpu_up[$c]=$(col 6) cpu_all[$c]=$(col 7)
done

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; $REPEAT runs per case, medians;" \
  "nginx 1 worker each; tokend --threads $DAEMON_THREADS; nice $NICE"
echo
echo "| upstream | auth | requests/s | vs no auth | p50 ms | p99 ms | p99 added ms | gateway CPU µs/req | auth service CPU µs/req | upstream CPU µs/req | all three µs/req |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in "${cases[@]}"; do
  up=${c%/*}
  a=${c#*/}
  case $a in
    none) label="none" ;;
    tokend) label="auth_request -> tokend" ;;
    trivial) label="auth_request -> trivial 200" ;;
    apache-none) label="Apache, none" ;;
    apache-introspect) label="Apache mod_oauth2 -> tokend introspection" ;;
  esac
  # Each gateway against itself without auth.
  ref=$up/none
  [[ $a == apache-* ]] && ref=$up/apache-none
  printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$up" "$label" "${rps[$c]}" \
    "$(ratio "${rps[$c]}" "${rps[$ref]}")" "${p50[$c]}" "${p99[$c]}" \
    "$(plus "${p99[$c]}" "${p99[$ref]}")" "${cpu_gw[$c]}" "${cpu_auth[$c]}" "${cpu_up[$c]}" "${cpu_all[$c]}"
done
echo
for up in $UPSTREAMS; do
  echo "- $up upstream, wrk: with tokend nginx serves $(ratio "${rps[$up/tokend]}" "${rps[$up/none]}")" \
    "of its requests/s without auth (-$(pct "${rps[$up/tokend]}" "${rps[$up/none]}") %), p99" \
    "$(plus "${p99[$up/tokend]}" "${p99[$up/none]}") ms; with the trivial service" \
    "$(ratio "${rps[$up/trivial]}" "${rps[$up/none]}") (-$(pct "${rps[$up/trivial]}" "${rps[$up/none]}") %)," \
    "p99 $(plus "${p99[$up/trivial]}" "${p99[$up/none]}") ms"
  echo "- $up upstream, CPU: the gateway's worker spends ${cpu_gw[$up/none]} µs per request without auth," \
    "${cpu_gw[$up/tokend]} with tokend (it keeps $(ratio "${cpu_gw[$up/none]}" "${cpu_gw[$up/tokend]}") of its" \
    "capacity), ${cpu_gw[$up/trivial]} with the trivial service ($(ratio "${cpu_gw[$up/none]}" "${cpu_gw[$up/trivial]}"));" \
    "tokend ${cpu_auth[$up/tokend]} µs per verification; gateway + auth + upstream" \
    "${cpu_all[$up/none]} -> ${cpu_all[$up/tokend]} µs ($(ratio "${cpu_all[$up/none]}" "${cpu_all[$up/tokend]}")" \
    "of the host's capacity for this route)"
done
for up in $UPSTREAMS; do
  [[ -n ${rps[$up/apache-introspect]:-} ]] || continue
  echo "- $up upstream, Apache vs nginx: Apache's introspection serves ${rps[$up/apache-introspect]%.*} requests/s" \
    "($(ratio "${rps[$up/apache-introspect]}" "${rps[$up/apache-none]}") of Apache without auth), p99" \
    "$(plus "${p99[$up/apache-introspect]}" "${p99[$up/apache-none]}") ms; nginx's auth_request" \
    "${rps[$up/tokend]%.*} requests/s ($(ratio "${rps[$up/tokend]}" "${rps[$up/none]}")), p99" \
    "$(plus "${p99[$up/tokend]}" "${p99[$up/none]}") ms; Apache's introspection has" \
    "$(ratio "${rps[$up/apache-introspect]}" "${rps[$up/tokend]}") of nginx's throughput;" \
    "tokend CPU per request ${cpu_auth[$up/apache-introspect]} µs (introspection) vs ${cpu_auth[$up/tokend]} µs (verify)"
done
echo "- introspected requests in the measured runs: $introspected"
echo "- connections tokend accepted during the measured runs: $((connections_after - connections_before - 1))" \
  "for $verified verified requests"
