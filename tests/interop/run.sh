#!/usr/bin/env bash
# The interop suite: xoauth2-proxy between real mail clients (curl, Python's
# imaplib/poplib/smtplib) and a real XOAUTH2-only server (Dovecot 2.3 from
# Debian's packages), with the tests' fake token endpoint over HTTPS as the
# OAuth provider; Dovecot checks every token with its introspection endpoint.
#
#   sudo bash tests/interop/run.sh       (root: apt-get, Dovecot's mail uid)
#
# Installs what is missing with apt, builds the proxy (release) and the fake
# token server (examples/fake_token_server.rs), starts everything on free
# high ports of 127.0.0.1 under a temporary directory, prints one line per
# check (`ok - …` / `FAIL - …`) and closes with `N passed, M failed`; exits
# non-zero on any failure. Everything it started is stopped on exit.
# KEEP_INTEROP_TMP=1 keeps the temporary directory (configs, logs, mail).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

ACCOUNT=user@example.test
# One local password for every client: chosen at sign-in (`authorize
# --password-stdin`), which seals the tokens under it. A space, quotes and a backslash: imaplib sends it as a
# quoted string with escapes, curl quotes it too, and one check sends it as
# an IMAP literal.
PASSWORD='s3cret "quoted" \ pass'
# Seconds an IMAP IDLE stays quiet before a message is delivered.
IDLE_SECS=${INTEROP_IDLE_SECS:-30}
# Upper bound for one client operation (curl --max-time, Python timeouts).
OP_TIMEOUT=120
BIG=$((20 * 1024 * 1024))

passed=0
failed=0
RUN=""
PIDS=()

log() { printf '# %s\n' "$*"; }

# Prints the tail of every log, indented, after a failure.
show_logs() {
  local f
  for f in "$RUN"/*.log; do
    [[ -s "$f" ]] || continue
    printf '#   --- last lines of %s\n' "${f##*/}"
    tail -n 25 "$f" | sed 's/^/#   /'
  done
}

# check NAME COMMAND...: runs COMMAND (a function or a program) in a subshell
# with errexit, prints `ok - NAME` or `FAIL - NAME` with its output and the
# logs' tails. Every client call inside is bounded by its own timeout.
# authorize_device CONFIG: signs the account in with the device flow (the
# fake approves it as the account's own user), choosing the local password
# on standard input; the tokens are sealed under it from their first write.
authorize_device() {
  printf '%s\n' "$PASSWORD" |
    timeout 60 "$PROXY" authorize "$ACCOUNT" --device --password-stdin --config "$1"
}

check() {
  local name=$1
  shift
  local out="$RUN/check.out"
  local started=$SECONDS
  ("$@") >"$out" 2>&1 &
  if wait $!; then
    passed=$((passed + 1))
    echo "ok - $name ($((SECONDS - started))s)"
    if [[ -s "$out" ]]; then sed 's/^/#   /' "$out"; fi
  else
    failed=$((failed + 1))
    echo "FAIL - $name ($((SECONDS - started))s)"
    tail -n 40 "$out" | sed 's/^/#   /'
    show_logs
  fi
}

# Ends the run early when the set-up fails: the remaining checks cannot run.
die() {
  failed=$((failed + 1))
  echo "FAIL - $*"
  [[ -n "$RUN" ]] && show_logs
  echo "$passed passed, $failed failed"
  exit 1
}

cleanup() {
  local rc=$? pid i
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$RUN" && -d "$RUN" ]]; then
    if [[ -n "${KEEP_INTEROP_TMP:-}" ]]; then
      log "kept $RUN"
    else
      rm -rf "$RUN"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME LOGFILE COMMAND...: runs COMMAND in the background, stopped on exit.
start() {
  local name=$1 logfile=$2
  shift 2
  "$@" >"$RUN/$logfile" 2>&1 &
  PIDS+=("$!")
  log "started $name (pid $!)"
}

# wait_port PORT WHAT PID: polls until 127.0.0.1:PORT accepts (at most 30 s).
wait_port() {
  local port=$1 what=$2 pid=$3 i
  for ((i = 0; i < 300; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "$what exited before listening on port $port"
    sleep 0.1
  done
  die "$what is not listening on port $port after 30 s"
}

# --- machine set-up -----------------------------------------------------------

install_packages() {
  local need=() pkg
  for pkg in dovecot-imapd dovecot-pop3d dovecot-submissiond curl openssl tinyproxy microsocks msmtp; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
      need+=("$pkg")
    fi
  done
  # Any python3 will do (Debian's, pyenv's, a venv's).
  command -v python3 >/dev/null || need+=(python3)
  ((${#need[@]})) || return 0
  [[ $EUID -eq 0 ]] || die "set-up: installing ${need[*]} needs root (run with sudo)"
  log "installing ${need[*]}"
  timeout 300 apt-get update -qq >/dev/null || die "set-up: apt-get update failed"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null || die "set-up: apt-get install ${need[*]} failed"
}

make_pki() {
  local d="$RUN/pki"
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=xoauth2-proxy interop CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid" >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
    -CAcreateserial -days 2 -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null
  # Dovecot's auth process (user dovecot) reads the CA for introspection.
  chmod 755 "$d"
  chmod 644 "$d/ca.pem" "$d/server.pem"
}

# render TEMPLATE OUT: fills in the @NAME@ placeholders of a config template.
render() {
  sed -e "s|@RUN@|$RUN|g" \
    -e "s|@IMAPS_PORT@|$DOVECOT_IMAPS|g" \
    -e "s|@POP3S_PORT@|$DOVECOT_POP3S|g" \
    -e "s|@SUBMISSION_PORT@|$DOVECOT_SUBMISSION|g" \
    -e "s|@SINK_PORT@|$SINK_PORT|g" \
    -e "s|@TOKEN_PORT@|$TOKEN_PORT|g" \
    -e "s|@MAIL_UID@|$(id -u mail)|g" \
    -e "s|@MAIL_GID@|$(id -g mail)|g" \
    -e "s|@AUTH_DEBUG@|${INTEROP_AUTH_DEBUG:-no}|g" \
    "$1" >"$2"
}

# proxy_config LOCAL_TLS OUT: the proxy's configuration for one run. With
# local TLS, the proxy shows the clients a certificate from the test CA.
# UPSTREAM_PROXY, when set, is the proxy's upstream_proxy.
UPSTREAM_PROXY=""
proxy_config() {
  local tls=$1 out=$2 local_cert="" via=""
  [[ -n "$UPSTREAM_PROXY" ]] && via="upstream_proxy = \"$UPSTREAM_PROXY\""
  if [[ "$tls" != none ]]; then
    local_cert="cert_file = \"$RUN/pki/server.pem\"
key_file = \"$RUN/pki/server.key\""
  fi
  cat >"$out" <<EOF
[proxy]
state_dir = "$RUN/proxy-state"
ca_file = "$RUN/pki/ca.pem"
connect_timeout_secs = 10
$local_cert
$via

[[listener]]
protocol = "imap"
listen = "127.0.0.1:$PROXY_IMAP"
upstream = "127.0.0.1:$DOVECOT_IMAPS"
upstream_tls = "implicit"
local_tls = "$tls"

[[listener]]
protocol = "pop3"
listen = "127.0.0.1:$PROXY_POP3"
upstream = "127.0.0.1:$DOVECOT_POP3S"
upstream_tls = "implicit"
local_tls = "$tls"

[[listener]]
protocol = "smtp"
listen = "127.0.0.1:$PROXY_SMTP"
upstream = "127.0.0.1:$DOVECOT_SUBMISSION"
upstream_tls = "starttls"
local_tls = "$tls"

# Sending through Microsoft Graph: the fake token server's sendMail.
[[listener]]
protocol = "smtp"
backend = "graph"
listen = "127.0.0.1:$PROXY_GRAPH"
local_tls = "$tls"

[[account]]
username = "$ACCOUNT"
provider = "custom"
client_id = "interop-client"
token_url = "https://127.0.0.1:$TOKEN_PORT/token"
device_code_url = "https://127.0.0.1:$TOKEN_PORT/devicecode"
graph_url = "https://127.0.0.1:$TOKEN_PORT"
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/POP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send", "offline_access"]
EOF
}

# --- checks -----------------------------------------------------------------

PY() { timeout --kill-after=5 $((OP_TIMEOUT + 60)) python3 "$@"; }

# curl through the proxy; URL schemes and TLS options follow LOCAL_TLS.
curl_proxy() {
  local tls_opts=()
  case "$LOCAL_TLS" in
    starttls) tls_opts=(--ssl-reqd --cacert "$RUN/pki/ca.pem") ;;
    implicit) tls_opts=(--cacert "$RUN/pki/ca.pem") ;;
  esac
  curl --silent --show-error --max-time "$OP_TIMEOUT" --connect-timeout 10 \
    "${tls_opts[@]}" --user "$ACCOUNT:$PASSWORD" "$@"
}

scheme() {
  # scheme imap|pop3|smtp -> the URL scheme for LOCAL_TLS
  if [[ "$LOCAL_TLS" == implicit ]]; then echo "${1}s"; else echo "$1"; fi
}

# curl_login_used TRACE: the login command curl sent, from its -v output.
curl_login_used() {
  local used
  used=$(grep -aoE '^> ([A-Z][0-9]+ )?(LOGIN|AUTHENTICATE [A-Z0-9-]+|AUTH [A-Z0-9-]+|USER)' "$1" |
    head -n 1 | sed -E 's/^> ([A-Z][0-9]+ (LOGIN|AUTHENTICATE))/\2/; s/^> //')
  echo "curl logged in with: ${used:-nothing it showed}"
}

# curl_imap_fetch FOLDER EXPECTED [LOGIN_OPTIONS]: UID FETCH 1 through the proxy.
curl_imap_fetch() {
  local folder=$1 expected=$2 opts=${3:-} out="$RUN/curl-imap.out" trace="$RUN/curl-imap.trace"
  local login_opts=()
  [[ -n "$opts" ]] && login_opts=(--login-options "$opts")
  rm -f "$out"
  curl_proxy -v "${login_opts[@]}" -o "$out" \
    "$(scheme imap)://127.0.0.1:$PROXY_IMAP/$folder/;UID=1" 2>"$trace" ||
    { tail -n 20 "$trace"; return 1; }
  curl_login_used "$trace"
  PY "$HERE/tool.py" same "$out" "$expected"
}

# curl_pop3_retr EXPECTED: LIST, then RETR the message of that size.
curl_pop3_retr() {
  local expected=$1 out="$RUN/curl-pop3.out" trace="$RUN/curl-pop3.trace" size num
  size=$(stat -c %s "$expected")
  num=$(curl_proxy "$(scheme pop3)://127.0.0.1:$PROXY_POP3/" | tr -d '\r' |
    awk -v size="$size" '$2 == size { print $1; exit }')
  [[ -n "$num" ]] || { echo "no message of $size bytes in the POP3 LIST"; return 1; }
  rm -f "$out"
  curl_proxy -v -o "$out" "$(scheme pop3)://127.0.0.1:$PROXY_POP3/$num" 2>"$trace" ||
    { tail -n 20 "$trace"; return 1; }
  curl_login_used "$trace"
  PY "$HERE/tool.py" same "$out" "$expected"
}

# curl_pop3_user_pass EXPECTED: USER and PASS as custom commands (-I: one-line
# replies) on a connection curl did not log in, then (--next, same
# connection) LIST and RETR. curl itself uses AUTH PLAIN when SASL is offered
# and has no option for USER/PASS.
curl_pop3_user_pass() {
  local expected=$1 out="$RUN/curl-pop3.out" trace="$RUN/curl-pop3.trace" size num
  local tls_opts=() url common
  case "$LOCAL_TLS" in
    starttls) tls_opts=(--ssl-reqd --cacert "$RUN/pki/ca.pem") ;;
    implicit) tls_opts=(--cacert "$RUN/pki/ca.pem") ;;
  esac
  url="$(scheme pop3)://127.0.0.1:$PROXY_POP3"
  common=(-v --silent --show-error --max-time "$OP_TIMEOUT" "${tls_opts[@]}")
  size=$(stat -c %s "$expected")
  rm -f "$out"
  curl "${common[@]}" -I --request "USER $ACCOUNT" "$url/" \
    --next "${common[@]}" -I --request "PASS $PASSWORD" "$url/" \
    --next "${common[@]}" -o "$out.list" "$url/" >/dev/null 2>"$trace" ||
    { tail -n 30 "$trace"; return 1; }
  num=$(tr -d '\r' <"$out.list" | awk -v size="$size" '$2 == size { print $1; exit }')
  [[ -n "$num" ]] || { echo "no message of $size bytes in the POP3 LIST"; return 1; }
  # A fresh curl run is a fresh connection: log in the same way again.
  curl "${common[@]}" -I --request "USER $ACCOUNT" "$url/" \
    --next "${common[@]}" -I --request "PASS $PASSWORD" "$url/" \
    --next "${common[@]}" -o "$out" "$url/$num" >/dev/null 2>"$trace" ||
    { tail -n 30 "$trace"; return 1; }
  [[ $(grep -ac 'Re-using existing connection' "$trace") -ge 2 ]] ||
    { echo "curl did not reuse the logged-in connection"; tail -n 30 "$trace"; return 1; }
  grep -aq '^> PASS ' "$trace" || { echo "curl sent no PASS"; return 1; }
  curl_login_used "$trace"
  PY "$HERE/tool.py" same "$out" "$expected"
}

# curl_smtp_send MECH FILE TAG: AUTH MECH, send FILE, compare the sink's copy.
curl_smtp_send() {
  local mech=$1 file=$2 tag=$3 trace="$RUN/curl-smtp.trace"
  curl_proxy -v --login-options "AUTH=$mech" \
    --mail-from "$ACCOUNT" --mail-rcpt rcpt@example.test --upload-file "$file" \
    "$(scheme smtp)://127.0.0.1:$PROXY_SMTP" 2>"$trace" ||
    { tail -n 20 "$trace"; return 1; }
  curl_login_used "$trace"
  grep -aq "^> AUTH $mech" "$trace" || { echo "curl did not use AUTH $mech"; return 1; }
  PY "$HERE/tool.py" sink-same "$RUN/sink" "$tag" "$file"
}

# curl_graph_send FILE TAG: AUTH PLAIN to the Graph listener, send FILE to
# its own To: address; the fake Graph's copy must be FILE byte for byte.
curl_graph_send() {
  local file=$1 tag=$2 trace="$RUN/curl-graph.trace"
  curl_proxy -v --login-options "AUTH=PLAIN" \
    --mail-from "$ACCOUNT" --mail-rcpt "$ACCOUNT" --upload-file "$file" \
    "$(scheme smtp)://127.0.0.1:$PROXY_GRAPH" 2>"$trace" ||
    { tail -n 20 "$trace"; return 1; }
  curl_login_used "$trace"
  grep -aq '^< 250 2.0.0' "$trace" || { echo "no 250 2.0.0 after DATA"; tail -n 20 "$trace"; return 1; }
  PY "$HERE/tool.py" graph-same "$RUN/graph" "$tag" "$file"
}

# curl_graph_send_large FILE TAG: AUTH PLAIN to the Graph listener, send FILE
# (over 3 MiB: the proxy goes through a draft); curl must hear 250 2.0.0 and
# the fake Graph's draft and attachments must be FILE's parts.
curl_graph_send_large() {
  local file=$1 tag=$2 trace="$RUN/curl-graph-large.trace"
  curl_proxy -v --login-options "AUTH=PLAIN" \
    --mail-from "$ACCOUNT" --mail-rcpt "$ACCOUNT" --upload-file "$file" \
    "$(scheme smtp)://127.0.0.1:$PROXY_GRAPH" 2>"$trace" ||
    { tail -n 20 "$trace"; return 1; }
  curl_login_used "$trace"
  grep -aq '^> AUTH PLAIN' "$trace" || { echo "curl did not use AUTH PLAIN"; return 1; }
  grep -aq '^< 250 2.0.0' "$trace" || { echo "no 250 2.0.0 after DATA"; tail -n 20 "$trace"; return 1; }
  PY "$HERE/tool.py" graph-draft "$RUN/graph" "$tag" "$file"
}

# smtplib_graph_send_large FILE TAG: the same with Python's smtplib (AUTH LOGIN).
smtplib_graph_send_large() {
  PY "$HERE/clients.py" graph-send-large login "$1"
  PY "$HERE/tool.py" graph-draft "$RUN/graph" "$2" "$1"
}

# Whether this curl has `--login-options AUTH=+LOGIN` (the IMAP LOGIN command
# even when SASL PLAIN is offered; newer than Debian 12's curl 7.88). An older
# one rejects the option once connected (exit 3); a newer one logs in.
curl_has_plus_login() {
  local rc=0
  curl_proxy --login-options 'AUTH=+LOGIN' "$(scheme imap)://127.0.0.1:$PROXY_IMAP/" \
    >/dev/null 2>&1 || rc=$?
  [[ $rc -ne 3 ]]
}

# imap_quoted STRING: STRING as an IMAP quoted string.
imap_quoted() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# curl_imap_login_command FOLDER EXPECTED: for a curl without AUTH=+LOGIN.
# curl sends LOGIN as a custom command on a connection it did not log in
# (no --user), then (--next) reuses that connection for the UID FETCH.
curl_imap_login_command() {
  local folder=$1 expected=$2 out="$RUN/curl-imap.out" trace="$RUN/curl-imap.trace"
  local tls_opts=() url
  case "$LOCAL_TLS" in
    starttls) tls_opts=(--ssl-reqd --cacert "$RUN/pki/ca.pem") ;;
    implicit) tls_opts=(--cacert "$RUN/pki/ca.pem") ;;
  esac
  url="$(scheme imap)://127.0.0.1:$PROXY_IMAP"
  rm -f "$out"
  curl -v --silent --show-error --max-time "$OP_TIMEOUT" "${tls_opts[@]}" \
    --request "LOGIN $(imap_quoted "$ACCOUNT") $(imap_quoted "$PASSWORD")" "$url/" \
    --next -v --silent --show-error --max-time "$OP_TIMEOUT" "${tls_opts[@]}" \
    -o "$out" "$url/$folder/;UID=1" 2>"$trace" || { tail -n 30 "$trace"; return 1; }
  grep -aqE '^< [A-Z][0-9]+ OK .*Logged in' "$trace" ||
    { echo "no tagged OK for LOGIN in curl's trace"; tail -n 30 "$trace"; return 1; }
  grep -aq 'Re-using existing connection' "$trace" ||
    { echo "curl did not reuse the logged-in connection"; tail -n 30 "$trace"; return 1; }
  curl_login_used "$trace"
  PY "$HERE/tool.py" same "$out" "$expected"
}

# clients_env: what clients.py reads.
clients_env() {
  export INTEROP_USER="$ACCOUNT" INTEROP_PASSWORD="$PASSWORD"
  export INTEROP_IMAP="127.0.0.1:$PROXY_IMAP" INTEROP_POP3="127.0.0.1:$PROXY_POP3"
  export INTEROP_SMTP="127.0.0.1:$PROXY_SMTP" INTEROP_LOCAL_TLS="$LOCAL_TLS"
  export INTEROP_GRAPH="127.0.0.1:$PROXY_GRAPH"
  export INTEROP_CA="$RUN/pki/ca.pem" INTEROP_DOVECOT_IMAPS="127.0.0.1:$DOVECOT_IMAPS"
  export INTEROP_TOKEN_URL="https://127.0.0.1:$TOKEN_PORT/token" INTEROP_TIMEOUT="$OP_TIMEOUT"
}

message() { PY "$HERE/tool.py" message "$1" "$2" "$3"; }

# The checks through the proxy, for one local TLS mode.
client_suite() {
  LOCAL_TLS=$1
  # Folder, file and sink names of this run: unique per run of the suite.
  local n=${SUITE:-$LOCAL_TLS}
  clients_env
  local m="$RUN/msg" t="local_tls=$LOCAL_TLS${VIA:+, $VIA}"
  local idle_out="$RUN/idle-$n.out" idle_pid

  # The IDLE check runs alongside the others (it is quiet for IDLE_SECS);
  # it uses a folder of its own, so their mail does not wake it early.
  message 3000 "idle-$n" "$m/idle-$n.eml"
  PY "$HERE/clients.py" imap-idle "idle-$n" "$MAILDIR" "$m/idle-$n.eml" \
    "$IDLE_SECS" >"$idle_out" 2>&1 &
  idle_pid=$!
  PIDS+=("$idle_pid")

  if curl_has_plus_login; then
    check "curl: IMAP LOGIN + UID FETCH, byte-exact ($t)" \
      curl_imap_fetch small "$m/small.eml" 'AUTH=+LOGIN'
  else
    check "curl: IMAP LOGIN (custom command; this curl has no AUTH=+LOGIN) + UID FETCH, byte-exact ($t)" \
      curl_imap_login_command small "$m/small.eml"
  fi
  check "curl: IMAP login (curl's choice) + UID FETCH, byte-exact ($t)" \
    curl_imap_fetch small "$m/small.eml"
  check "curl: IMAP AUTHENTICATE LOGIN + FETCH of a 20 MiB message, byte-exact ($t)" \
    curl_imap_fetch big "$m/big.eml" 'AUTH=LOGIN'
  check "curl: POP3 USER/PASS (custom commands) + RETR, byte-exact ($t)" \
    curl_pop3_user_pass "$m/inbox-small.eml"
  check "curl: POP3 login (curl's choice) + RETR, byte-exact ($t)" \
    curl_pop3_retr "$m/inbox-small.eml"
  check "curl: POP3 RETR of a 20 MiB message, byte-exact ($t)" curl_pop3_retr "$m/inbox-big.eml"

  message 5000 "curl-plain-$n" "$m/curl-plain-$n.eml"
  check "curl: SMTP AUTH PLAIN send, sink copy byte-exact ($t)" \
    curl_smtp_send PLAIN "$m/curl-plain-$n.eml" "curl-plain-$n"
  message 5000 "curl-login-$n" "$m/curl-login-$n.eml"
  check "curl: SMTP AUTH LOGIN send, sink copy byte-exact ($t)" \
    curl_smtp_send LOGIN "$m/curl-login-$n.eml" "curl-login-$n"
  message "$BIG" "curl-big-$n" "$m/curl-big-$n.eml"
  check "curl: SMTP send of a 20 MiB message, sink copy byte-exact ($t)" \
    curl_smtp_send PLAIN "$m/curl-big-$n.eml" "curl-big-$n"

  check "imaplib: LOGIN (quoted password) + FETCH, byte-exact ($t)" \
    PY "$HERE/clients.py" imap-fetch quoted small "$m/small.eml"
  check "imaplib: LOGIN with the password as a literal + FETCH, byte-exact ($t)" \
    PY "$HERE/clients.py" imap-fetch literal small "$m/small.eml"
  check "imaplib: AUTHENTICATE PLAIN + FETCH of a 20 MiB message, byte-exact ($t)" \
    PY "$HERE/clients.py" imap-fetch plain big "$m/big.eml"
  message 1048576 "append-$n" "$m/append-$n.eml"
  check "imaplib: APPEND 1 MiB through the proxy, FETCH it back byte-exact ($t)" \
    PY "$HERE/clients.py" imap-append "append-$n" "$m/append-$n.eml"
  check "imaplib: a wrong password is refused, the connection stays usable ($t)" \
    PY "$HERE/clients.py" imap-wrong-password
  check "poplib: USER/PASS + RETR of a small and a 20 MiB message, byte-exact ($t)" \
    PY "$HERE/clients.py" pop3-retr "$m/inbox-small.eml" "$m/inbox-big.eml"

  message 4000 "smtplib-plain-$n" "$m/smtplib-plain-$n.eml"
  check "smtplib: login (AUTH PLAIN) + send, sink copy byte-exact ($t)" \
    PY "$HERE/clients.py" smtp-send plain "$m/smtplib-plain-$n.eml" \
    "smtplib-plain-$n" "$RUN/sink"
  message "$BIG" "smtplib-big-$n" "$m/smtplib-big-$n.eml"
  check "smtplib: AUTH LOGIN + send of a 20 MiB message, sink copy byte-exact ($t)" \
    PY "$HERE/clients.py" smtp-send login "$m/smtplib-big-$n.eml" \
    "smtplib-big-$n" "$RUN/sink"

  message 6000 "graph-curl-$n" "$m/graph-curl-$n.eml"
  check "curl: AUTH PLAIN + send through Microsoft Graph (fake sendMail), its copy byte-exact ($t)" \
    curl_graph_send "$m/graph-curl-$n.eml" "graph-curl-$n"
  message 7000 "graph-smtplib-$n" "$m/graph-smtplib-$n.eml"
  check "smtplib: AUTH LOGIN + send through Graph with a Bcc-only recipient: only a Bcc field added ($t)" \
    PY "$HERE/clients.py" graph-send login "$m/graph-smtplib-$n.eml" "graph-smtplib-$n" "$RUN/graph"
  # Over 3 MiB: through a draft, its attachments added one by one (a
  # fileAttachment, or an upload session to the upload URL over HTTPS).
  PY "$HERE/tool.py" large-message smtplib "graph-large-smtplib-$n" "$ACCOUNT" \
    "$m/graph-large-smtplib-$n.eml"
  check "smtplib: AUTH LOGIN + 11 MB message (email package: text, 6 MB PDF, 2.5 MB inline PNG) through a Graph draft: 250 2.0.0, draft and attachments exact ($t)" \
    smtplib_graph_send_large "$m/graph-large-smtplib-$n.eml" "graph-large-smtplib-$n"
  PY "$HERE/tool.py" large-message curl "graph-large-curl-$n" "$ACCOUNT" "$m/graph-large-curl-$n.eml"
  check "curl: AUTH PLAIN + 7 MB .eml (5 MB ZIP cut out, 100 kB inline logo kept) through a Graph draft: 250 2.0.0, draft and attachment exact ($t)" \
    curl_graph_send_large "$m/graph-large-curl-$n.eml" "graph-large-curl-$n"

  local idle_rc=0
  wait "$idle_pid" || idle_rc=$?
  check "imaplib: IDLE held ${IDLE_SECS}s through the proxy gets EXISTS for a delivery ($t)" \
    show_result "$idle_rc" "$idle_out"
}

# show_result RC OUTPUT: the result of a check that ran in the background.
show_result() {
  cat "$2"
  return "$1"
}

# start_proxy LOCAL_TLS [TAG]: (re)starts the proxy with that local TLS mode
# (and UPSTREAM_PROXY); TAG names its configuration and log.
PROXY_PID=""
start_proxy() {
  local tls=$1 tag=${2:-$1}
  local conf="$RUN/proxy-$tag.toml"
  if [[ -n "$PROXY_PID" ]]; then
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
  fi
  proxy_config "$tls" "$conf"
  start "xoauth2-proxy (local_tls=$tls${UPSTREAM_PROXY:+, through $UPSTREAM_PROXY})" "proxy-$tag.log" \
    env NO_COLOR=1 "$PROXY" run --config "$conf"
  PROXY_PID=$!
  wait_port "$PROXY_IMAP" "the proxy" "$PROXY_PID"
  wait_port "$PROXY_POP3" "the proxy" "$PROXY_PID"
  wait_port "$PROXY_SMTP" "the proxy" "$PROXY_PID"
  wait_port "$PROXY_GRAPH" "the proxy" "$PROXY_PID"
}

# Whether this build of the proxy accepts local_tls = MODE.
local_tls_supported() {
  proxy_config "$1" "$RUN/probe-$1.toml"
  "$PROXY" check-config --config "$RUN/probe-$1.toml" >"$RUN/probe-$1.out" 2>&1
}

# --- through the company's proxy ---------------------------------------------

# The proxies' passwords: tinyproxy's config takes letters, digits and
# dashes; microsocks' has an "@", percent-encoded in the URL.
TINYPROXY_SECRET='pr0xy-s3cret'
SOCKS_SECRET='pr0xy@s3cret'
SOCKS_SECRET_URL='pr0xy%40s3cret'
TINYPROXY_PID=""

# start_tinyproxy LOG [BasicAuth line]: (re)starts tinyproxy in the foreground.
start_tinyproxy() {
  if [[ -n "$TINYPROXY_PID" ]]; then
    kill "$TINYPROXY_PID" 2>/dev/null || true
    wait "$TINYPROXY_PID" 2>/dev/null || true
  fi
  printf '%s\n' "Port $HTTP_PROXY_PORT" "Listen 127.0.0.1" "Timeout 600" "LogLevel Connect" \
    "MaxClients 200" "Allow 127.0.0.1" "DisableViaHeader Yes" ${2:+"$2"} >"$RUN/tinyproxy.conf"
  start "tinyproxy${2:+ (Basic authentication)}" "$1" tinyproxy -d -c "$RUN/tinyproxy.conf"
  TINYPROXY_PID=$!
  wait_port "$HTTP_PROXY_PORT" "tinyproxy" "$TINYPROXY_PID"
}

# Every client check again with upstream_proxy set: tinyproxy (HTTP CONNECT,
# without and with Basic authentication) and microsocks (SOCKS5 with a user
# and password; socks5h: it resolves the names). The sign-in goes through it
# too (authorize: the device flow's token requests), and its log must show
# a tunnel to each Dovecot port and to the token endpoint.
through_proxies() {
  start "microsocks" microsocks.log microsocks -i 127.0.0.1 -p "$SOCKS_PORT" -u tester -P "$SOCKS_SECRET"
  wait_port "$SOCKS_PORT" "microsocks" "$!"
  log "$(tinyproxy -v), microsocks $(dpkg-query -W -f='${Version}' microsocks)"

  local via url log_file
  for via in http http-basic socks5h; do
    case "$via" in
      http)
        start_tinyproxy tinyproxy.log
        url="http://127.0.0.1:$HTTP_PROXY_PORT" log_file=tinyproxy.log
        ;;
      http-basic)
        start_tinyproxy tinyproxy-basic.log "BasicAuth tester $TINYPROXY_SECRET"
        url="http://tester:$TINYPROXY_SECRET@127.0.0.1:$HTTP_PROXY_PORT" log_file=tinyproxy-basic.log
        ;;
      socks5h)
        url="socks5h://tester:$SOCKS_SECRET_URL@127.0.0.1:$SOCKS_PORT" log_file=microsocks.log
        ;;
    esac
    UPSTREAM_PROXY=$url VIA="through $via" SUITE="none-$via"
    proxy_config none "$RUN/proxy-$via.toml"
    check "authorize (device flow) through $via: the token requests take the proxy" \
      authorize_device "$RUN/proxy-$via.toml"
    start_proxy none "$via"
    client_suite none
    check "$via: the proxy's log shows tunnels to IMAP, POP3, submission and the token endpoint" \
      proxy_log_shows "$RUN/$log_file" "$DOVECOT_IMAPS" "$DOVECOT_POP3S" "$DOVECOT_SUBMISSION" "$TOKEN_PORT"
    check "$via: the proxy password is not in xoauth2-proxy's log" \
      nothing_secret "$RUN/proxy-$via.log" "s3cret"
  done
  UPSTREAM_PROXY="" VIA="" SUITE=""
}

# proxy_log_shows LOG PORT...: tinyproxy's "CONNECT 127.0.0.1:PORT" or
# microsocks' "connected to 127.0.0.1:PORT", for each port.
proxy_log_shows() {
  local log_file=$1 port n
  shift
  for port in "$@"; do
    n=$(grep -acE "(CONNECT|connected to) 127\.0\.0\.1:$port( |\$)" "$log_file" || true)
    [[ $n -gt 0 ]] || { echo "no tunnel to port $port in ${log_file##*/}"; tail -n 20 "$log_file"; return 1; }
    echo "port $port: $n tunnel(s)"
  done
}

# nothing_secret LOG WORD: WORD appears nowhere in LOG.
nothing_secret() {
  if grep -aq "$2" "$1"; then
    grep -a "$2" "$1" | head -n 3
    return 1
  fi
  echo "$(wc -l <"$1") log lines, none with it"
}

# --- tokens for other programs -------------------------------------------------

# token_script: a script printing `xoauth2-proxy token` for the account, the
# local password read from an owner-only file: what msmtp's passwordeval,
# mutt's oauthbearer_refresh_command or mbsync's PassCmd would run.
token_script() {
  local script="$RUN/token.sh"
  (umask 077 && printf '%s\n' "$PASSWORD" >"$RUN/local-password")
  printf '#!/bin/sh\nexec %q token %q --password-stdin --config %q <%q\n' \
    "$PROXY" "$ACCOUNT" "$RUN/proxy-none.toml" "$RUN/local-password" >"$script"
  chmod 700 "$script"
  echo "$script"
}

# token_curl_dovecot EXPECTED: curl logs in to Dovecot itself (no proxy in
# the path) with the token `xoauth2-proxy token` printed, over XOAUTH2, and
# fetches the message byte for byte. The token is never printed here.
token_curl_dovecot() {
  local token out="$RUN/token-imap.out"
  token=$(timeout 60 sh "$(token_script)") || { echo "xoauth2-proxy token failed"; return 1; }
  [[ -n "$token" ]] || { echo "xoauth2-proxy token printed nothing"; return 1; }
  rm -f "$out"
  curl --silent --show-error --max-time "$OP_TIMEOUT" --cacert "$RUN/pki/ca.pem" \
    --user "$ACCOUNT" --oauth2-bearer "$token" --login-options "AUTH=XOAUTH2" \
    -o "$out" "imaps://127.0.0.1:$DOVECOT_IMAPS/small/;UID=1"
  PY "$HERE/tool.py" same "$out" "$1"
}

# msmtp_token_send FILE TAG: msmtp with `auth xoauth2` and passwordeval
# running `xoauth2-proxy token` submits FILE to Dovecot's submission service
# itself; the sink's copy must be FILE.
msmtp_token_send() {
  local file=$1 tag=$2 rc="$RUN/msmtprc"
  cat >"$rc" <<EOF
defaults
tls on
tls_starttls on
tls_trust_file $RUN/pki/ca.pem
logfile $RUN/msmtp.log

account interop
host 127.0.0.1
port $DOVECOT_SUBMISSION
auth xoauth2
user $ACCOUNT
from $ACCOUNT
passwordeval sh $(token_script)

account default : interop
EOF
  chmod 600 "$rc"
  timeout "$OP_TIMEOUT" msmtp -C "$rc" rcpt@example.test <"$file"
  tail -n 1 "$RUN/msmtp.log" | sed -E 's/^[^ ]+ [^ ]+ //'
  PY "$HERE/tool.py" sink-same "$RUN/sink" "$tag" "$file"
}

# --- main -------------------------------------------------------------------

main() {
  local t0=$SECONDS
  [[ $EUID -eq 0 ]] || die "set-up: run as root (apt-get, and Dovecot delivers as the mail user)"
  install_packages

  RUN=$(mktemp -d /tmp/xoauth2-interop.XXXXXX)
  # Dovecot's unprivileged processes (dovecot, dovenull, mail) must reach it.
  chmod 755 "$RUN"
  log "work directory $RUN"

  log "building the proxy (release) and the fake token server"
  (cd "$ROOT" && cargo build --release --locked --quiet --bin xoauth2-proxy) ||
    die "set-up: cargo build --release failed"
  (cd "$ROOT" && cargo build --locked --quiet --example fake_token_server) ||
    die "set-up: cargo build --example fake_token_server failed"
  PROXY="$ROOT/target/release/xoauth2-proxy"
  local token_server="$ROOT/target/debug/examples/fake_token_server"
  log "built in $((SECONDS - t0))s"

  make_pki
  local ports
  mapfile -t ports < <(python3 "$HERE/tool.py" free-ports 11)
  DOVECOT_IMAPS=${ports[0]} DOVECOT_POP3S=${ports[1]} DOVECOT_SUBMISSION=${ports[2]}
  SINK_PORT=${ports[3]} TOKEN_PORT=${ports[4]}
  PROXY_IMAP=${ports[5]} PROXY_POP3=${ports[6]} PROXY_SMTP=${ports[7]}
  HTTP_PROXY_PORT=${ports[8]} SOCKS_PORT=${ports[9]} PROXY_GRAPH=${ports[10]}

  # The SMTP sink Dovecot's submission service relays to.
  mkdir -p "$RUN/sink"
  start "SMTP sink" sink.log python3 -u "$HERE/smtp_sink.py" --port "$SINK_PORT" --dir "$RUN/sink"
  wait_port "$SINK_PORT" "the SMTP sink" "$!"

  # The fake token endpoint, over HTTPS with the test CA's certificate; also
  # Graph (sendMail and drafts), which writes what it sends to $RUN/graph.
  mkdir -p "$RUN/graph"
  start "fake token server" token-server.log "$token_server" \
    --listen "127.0.0.1:$TOKEN_PORT" --cert "$RUN/pki/server.pem" --key "$RUN/pki/server.key" \
    --username "$ACCOUNT" --refresh-token rt-interop-direct --graph-dir "$RUN/graph"
  wait_port "$TOKEN_PORT" "the fake token server" "$!"

  # Dovecot, in the foreground of its own process so its PID is ours.
  MAILDIR="$RUN/mail/$ACCOUNT/Maildir"
  install -d -o mail -g mail -m 700 "$RUN/mail" "$RUN/mail/$ACCOUNT"
  mkdir -p "$RUN/dovecot"
  render "$HERE/dovecot.conf.in" "$RUN/dovecot.conf"
  render "$HERE/dovecot-oauth2.conf.in" "$RUN/dovecot-oauth2.conf.ext"
  doveconf -c "$RUN/dovecot.conf" -n >"$RUN/doveconf.out" 2>&1 ||
    die "set-up: Dovecot rejects its configuration: $(tail -n 5 "$RUN/doveconf.out")"
  start "Dovecot" dovecot-stderr.log dovecot -F -c "$RUN/dovecot.conf"
  local dovecot_pid=$!
  wait_port "$DOVECOT_IMAPS" "Dovecot" "$dovecot_pid"
  wait_port "$DOVECOT_POP3S" "Dovecot" "$dovecot_pid"
  wait_port "$DOVECOT_SUBMISSION" "Dovecot" "$dovecot_pid"
  log "Dovecot $(dovecot --version | cut -d' ' -f1), $(curl --version | head -n1 | cut -d' ' -f1,2), $(python3 --version)"

  # The mail the clients read: one message per IMAP folder (UID 1), and a
  # small and a big one in INBOX for POP3.
  local m="$RUN/msg"
  mkdir -p "$m"
  message 2500 small "$m/small.eml"
  message "$BIG" big "$m/big.eml"
  message 3500 inbox-small "$m/inbox-small.eml"
  message $((BIG + 17)) inbox-big "$m/inbox-big.eml"
  PY "$HERE/tool.py" deliver "$MAILDIR" small "$m/small.eml"
  PY "$HERE/tool.py" deliver "$MAILDIR" big "$m/big.eml"
  PY "$HERE/tool.py" deliver "$MAILDIR" INBOX "$m/inbox-small.eml"
  PY "$HERE/tool.py" deliver "$MAILDIR" INBOX "$m/inbox-big.eml"
  log "set up in $((SECONDS - t0))s"

  LOCAL_TLS=none
  clients_env
  check "Dovecot offers only XOAUTH2/OAUTHBEARER and refuses a password LOGIN" \
    PY "$HERE/clients.py" dovecot-no-password
  check "Dovecot accepts a token from the fake token server (introspection) and refuses a bogus one" \
    PY "$HERE/clients.py" dovecot-tokens rt-interop-direct

  proxy_config none "$RUN/proxy-none.toml"
  check "xoauth2-proxy authorize --device --password-stdin against the fake token server" \
    authorize_device "$RUN/proxy-none.toml"

  start_proxy none
  client_suite none
  check "xoauth2-proxy token: curl logs in to Dovecot itself with the printed token (XOAUTH2), byte-exact fetch" \
    token_curl_dovecot "$m/small.eml"
  message 4000 msmtp-token "$m/msmtp-token.eml"
  check "msmtp (auth xoauth2, passwordeval running xoauth2-proxy token) sends through Dovecot's submission" \
    msmtp_token_send "$m/msmtp-token.eml" msmtp-token

  local mode
  for mode in starttls implicit; do
    if local_tls_supported "$mode"; then
      start_proxy "$mode"
      client_suite "$mode"
    else
      log "skip: local_tls = \"$mode\" is not supported by this build: $(tail -n 1 "$RUN/probe-$mode.out")"
    fi
  done

  through_proxies

  log "finished in $((SECONDS - t0))s"
  echo "$passed passed, $failed failed"
  ((failed == 0))
}

main "$@"
