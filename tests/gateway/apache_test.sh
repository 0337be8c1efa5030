#!/usr/bin/env bash
# Gateway suite, Apache: Debian's apache2 with libapache2-mod-oauth2, configured from
# examples/apache/tokend.conf, in front of the echo upstream; every request's token introspected
# by tokend (POST /v1/introspect on --http-listen, RFC 7662); checked end to end with curl.
#
#   TOKEND=build/daemon/tokend TOKENCTL=build/tools/tokenctl tests/gateway/apache_test.sh
#
# Everything runs on loopback as ordinary processes in one temporary directory (a ServerRoot of
# its own, its own ports on 127.0.0.1). Exit 0 when every check passes, 1 when one fails, 77
# (SKIP) only when apache2 or mod_oauth2 is not installed (scripts/bootstrap installs both).
# TOKEND_KEEP_TMP=1 keeps the directory.
set -uo pipefail

: "${TOKEND:?set TOKEND to the built tokend}" "${TOKENCTL:?set TOKENCTL to the built tokenctl}"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

bin=${TOKEND_APACHE:-/usr/sbin/apache2}
modules=${TOKEND_APACHE_MODULES:-/usr/lib/apache2/modules}
if [[ ! -x $bin ]]; then
  echo "SKIP: apache2 is not installed ($bin); scripts/bootstrap installs it (Debian package 'apache2')"
  exit 77
fi
if [[ ! -f $modules/mod_oauth2.so ]]; then
  echo "SKIP: mod_oauth2 is not installed ($modules/mod_oauth2.so); scripts/bootstrap installs it" \
    "(Debian package 'libapache2-mod-oauth2')"
  exit 77
fi
command -v curl >/dev/null || { echo "FAIL: curl is missing (scripts/bootstrap installs it)"; exit 1; }
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3) || { echo "FAIL: python3 is missing"; exit 1; }

tmp=$(mktemp -d /tmp/tokend-gateway-apache.XXXXXX)
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
    for log in tokend.log gateway.log apache/error.log; do
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
wait_for() {
  local what=$1 tenths=$2
  shift 2
  for _ in $(seq "$tenths"); do
    "$@" && return 0
    sleep 0.1
  done
  die "$what did not come up"
}

# --- tokend, with HTTP on loopback TCP for mod_oauth2 (it takes a URL) --------------------------
data=$tmp/data
sock=$data/tokend.sock
for attempt in 1 2 3; do
  tport=$(free_port)
  "$TOKEND" --data-dir "$data" --log-level warn --http-listen "127.0.0.1:$tport" \
    --introspect-user apache >"$tmp/tokend.out" 2>"$tmp/tokend.log" &
  tokend_pid=$!
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$tport/healthz" && break
    kill -0 "$tokend_pid" 2>/dev/null || break
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$tport/healthz" && break
  kill "$tokend_pid" 2>/dev/null; wait "$tokend_pid" 2>/dev/null
  ((attempt == 3)) && die "tokend did not start: $(tail -3 "$tmp/tokend.log")"
done
pids+=("$tokend_pid")
tokend_url=http://127.0.0.1:$tport

ctl() { "$TOKENCTL" --db "$data" "$@"; }
reason_of() {
  curl -s -o /dev/null -D - --unix-socket "$sock" -H "Authorization: Bearer $1" http://tokend/v1/verify |
    sed -n 's/^X-Tokend-Reason: \(.*\)\r$/\1/p'
}

short=$(ctl tokens create --user admin --name short --lifetime 1s) || die "tokenctl tokens create"
ctl users create apache >/dev/null || die "tokenctl users create"
alice_id=$(ctl users create alice) || die "tokenctl users create"
ctl users create sam >/dev/null || die "tokenctl users create"
# The gateway's own token: its id and secret are mod_oauth2's client id and client secret.
gateway=$(ctl tokens create --user apache --name mod-oauth2)
alice=$(ctl tokens create --user alice --name all)
wsread=$(ctl tokens create --user alice --name wsread --scope workspace:read)
tplread=$(ctl tokens create --user alice --name tplread --scope template:read)
both=$(ctl tokens create --user alice --name both --scope workspace:read --scope template:read)
sam=$(ctl tokens create --user sam --name all)
ctl users suspend sam >/dev/null || die "tokenctl users suspend"
revoked=$(ctl tokens create --user alice --name to-revoke)
deleted=$(ctl tokens create --user alice --name to-delete)
[[ -n $gateway && -n $alice && -n $wsread && -n $both && -n $revoked && -n $deleted ]] ||
  die "could not set up users and tokens"

# --- the upstream -----------------------------------------------------------------------------------
"$py" "$here/echo_upstream.py" --port-file "$tmp/upstream.port" --log "$tmp/upstream.log" \
  >/dev/null 2>"$tmp/upstream.err" &
pids+=($!)
wait_for "the echo upstream" 100 test -s "$tmp/upstream.port"
app=127.0.0.1:$(cat "$tmp/upstream.port")

# --- Apache: a ServerRoot of its own, the example configuration included --------------------------
dir=$tmp/apache
start_apache() {
  rm -rf "$dir"
  mkdir -p "$dir"
  sed -e "s|__TOKEND_URL__|$tokend_url|g" -e "s|__CLIENT_ID__|${gateway:0:10}|g" \
    -e "s|__CLIENT_SECRET__|${gateway:11}|g" -e "s|__APP__|$app|g" \
    "$root/examples/apache/tokend.conf" >"$dir/tokend.conf"
  if grep -q '__[A-Z_]*__' "$dir/tokend.conf"; then die "a placeholder is left in the rendered configuration"; fi
  local user=""
  # As root, Apache serves as another user (it refuses root); the workers need no file here.
  [[ $(id -u) -eq 0 ]] && user=$'User www-data\nGroup www-data'
  cat >"$dir/httpd.conf" <<CONF
ServerRoot "$dir"
ServerName 127.0.0.1
Listen 127.0.0.1:$port
PidFile "$dir/httpd.pid"
ErrorLog "$dir/error.log"
LogLevel warn
$user
LoadModule mpm_event_module $modules/mod_mpm_event.so
LoadModule authn_core_module $modules/mod_authn_core.so
LoadModule authz_core_module $modules/mod_authz_core.so
LoadModule authz_user_module $modules/mod_authz_user.so
LoadModule proxy_module $modules/mod_proxy.so
LoadModule proxy_http_module $modules/mod_proxy_http.so
LoadModule oauth2_module $modules/mod_oauth2.so
Include "$dir/tokend.conf"
CONF
  "$bin" -d "$dir" -f "$dir/httpd.conf" -D FOREGROUND >"$tmp/gateway.log" 2>&1 &
}
gateway_up() {
  kill -0 "$gw_pid" 2>/dev/null || return 2
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz") == 200 ]]
}
for attempt in 1 2 3; do
  port=$(free_port)
  start_apache
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
  ((attempt == 3)) && die "apache did not start: $(tail -5 "$tmp/gateway.log" "$dir/error.log" 2>/dev/null)"
done
base=http://127.0.0.1:$port
version=$("$bin" -v 2>&1 | sed -n 's/^Server version: //p')
echo "# $version with mod_oauth2 ($(dpkg-query -W -f '${Version}' libapache2-mod-oauth2 2>/dev/null)) on $base, tokend on $tokend_url, upstream on $app"

# --- checks -------------------------------------------------------------------------------------------
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
req() {
  status=$(curl -s -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' --max-time 10 "$@")
}
seen() {
  "$py" -c '
import json, sys
try:
    d = json.load(open(sys.argv[2]))
except Exception:
    print("<upstream not reached>"); sys.exit()
print(",".join(v for n, v in d["headers"] if n == sys.argv[1].lower()))' "$1" "$tmp/body"
}
# expect <description> <status> <curl arguments>
expect() {
  local what=$1 want=$2
  shift 2
  req "$@"
  if [[ $status == "$want" ]]; then ok "$what: HTTP $want"; else
    not_ok "$what: HTTP $want" "got HTTP $status" "$(head -c 300 "$tmp/body")"; fi
}
expect_seen() {
  local got
  got=$(seen "$2")
  if [[ $got == "$3" ]]; then ok "$1"; else not_ok "$1" "upstream saw $2: '$got', wanted '$3'"; fi
}
bearer() { printf 'Authorization: Bearer %s' "$1"; }
forged=forged-by-client

expect "public /healthz without a token" 200 "$base/healthz"

# Not valid: mod_oauth2 refuses what tokend answers {"active":false} for.
expect "no token" 401 "$base/api/me"
expect "malformed token" 401 "$base/api/me" -H "$(bearer not-a-token)"
expect "unknown token" 401 "$base/api/me" -H "$(bearer AAAAAAAAAA-0123456789012345678901)"
expect "bad secret" 401 "$base/api/me" -H "$(bearer "${alice:0:11}0123456789012345678901")"
for _ in $(seq 50); do [[ $(reason_of "$short") == expired ]] && break; sleep 0.1; done
expect "expired token" 401 "$base/api/me" -H "$(bearer "$short")"
expect "suspended user" 401 "$base/api/me" -H "$(bearer "$sam")"

# Valid: the upstream receives tokend's claims.
expect "valid token" 200 "$base/api/me" -H "$(bearer "$alice")" \
  -H "OAUTH2_CLAIM_username: $forged" -H "OAUTH2_CLAIM_sub: $forged"
expect_seen "upstream saw the username claim" OAUTH2_CLAIM_username alice
expect_seen "upstream saw the sub claim (user id)" OAUTH2_CLAIM_sub "$alice_id"
expect_seen "upstream saw the jti claim (token id)" OAUTH2_CLAIM_jti "${alice:0:10}"
expect_seen "upstream saw the login_type claim" OAUTH2_CLAIM_login_type token
expect "valid token, in the other header case" 200 "$base/api/me" -H "authorization: bearer $alice"

# Scopes: an exact claim match (Require oauth2_claim), and a scope within a list (Require expr).
expect "exact scope: workspace:read token on /api/workspaces/" 200 "$base/api/workspaces/x" -H "$(bearer "$wsread")"
expect_seen "exact scope: upstream saw the scope claim" OAUTH2_CLAIM_scope workspace:read
expect "exact scope denied: template:read token on /api/workspaces/" 403 "$base/api/workspaces/x" \
  -H "$(bearer "$tplread")"
expect "scope in a list: workspace:read template:read on /api/templates/" 200 "$base/api/templates/x" \
  -H "$(bearer "$both")"
expect "scope in a list: coder:all on /api/templates/" 200 "$base/api/templates/x" -H "$(bearer "$alice")"
expect "scope denied: workspace:read token on /api/templates/" 401 "$base/api/templates/x" \
  -H "$(bearer "$wsread")"
expect "scope denied, forged scope claim header" 401 "$base/api/templates/x" -H "$(bearer "$wsread")" \
  -H "OAUTH2_CLAIM_scope: coder:all"

# Revocation: with expiry=0, the very next request.
expect "token before revocation" 200 "$base/api/me" -H "$(bearer "$revoked")"
ctl tokens remove "${revoked:0:10}" >/dev/null || not_ok "tokenctl tokens remove"
expect "revoked token (tokens remove), next request" 401 "$base/api/me" -H "$(bearer "$revoked")"
expect "token before deletion" 200 "$base/api/me" -H "$(bearer "$deleted")"
ctl tokens remove "${deleted:0:10}" --delete >/dev/null || not_ok "tokenctl tokens remove --delete"
expect "deleted token (tokens remove --delete), next request" 401 "$base/api/me" -H "$(bearer "$deleted")"
ctl users suspend alice >/dev/null || not_ok "tokenctl users suspend"
expect "suspended after use, next request" 401 "$base/api/me" -H "$(bearer "$alice")"
ctl users activate alice >/dev/null || not_ok "tokenctl users activate"

# The gateway's credentials matter: with its token revoked, nothing gets through.
if grep -q "$forged" "$tmp/upstream.log"; then
  not_ok "no forged value anywhere in the upstream's log"
else
  ok "no forged value anywhere in the upstream's log ($(wc -l <"$tmp/upstream.log") requests)"
fi
ctl tokens remove "${gateway:0:10}" >/dev/null || not_ok "tokenctl tokens remove (gateway)"
requests_before=$(wc -l <"$tmp/upstream.log")
expect "gateway's own token revoked: refused" 401 "$base/api/me" -H "$(bearer "$both")"

# Fail closed: with tokend gone, nothing gets through.
kill -TERM "$tokend_pid"
wait "$tokend_pid" 2>/dev/null
expect "tokend stopped: refused" 401 "$base/api/me" -H "$(bearer "$both")"
if [[ $(wc -l <"$tmp/upstream.log") == "$requests_before" ]]; then ok "refused requests never reached the upstream"; else
  not_ok "refused requests never reached the upstream" "it got $(($(wc -l <"$tmp/upstream.log") - requests_before))"; fi

echo "# apache: $((passed + failed)) checks, $passed passed, $failed failed"
((failed == 0))
