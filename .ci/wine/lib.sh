# shellcheck shell=bash
# What .ci/wine.sh (the service by hand) and .ci/msi.sh (the MSI) share: a
# fresh wine prefix (with wineboot's retry), the ProcessPrng shim, the fake
# IMAP server and token endpoint (examples/fake_mail_server.rs), the test
# configuration, bounded wine calls, port waits and the IMAP check.
# Sourced; the caller has `set -euo pipefail`. Sets the EXIT trap (cleanup).
# Its variables (TARGET, SERVICE, EXE_VERSION, …) are for the callers:
# shellcheck disable=SC2034

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/.ci/wine"
TARGET=x86_64-pc-windows-gnu
ACCOUNT=user@example.test
# The local password the mail client uses: chosen at sign-in (authorize
# --password-stdin), which seals the tokens under it.
PASSWORD='wine test "pass"'
SERVICE=xoauth2-proxy # src/service/mod.rs: NAME
# Where the README puts things on Windows.
DATA_WIN='C:\ProgramData\xoauth2-proxy'
EXE_WIN='C:\Program Files\xoauth2-proxy\xoauth2-proxy.exe'
CONF_WIN="$DATA_WIN\\proxy.toml"

RUN=""
FAKE_PID=""
WINE_UP=""

log() { printf '# %s\n' "$*"; }
ok() { printf 'ok - %s\n' "$*"; }

show_logs() {
  local f
  [[ -n "$RUN" ]] || return 0
  for f in "$RUN"/*.log "$RUN"/prefix/drive_c/ProgramData/xoauth2-proxy/logs/*; do
    [[ -s "$f" ]] || continue
    printf '#   --- last lines of %s\n' "${f#"$RUN"/}"
    tail -n 30 "$f" | sed 's/^/#   /'
  done
}

die() {
  echo "FAIL - $*"
  show_logs
  exit 1
}

# cleanup: on exit, stops wine and the fakes, removes $RUN.
cleanup() {
  local rc=$? i
  if [[ -n "$WINE_UP" ]]; then
    timeout 30 wineserver -k >/dev/null 2>&1 || true
  fi
  if [[ -n "$FAKE_PID" ]]; then
    kill "$FAKE_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$FAKE_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$FAKE_PID" 2>/dev/null || true
    wait "$FAKE_PID" 2>/dev/null || true
  fi
  if [[ -n "$RUN" && -d "$RUN" ]]; then
    if [[ -n "${KEEP_WINE_TMP:-}" ]]; then
      log "kept $RUN"
    else
      rm -rf "$RUN"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# since SECS: the seconds since SECS (a sub-step's duration, for the log).
since() { echo "$((SECONDS - $1))s"; }

# wx SECS ARGS...: the installed exe under wine, bounded.
wx() {
  local secs=$1
  shift
  timeout --kill-after=5 "$secs" wine "$EXE_WIN" "$@"
}

# wine_cmd SECS PROGRAM ARGS...: a wine program (net, sc), bounded.
wine_cmd() {
  local secs=$1
  shift
  timeout --kill-after=5 "$secs" wine "$@"
}

# port_open PORT: whether 127.0.0.1:PORT accepts a connection.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port_open PORT WHAT: polls for at most 60 s.
wait_port_open() {
  local i
  for ((i = 0; i < 600; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  die "$2: nothing listens on 127.0.0.1:$1 after 60 s"
}

# wait_port_closed PORT WHAT: polls for at most 60 s.
wait_port_closed() {
  local i
  for ((i = 0; i < 600; i++)); do
    port_open "$1" || return 0
    sleep 0.1
  done
  die "$2: 127.0.0.1:$1 still accepts after 60 s"
}

# boot_prefix: creates the wine prefix. wineboot once failed within seconds
# on a fresh CI machine, silently (WINEDEBUG=-all) and never here, so it runs
# with wine's error channel on, shows its exit code and last lines, and gets
# up to WINEBOOT_TRIES fresh prefixes before the step fails.
WINEBOOT_TRIES=3
boot_prefix() {
  local try rc
  for ((try = 1; try <= WINEBOOT_TRIES; try++)); do
    rm -rf "$WINEPREFIX"
    mkdir -p "$WINEPREFIX"
    rc=0
    WINEDEBUG=err+all timeout --kill-after=5 180 wineboot -i >"$RUN/wineboot.log" 2>&1 || rc=$?
    ((rc == 0)) && return 0
    log "wineboot -i exited $rc (try $try of $WINEBOOT_TRIES); its last lines:"
    tail -n 20 "$RUN/wineboot.log" | sed 's/^/#   /'
    df -h "$RUN" | sed 's/^/#   /'
    timeout 30 wineserver -k >/dev/null 2>&1 || true
    timeout 30 wineserver -w >/dev/null 2>&1 || true
  done
  die "wineboot -i failed $WINEBOOT_TRIES times ($(wine --version 2>&1))"
}

# install_packages [PKG...]: wine, mingw (for the shim), python3, and the
# Debian packages given, when missing.
# shellcheck disable=SC2120
install_packages() {
  local need=() pkg
  for pkg in wine wine64 gcc-mingw-w64-x86-64 "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
      need+=("$pkg")
    fi
  done
  command -v python3 >/dev/null || need+=(python3)
  ((${#need[@]})) || return 0
  [[ $EUID -eq 0 ]] || die "set-up: installing ${need[*]} needs root"
  log "installing ${need[*]}"
  timeout 300 apt-get update -qq >/dev/null || die "set-up: apt-get update failed"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >/dev/null || die "set-up: apt-get install ${need[*]} failed"
}

# imap_check MODE: through the service's listener with Python's imaplib.
# MODE "fetch": LOGIN, SELECT INBOX, FETCH 1 compared byte for byte with the
# fake's message. MODE "wrong": a wrong password gets NO, then the right one
# works on the same connection.
imap_check() {
  WINE_IMAP_PORT=$PROXY_PORT WINE_IMAP_USER=$ACCOUNT WINE_IMAP_PASSWORD=$PASSWORD \
    WINE_IMAP_MESSAGE="$RUN/fake/message.eml" \
    timeout --kill-after=5 90 python3 - "$1" <<'PY'
import imaplib, os, sys

mode = sys.argv[1]
port = int(os.environ["WINE_IMAP_PORT"])
user = os.environ["WINE_IMAP_USER"]
password = os.environ["WINE_IMAP_PASSWORD"]
with open(os.environ["WINE_IMAP_MESSAGE"], "rb") as f:
    expected = f.read()

imap = imaplib.IMAP4("127.0.0.1", port, timeout=60)
if mode == "wrong":
    try:
        imap.login(user, password + "-wrong")
    except imaplib.IMAP4.error as e:
        print(f"a wrong password is refused: {e}")
    else:
        sys.exit("a wrong password was accepted")
typ, data = imap.login(user, password)
assert typ == "OK", (typ, data)
typ, data = imap.select("INBOX")
assert typ == "OK", (typ, data)
exists = data[0].decode()
typ, data = imap.fetch("1", "(BODY.PEEK[])")
assert typ == "OK", (typ, data)
got = data[0][1]
if got != expected:
    sys.exit(f"message 1 differs: {len(got)} bytes fetched, {len(expected)} expected")
print(f"LOGIN, SELECT INBOX ({exists} message), FETCH 1: {len(got)} bytes, byte-exact")
imap.logout()
PY
}
# start_prefix: a fresh wine prefix in a new $RUN, its wineserver kept
# running, and wine's system processes (services.exe) started.
start_prefix() {
  local t=$SECONDS
  RUN=$(mktemp -d /tmp/xoauth2-wine.XXXXXX)
  # TMPDIR: wineserver's socket directory (and the fakes' temporary files)
  # go under $RUN too, so nothing is left in /tmp.
  mkdir -p "$RUN/tmp"
  export WINEPREFIX="$RUN/prefix" WINEDEBUG=-all WINEARCH=win64 TMPDIR="$RUN/tmp"
  # No Mono or Gecko installers; no display.
  export WINEDLLOVERRIDES="mscoree,mshtml="
  unset DISPLAY WAYLAND_DISPLAY
  WINE_UP=1
  boot_prefix
  # The wineserver wineboot started goes away by itself; then one that stays
  # (without it, wine ends the service when `net` exits).
  timeout 60 wineserver -w || die "the wineserver of wineboot did not exit"
  timeout 30 wineserver -p || die "wineserver -p failed"
  # Wine's system processes (services.exe: the Service Control Manager) start
  # with the first program and keep its stderr and WINEDEBUG: give them a log.
  wine_cmd 60 cmd /c exit 0 >"$RUN/wine-system.log" 2>&1 || die "wine cmd /c exit 0 failed"
  log "wine prefix $WINEPREFIX ($(wine --version)) in $(since "$t")"
}

# prng_shim EXE: makes EXE (a Windows or a Unix path) start under this wine.
# Rust's std imports ProcessPrng from bcryptprimitives.dll; wine 8 has none.
# A stand-in (RtlGenRandom) goes into system32 only when it is missing.
# Sets EXE_VERSION (what --version prints).
prng_shim() {
  local exe=$1
  if EXE_VERSION=$(WINEDEBUG=err+module wine_cmd 60 "$exe" --version 2>"$RUN/probe.log"); then
    log "this wine has ProcessPrng: no shim"
    return 0
  fi
  grep -aqiE 'bcryptprimitives|ProcessPrng' "$RUN/probe.log" ||
    die "the exe does not start under wine: $(grep -a 'err:' "$RUN/probe.log" | tail -n 3)"
  log "the exe does not start under this wine (no bcryptprimitives.dll/ProcessPrng): installing the shim"
  x86_64-w64-mingw32-gcc -O2 -shared -s -static-libgcc -o "$RUN/bcryptprimitives.dll" \
    "$HERE/bcryptprimitives.c" "$HERE/bcryptprimitives.def" -ladvapi32 ||
    die "cannot build the bcryptprimitives.dll shim"
  cp "$RUN/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
  EXE_VERSION=$(wine_cmd 60 "$exe" --version 2>"$RUN/probe.log") ||
    die "the exe does not start under wine, even with the shim: $(tail -n 3 "$RUN/probe.log")"
}

# start_fake: the upstream, on the Linux side: the fake IMAP server
# (implicit TLS, test CA) and token endpoint. Sets UPSTREAM and TOKEN_URL.
start_fake() {
  local i
  [[ -x "$ROOT/target/debug/examples/fake_mail_server" ]] ||
    die "set-up: no target/debug/examples/fake_mail_server (cargo build --example fake_mail_server)"
  mkdir -p "$RUN/fake"
  "$ROOT/target/debug/examples/fake_mail_server" --dir "$RUN/fake" >"$RUN/fake.log" 2>&1 &
  FAKE_PID=$!
  UPSTREAM=""
  for ((i = 0; i < 300; i++)); do
    UPSTREAM=$(sed -n 's|^listening on imaps://||p' "$RUN/fake.log")
    [[ -n "$UPSTREAM" ]] && break
    kill -0 "$FAKE_PID" 2>/dev/null || die "the fake mail server exited"
    sleep 0.1
  done
  [[ -n "$UPSTREAM" ]] || die "the fake mail server did not start in 30 s"
  TOKEN_URL=$(sed -n 's|^token_url ||p' "$RUN/fake.log")
  log "fake IMAP server on $UPSTREAM, token endpoint $TOKEN_URL"
}

# free_port: a port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# write_test_config: the README's layout, %ProgramData%\xoauth2-proxy\proxy.toml
# with no state_dir in it, so the tokens go there too: one IMAP listener on
# PROXY_PORT in front of the fake (its CA trusted), the account signing in
# at the fake's token endpoint.
write_test_config() {
  local data="$WINEPREFIX/drive_c/ProgramData/xoauth2-proxy"
  mkdir -p "$data"
  cp "$RUN/fake/ca.pem" "$data/test-ca.pem"
  cat >"$data/proxy.toml" <<EOF
[proxy]
ca_file = '$DATA_WIN\\test-ca.pem'
connect_timeout_secs = 10
shutdown_grace_secs = 5

[[listener]]
protocol = "imap"
listen = "127.0.0.1:$PROXY_PORT"
upstream = "$UPSTREAM"
upstream_tls = "implicit"

[[account]]
username = "$ACCOUNT"
provider = "custom"
client_id = "wine-client"
token_url = "$TOKEN_URL/token"
device_code_url = "$TOKEN_URL/devicecode"
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"]
EOF
}

# authorize_account: signs the account in the way the README says (device
# flow; the fake approves it as the account's own user), choosing the local
# password on standard input; the tokens go to %ProgramData%\xoauth2-proxy.
authorize_account() {
  printf '%s\n' "$PASSWORD" |
    wx 120 authorize "$ACCOUNT" --device --password-stdin --config "$CONF_WIN" \
      --state-dir "$DATA_WIN" >"$RUN/authorize.log" 2>&1 ||
    die "authorize: $(tail -n 3 "$RUN/authorize.log")"
  ok "authorize (device flow): $(grep -a '^Signed in' "$RUN/authorize.log")"
}
