#!/usr/bin/env bash
# Gateway suite: Debian's nginx or Caddy, configured from examples/, in front of an echo upstream,
# every request verified by tokend; checked end to end with curl.
#
#   TOKEND=build/daemon/tokend TOKENCTL=build/tools/tokenctl tests/gateway/gateway_test.sh nginx|caddy
#
# Everything runs on loopback as ordinary processes in one temporary directory: tokend, the echo
# upstream (tests/gateway/echo_upstream.py), and the gateway with the example configuration, its
# placeholders filled in. Exit 0 when every check passes, 1 when one fails, 77 (SKIP) only when
# the gateway's binary is not installed (scripts/bootstrap installs both). TOKEND_KEEP_TMP=1
# keeps the directory.
set -uo pipefail

gw=${1:-}
[[ $gw == nginx || $gw == caddy ]] || { echo "usage: $0 nginx|caddy" >&2; exit 2; }
: "${TOKEND:?set TOKEND to the built tokend}" "${TOKENCTL:?set TOKENCTL to the built tokenctl}"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# --- the gateway binary: its absence is the one reason to skip ---------------------------------
# TOKEND_NGINX / TOKEND_CADDY name another binary.
case $gw in
  nginx) bin=${TOKEND_NGINX:-$(PATH=$PATH:/usr/sbin:/sbin command -v nginx)} ;;
  caddy) bin=${TOKEND_CADDY:-$(command -v caddy)} ;;
esac
if [[ ! -x $bin ]]; then
  echo "SKIP: $gw is not installed${bin:+ ($bin)}; scripts/bootstrap installs it (Debian package '$gw')"
  exit 77
fi
command -v curl >/dev/null || { echo "FAIL: curl is missing (scripts/bootstrap installs it)"; exit 1; }
# Debian's python3 first: a version manager's shim in PATH can cost a tenth of a second a start.
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3) || { echo "FAIL: python3 is missing (scripts/bootstrap installs it)"; exit 1; }
if [[ $gw == nginx ]] && ! "$bin" -V 2>&1 | grep -q -- --with-http_auth_request_module; then
  echo "FAIL: $bin has no auth_request module; install Debian's 'nginx' package (scripts/bootstrap)"
  exit 1
fi

tmp=$(mktemp -d /tmp/tokend-gateway-"$gw".XXXXXX)
pids=()
failed=0
passed=0

cleanup() {
  local pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((failed > 0)) || [[ ${TOKEND_KEEP_TMP:-0} == 1 ]]; then
    echo "# logs kept in $tmp"
    for log in tokend.log gateway.log nginx/error.log; do
      [[ -s $tmp/$log ]] && { echo "# --- $log (last 20 lines)"; tail -20 "$tmp/$log" | sed 's/^/# /'; }
    done
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

die() {
  echo "Bail out! $*"
  failed=$((failed + 1))
  exit 1
}

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# waits up to $2 tenths of a second for the command in $3... to succeed
wait_for() {
  local what=$1 tenths=$2
  shift 2
  for _ in $(seq "$tenths"); do
    "$@" && return 0
    sleep 0.1
  done
  die "$what did not come up"
}

# --- tokend ---------------------------------------------------------------------------------------
data=$tmp/data
sock=$data/tokend.sock
"$TOKEND" --data-dir "$data" --log-level warn >"$tmp/tokend.out" 2>"$tmp/tokend.log" &
tokend_pid=$!
pids+=("$tokend_pid")
wait_for tokend 100 test -s "$data/first-token"
admin_token=$(head -1 "$data/first-token")
wait_for "tokend's socket" 100 curl -sf -o /dev/null --unix-socket "$sock" http://tokend/healthz

ctl() { "$TOKENCTL" --db "$data" "$@"; }
# tokend's own verdict for a token (reason), straight on the socket
reason_of() {
  curl -s -o /dev/null -D - --unix-socket "$sock" -H "Authorization: Bearer $1" http://tokend/v1/verify |
    sed -n 's/^X-Tokend-Reason: \(.*\)\r$/\1/p'
}

WA=3f2504e0-4f89-41d3-9a0c-0305e82c3301
WB=9b2d7a8c-1e4f-4c3a-8b5d-6f7e8a9b0c1d
# First, so that it has expired by the time it is checked (expired means expires_at < now).
short=$(ctl tokens create --user admin --name short --lifetime 1s) || die "tokenctl tokens create"
ops_id=$(ctl users create ops --role owner) || die "tokenctl users create"
alice_id=$(ctl users create alice) || die "tokenctl users create"
bob_id=$(ctl users create bob) || die "tokenctl users create"
ctl users create sam >/dev/null || die "tokenctl users create"
admin_id=$(curl -s -D - -o /dev/null --unix-socket "$sock" -H "Authorization: Bearer $admin_token" \
  http://tokend/v1/verify | sed -n 's/^X-Tokend-User-Id: \(.*\)\r$/\1/p')
# ops may do anything (owner role), but this token only workspace:read, only on workspace WA.
narrow=$(ctl tokens create --user ops --name narrow --scope workspace:read --allow "workspace:$WA")
# alice is a member: workspace permissions only on workspaces she owns.
alice=$(ctl tokens create --user alice --name all)
sam=$(ctl tokens create --user sam --name all)
ctl users suspend sam >/dev/null || die "tokenctl users suspend"
revoked=$(ctl tokens create --user ops --name to-revoke)
deleted=$(ctl tokens create --user ops --name to-delete)
[[ -n $admin_id && -n $narrow && -n $alice && -n $sam && -n $revoked && -n $deleted ]] ||
  die "could not set up users and tokens"

# --- the upstream ---------------------------------------------------------------------------------
# The application's own data: alice owns WA, bob owns WB (what an owned grant is checked against).
"$py" "$here/echo_upstream.py" --port-file "$tmp/upstream.port" --log "$tmp/upstream.log" \
  --owner "$WA=$alice_id" --owner "$WB=$bob_id" >/dev/null 2>"$tmp/upstream.err" &
pids+=($!)
wait_for "the echo upstream" 100 test -s "$tmp/upstream.port"
app=127.0.0.1:$(cat "$tmp/upstream.port")

# --- the gateway, from the example configuration ---------------------------------------------------
start_nginx() {
  local dir=$tmp/nginx
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -r "$root/examples/nginx/." "$dir/"
  sed -i -e "s|__TOKEND_SOCKET__|$sock|g" -e "s|__LISTEN__|127.0.0.1:$port|g" -e "s|__APP__|$app|g" \
    "$dir/conf.d/tokend.conf" "$dir/sites-available/tokend-example.conf"
  if grep -rq '__[A-Z_]*__' "$dir"; then die "a placeholder is left in the rendered nginx configuration"; fi
  # As root, nginx would run its workers as nobody, who cannot enter this private directory.
  local user=""
  [[ $(id -u) -eq 0 ]] && user="user root;"
  "$bin" -p "$dir" -c "$dir/nginx.conf" \
    -g "daemon off; $user pid $dir/nginx.pid; error_log $dir/error.log warn;" >"$tmp/gateway.log" 2>&1 &
}

start_caddy() {
  local dir=$tmp/caddy
  mkdir -p "$dir/home"
  cp "$root/examples/caddy/Caddyfile" "$dir/Caddyfile"
  HOME=$dir/home XDG_CONFIG_HOME=$dir/home/config XDG_DATA_HOME=$dir/home/data \
    TOKEND_SOCKET=$sock TOKEND_GATEWAY_ADDR=127.0.0.1:$port TOKEND_APP=$app \
    "$bin" run --config "$dir/Caddyfile" --adapter caddyfile >"$tmp/gateway.log" 2>&1 &
}

gateway_up() {
  kill -0 "$gw_pid" 2>/dev/null || return 2
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz") == 200 ]]
}

# A port picked now can be taken before the gateway binds it: try again with another.
for attempt in 1 2 3; do
  port=$(free_port)
  "start_$gw"
  gw_pid=$!
  pids+=("$gw_pid")
  for _ in $(seq 100); do
    gateway_up
    rc=$?
    ((rc == 0 || rc == 2)) && break
    sleep 0.1
  done
  ((rc == 0)) && break
  kill "$gw_pid" 2>/dev/null
  wait "$gw_pid" 2>/dev/null
  ((attempt == 3)) && die "$gw did not start: $(tail -5 "$tmp/gateway.log")"
done
base=http://127.0.0.1:$port
case $gw in
  nginx) version=$("$bin" -v 2>&1) ;;
  caddy) version="caddy $("$bin" version 2>&1)" ;;
esac
echo "# ${version%%$'\n'*} on $base, tokend on $sock, upstream on $app"

# --- checks ----------------------------------------------------------------------------------------
ok() {
  passed=$((passed + 1))
  echo "ok $((passed + failed)) - $1"
}
not_ok() {
  failed=$((failed + 1))
  echo "not ok $((passed + failed)) - $1"
  shift
  for line in "$@"; do echo "#   $line"; done
}

# req <curl arguments>: one request through the gateway; sets $status, leaves the answer's header
# block in $tmp/headers and its body (the upstream's JSON when it was reached) in $tmp/body.
req() {
  status=$(curl -s -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' --max-time 10 "$@")
}
# header <name>: the values of a header field of the last answer, one per line
header() {
  tr -d '\r' <"$tmp/headers" | sed -n "s/^$1: *//Ip"
}
# seen <name>: the values of a field as the upstream received it, comma-separated ("" if none)
seen() {
  "$py" -c '
import json, sys
try:
    d = json.load(open(sys.argv[2]))
except Exception:
    print("<upstream not reached>"); sys.exit()
print(",".join(v for n, v in d["headers"] if n == sys.argv[1].lower()))' "$1" "$tmp/body"
}
seen_body_bytes() {
  "$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["body_bytes"])' "$tmp/body" 2>/dev/null
}

# expect <description> <status> <reason or -> <curl arguments>: status and tokend's reason
expect() {
  local what=$1 want=$2 want_reason=$3
  shift 3
  req "$@"
  local reason www
  reason=$(header X-Tokend-Reason | head -1)
  www=$(header WWW-Authenticate)
  if [[ $status != "$want" ]]; then
    not_ok "$what: HTTP $want" "got HTTP $status, reason '${reason}'" "$(head -c 300 "$tmp/body")"
    return
  fi
  if [[ $want_reason != - && $reason != "$want_reason" ]]; then
    not_ok "$what: HTTP $want, reason $want_reason" "got reason '$reason'"
    return
  fi
  # A refusal carries exactly one WWW-Authenticate, with tokend's error code.
  if [[ $want == 401 && $www != 'Bearer realm="tokend", error="invalid_token"' ]] ||
     [[ $want == 403 && $want_reason != - && $www != 'Bearer realm="tokend", error="insufficient_scope"' ]]; then
    not_ok "$what: HTTP $want with tokend's WWW-Authenticate" "got WWW-Authenticate '${www//$'\n'/ | }'"
    return
  fi
  if [[ $want_reason == - ]]; then ok "$what: HTTP $want"; else ok "$what: HTTP $want $want_reason"; fi
}

# expect_seen <description> <field> <value>: the upstream got exactly this one value for the field
expect_seen() {
  local got
  got=$(seen "$2")
  if [[ $got == "$3" ]]; then ok "$1"; else not_ok "$1" "upstream saw $2: '$got', wanted '$3'"; fi
}

bearer() { printf 'Authorization: Bearer %s' "$1"; }
forged="forged-by-client"

# Public route: no token, and forged identity fields do not get through either.
expect "public /healthz without a token" 200 - "$base/healthz" \
  -H "X-Tokend-User-Id: $forged" -H "X-Tokend-Username: $forged"
expect_seen "public route: a forged X-Tokend-User-Id is removed" X-Tokend-User-Id ""

# Authentication failures: 401 with WWW-Authenticate error="invalid_token".
expect "no token" 401 missing "$base/api/me"
expect "malformed token" 401 malformed "$base/api/me" -H "$(bearer not-a-token)"
expect "unknown token" 401 unknown "$base/api/me" -H "$(bearer AAAAAAAAAA-0123456789012345678901)"
expect "bad secret" 401 bad_secret "$base/api/me" -H "$(bearer "${admin_token:0:11}0123456789012345678901")"
for _ in $(seq 50); do [[ $(reason_of "$short") == expired ]] && break; sleep 0.1; done
expect "expired token" 401 expired "$base/api/me" -H "$(bearer "$short")"
expect "suspended user" 401 user_inactive "$base/api/me" -H "$(bearer "$sam")"
expect "no token, forged identity fields" 401 missing "$base/api/me" \
  -H "X-Tokend-User-Id: $forged" -H "X-Tokend-Username: $forged"

# Permission failures: 403 with error="insufficient_scope".
expect "scope denied (PUT needs workspace:update)" 403 scope -X PUT --data '{}' \
  "$base/api/workspaces/$WA" -H "$(bearer "$narrow")"
expect "allow list denied (other workspace)" 403 allow_list "$base/api/workspaces/$WB" -H "$(bearer "$narrow")"
expect "allow list denied (list names no object)" 403 allow_list "$base/api/workspaces" -H "$(bearer "$narrow")"
expect "role denied (member, workspace of nobody said)" 403 role "$base/api/workspaces/$WA" -H "$(bearer "$alice")"
expect "role denied (member, another user's workspace)" 403 role \
  "$base/api/users/$bob_id/workspaces/$WA" -H "$(bearer "$alice")"
expect "role denied (member creates a workspace)" 403 role -X POST "$base/api/workspaces" -H "$(bearer "$alice")"

# Allowed: the upstream receives the verified identity.
expect "allowed: workspace:read on an allow-listed workspace" 200 - "$base/api/workspaces/$WA" \
  -H "$(bearer "$narrow")"
expect_seen "allowed: upstream saw X-Tokend-User-Id" X-Tokend-User-Id "$ops_id"
expect_seen "allowed: upstream saw X-Tokend-Username" X-Tokend-Username ops
expect_seen "allowed: upstream saw X-Tokend-Login-Type" X-Tokend-Login-Type token
expect_seen "allowed: upstream saw X-Tokend-Token-Id" X-Tokend-Token-Id "${narrow:0:10}"
expect "allowed: member on her own workspace (owner from the path)" 200 - \
  "$base/api/users/$alice_id/workspaces/$WA" -H "$(bearer "$alice")"
expect_seen "owned: upstream saw alice" X-Tokend-User-Id "$alice_id"
expect_seen "owned: upstream saw X-Tokend-Grant: owned" X-Tokend-Grant owned
# The owner in that path is the client's word (review M1): alice names herself as the owner of
# bob's workspace. tokend grants it, marked owned; the application, told so, checks and refuses.
expect "owned grant on another user's workspace: the upstream refuses" 403 - \
  "$base/api/users/$alice_id/workspaces/$WB" -H "$(bearer "$alice")"
if grep -q '"detail": "owned grant not confirmed' "$tmp/body"; then
  ok "owned grant refused by the application, not passed"
else
  not_ok "owned grant refused by the application, not passed" "$(head -c 300 "$tmp/body")"
fi
expect "owned grant on another user's workspace, forged X-Tokend-Grant: site" 403 - \
  "$base/api/users/$alice_id/workspaces/$WB" -H "$(bearer "$alice")" -H "X-Tokend-Grant: site"
expect "site grant: the owner role on any workspace" 200 - "$base/api/users/$alice_id/workspaces/$WB" \
  -H "$(bearer "$admin_token")"
expect_seen "site grant: upstream saw X-Tokend-Grant: site" X-Tokend-Grant site
expect "allowed: owner creates a workspace" 200 - -X POST --data '{}' "$base/api/workspaces" \
  -H "$(bearer "$admin_token")"

# The three places a token may come from.
expect "token in the coder_session_token cookie" 200 - "$base/api/me" \
  -H "Cookie: theme=dark; coder_session_token=$alice; lang=en"
expect_seen "cookie: upstream saw alice" X-Tokend-Username alice
expect "token in Coder-Session-Token" 200 - "$base/api/me" -H "Coder-Session-Token: $alice"
expect_seen "Coder-Session-Token: upstream saw alice" X-Tokend-Username alice
expect "token in Authorization: Bearer" 200 - "$base/api/me" -H "$(bearer "$alice")"
expect_seen "Bearer: upstream saw alice" X-Tokend-Username alice

# A client cannot forge who it is...
expect "valid token with forged identity fields" 200 - "$base/api/me" -H "$(bearer "$alice")" \
  -H "X-Tokend-User-Id: $forged" -H "x-tokend-username: $forged" -H "X-Tokend-Token-Id: $forged" \
  -H "X-Tokend-Login-Type: $forged" -H "X_Tokend_User_Id: $forged"
expect_seen "forged X-Tokend-User-Id replaced by tokend's" X-Tokend-User-Id "$alice_id"
expect_seen "forged X-Tokend-Username replaced by tokend's" X-Tokend-Username alice
expect_seen "forged X-Tokend-Token-Id replaced by tokend's" X-Tokend-Token-Id "${alice:0:10}"
expect_seen "forged X-Tokend-Login-Type replaced by tokend's" X-Tokend-Login-Type token
expect_seen "X_Tokend_User_Id (underscores) removed" X_Tokend_User_Id ""
# ...nor what it is checked for.
expect "client's X-Tokend-Permission ignored" 403 scope -X PUT --data '{}' "$base/api/workspaces/$WA" \
  -H "$(bearer "$narrow")" -H "X-Tokend-Permission: workspace:read"
expect "client's ?perm= ignored" 403 scope -X PUT --data '{}' \
  "$base/api/workspaces/$WA?perm=workspace:read" -H "$(bearer "$narrow")"
expect "client's X-Tokend-Object ignored" 403 allow_list "$base/api/workspaces" \
  -H "$(bearer "$narrow")" -H "X-Tokend-Object: workspace:$WA"
expect "client's X-Tokend-Owner ignored" 403 role -X POST "$base/api/workspaces" \
  -H "$(bearer "$alice")" -H "X-Tokend-Owner: $alice_id"

# Routes: other methods and paths under a protected resource never fall back to "any token".
expect "unlisted method on a workspace" 405 - -X OPTIONS "$base/api/workspaces/$WA" -H "$(bearer "$alice")"
expect "path below a workspace" 404 - "$base/api/workspaces/$WA/" -H "$(bearer "$alice")"
# A request body goes to the application only (tokend never sees it, nor its 64 KiB limit).
head -c 100000 /dev/zero | tr '\0' x >"$tmp/big"
expect "PUT with a 100 kB body" 200 - -X PUT --data-binary "@$tmp/big" "$base/api/workspaces/$WA" \
  -H "$(bearer "$admin_token")"
if [[ $(seen_body_bytes) == 100000 ]]; then ok "the upstream got the whole body"; else
  not_ok "the upstream got the whole body" "body_bytes $(seen_body_bytes)"; fi

# Revocation with tokenctl applies to the very next request.
expect "token before revocation" 200 - "$base/api/me" -H "$(bearer "$revoked")"
ctl tokens remove "${revoked:0:10}" >/dev/null || not_ok "tokenctl tokens remove"
expect "revoked token (tokens remove), next request" 401 expired "$base/api/me" -H "$(bearer "$revoked")"
expect "token before deletion" 200 - "$base/api/me" -H "$(bearer "$deleted")"
ctl tokens remove "${deleted:0:10}" --delete >/dev/null || not_ok "tokenctl tokens remove --delete"
expect "deleted token (tokens remove --delete), next request" 401 unknown "$base/api/me" -H "$(bearer "$deleted")"

# Keep-alive: gateway requests reuse the gateway's connections to tokend.
accepted() {
  curl -s --unix-socket "$sock" http://tokend/metrics | sed -n 's/^tokend_connections_accepted_total //p'
}
before=$(accepted)
for _ in $(seq 30); do curl -s -o /dev/null "$base/api/me" -H "$(bearer "$alice")"; done
after=$(accepted)
# The second scrape is one connection itself; the gateway may open one more if it had none idle.
new=$((after - before - 1))
if ((new <= 1)); then ok "30 gateway requests opened $new new connection(s) to tokend"; else
  not_ok "30 gateway requests reuse connections to tokend" "$new new connections"; fi

# Nothing a client forged ever reached the upstream, on any request above.
if grep -q "$forged" "$tmp/upstream.log"; then
  not_ok "no forged value anywhere in the upstream's log" "$(grep -c "$forged" "$tmp/upstream.log") requests carried one"
else
  ok "no forged value anywhere in the upstream's log ($(wc -l <"$tmp/upstream.log") requests)"
fi

# Fail closed: with tokend gone, nothing gets through.
requests_before=$(wc -l <"$tmp/upstream.log")
kill -TERM "$tokend_pid"
wait "$tokend_pid" 2>/dev/null
case $gw in nginx) down=500 ;; caddy) down=502 ;; esac
expect "tokend stopped: refused" "$down" - "$base/api/me" -H "$(bearer "$alice")"
if [[ $(wc -l <"$tmp/upstream.log") == "$requests_before" ]]; then ok "tokend stopped: the upstream got nothing"; else
  not_ok "tokend stopped: the upstream got nothing" "it got $(($(wc -l <"$tmp/upstream.log") - requests_before)) requests"; fi

echo "# $gw: $((passed + failed)) checks, $passed passed, $failed failed"
((failed == 0))
