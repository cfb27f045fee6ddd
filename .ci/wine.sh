#!/usr/bin/env bash
# The Windows service under wine: builds the Windows release exe
# (x86_64-pc-windows-gnu, mingw-w64), makes a fresh wine prefix, and runs the
# README's Windows steps in it against the tests' fake IMAP server and token
# endpoint (examples/fake_mail_server.rs, on the Linux side):
#
#   authorize (device flow, password on stdin) → service install (starts it) → IMAP LOGIN,
#   SELECT, FETCH byte-exact → net stop → net start → the same login again
#   (a new process opens the sealed tokens) and a wrong password refused →
#   net stop → service uninstall → gone (service status, sc query).
#
#   bash .ci/wine.sh          (root for apt-get when wine or mingw is missing)
#
# Every wine call has its own timeout; everything started is stopped on exit
# (wineserver -k, the fakes). KEEP_WINE_TMP=1 keeps the temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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

install_packages() {
  local need=() pkg
  for pkg in wine wine64 gcc-mingw-w64-x86-64; do
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

# permissions_check: the data folder, token folder and token files are
# protected (src/fs_secure.rs), as far as wine can show it. Their writers
# (authorize, the service) set the DACL with SetNamedSecurityInfoW and fail
# when it fails, so their success says it was accepted. Whether it was kept:
# `doctor` reads each DACL back with GetNamedSecurityInfoW, in another
# process. Upstream wine (8.0 here) keeps no security descriptor for files:
# it maps a DACL onto the Unix mode and makes one up from the mode when
# asked (SYSTEM full control, the owner from the user bits, Everyone from the
# other bits; no Administrators, no protected flag), and a DACL without
# Everyone does not clear the other bits. Wine-staging stores the real one
# as the extended attribute user.wine.sd: only with it is "protected"
# asserted; without, the check says so and asserts what wine can show.
permissions_check() {
  local c="$WINEPREFIX/drive_c" rc=0 kept
  local data="$c/ProgramData/xoauth2-proxy"
  wx 120 doctor --config "$CONF_WIN" --state-dir "$DATA_WIN" --log-dir "$DATA_WIN\\logs" \
    >"$RUN/doctor.log" 2>&1 || rc=$?
  sed 's/^/#   /' "$RUN/doctor.log"
  kept=$(python3 - "$data" "$data/tokens" "$data"/tokens/* <<'PY'
import os, sys
def has(p):
    try:
        return "user.wine.sd" in os.listxattr(p)
    except OSError:
        return False
print(sum(has(p) for p in sys.argv[1:]))
PY
  )
  log "Unix modes wine mapped the DACLs onto: $(stat -c '%a %n' "$data" "$data/tokens" "$data"/tokens/* "$data/logs" | sed "s|$c/||" | paste -sd ',')"
  grep -aq "user@example.test: signed in" "$RUN/doctor.log" ||
    die "doctor under wine does not see the sealed tokens (exit $rc)"
  if [[ "$kept" == 0 ]]; then
    log "this wine keeps no security descriptor for files (no user.wine.sd): the DACLs were set"
    log "(SetNamedSecurityInfoW succeeded in authorize and the service) but cannot be read back;"
    log "doctor's read-back was shown to work on the folder before (Everyone reported)"
    ok "permissions under wine: DACLs set without error; wine cannot keep them, nothing more to assert"
    return 0
  fi
  log "security descriptors wine keeps as user.wine.sd: $kept (data folder, token folder, token files)"
  local f
  for f in "state folder" "token folder" "log folder"; do
    grep -aq "^ok: *$f .*: protected" "$RUN/doctor.log" ||
      die "doctor does not report the $f protected (exit $rc)"
  done
  grep -aqE "^ok: *[0-9]+ token or key file\(s\): protected" "$RUN/doctor.log" ||
    die "doctor does not report the token files protected (exit $rc)"
  if grep -aE "^PROBLEM: (state|token|certificate|log) (folder|file)|^PROBLEM: TLS key" "$RUN/doctor.log"; then
    die "doctor finds a folder or file others can read"
  fi
  ((rc == 0)) || die "doctor found problems (exit $rc)"
  ok "doctor: the data, token and log folders and the token files are protected (DACL read back)"
}

main() {
  local t0=$SECONDS
  cd "$ROOT"
  install_packages

  log "building the Windows release exe and the fake mail server"
  rustup target add "$TARGET" >/dev/null 2>&1 || die "set-up: rustup target add $TARGET failed"
  cargo build --release --locked --quiet --target "$TARGET" --bin xoauth2-proxy ||
    die "set-up: cargo build --release --target $TARGET failed"
  cargo build --locked --quiet --example fake_mail_server ||
    die "set-up: cargo build --example fake_mail_server failed"
  log "built in $((SECONDS - t0))s"
  local t1=$SECONDS

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
  log "wine prefix $WINEPREFIX ($(wine --version)) in $((SECONDS - t1))s"

  local c="$WINEPREFIX/drive_c"
  local data="$c/ProgramData/xoauth2-proxy" bindir="$c/Program Files/xoauth2-proxy"
  mkdir -p "$data" "$bindir"
  cp "$ROOT/target/$TARGET/release/xoauth2-proxy.exe" "$bindir/"

  # Rust's std imports ProcessPrng from bcryptprimitives.dll; wine 8 has
  # none. Put a stand-in (RtlGenRandom) into system32 only when it is missing.
  local version
  if version=$(WINEDEBUG=err+module wx 60 --version 2>"$RUN/probe.log"); then
    log "this wine has ProcessPrng: no shim"
  else
    grep -aqiE 'bcryptprimitives|ProcessPrng' "$RUN/probe.log" ||
      die "the exe does not start under wine: $(grep -a 'err:' "$RUN/probe.log" | tail -n 3)"
    log "the exe does not start under this wine (no bcryptprimitives.dll/ProcessPrng): installing the shim"
    x86_64-w64-mingw32-gcc -O2 -shared -s -static-libgcc -o "$RUN/bcryptprimitives.dll" \
      "$HERE/bcryptprimitives.c" "$HERE/bcryptprimitives.def" -ladvapi32 ||
      die "cannot build the bcryptprimitives.dll shim"
    cp "$RUN/bcryptprimitives.dll" "$c/windows/system32/"
    version=$(wx 60 --version 2>"$RUN/probe.log") ||
      die "the exe does not start under wine, even with the shim: $(tail -n 3 "$RUN/probe.log")"
  fi
  ok "$version runs under wine"

  # The upstream: fake IMAP server (implicit TLS, test CA) and token endpoint.
  mkdir -p "$RUN/fake"
  "$ROOT/target/debug/examples/fake_mail_server" --dir "$RUN/fake" >"$RUN/fake.log" 2>&1 &
  FAKE_PID=$!
  local i upstream="" token_url=""
  for ((i = 0; i < 300; i++)); do
    upstream=$(sed -n 's|^listening on imaps://||p' "$RUN/fake.log")
    [[ -n "$upstream" ]] && break
    kill -0 "$FAKE_PID" 2>/dev/null || die "the fake mail server exited"
    sleep 0.1
  done
  [[ -n "$upstream" ]] || die "the fake mail server did not start in 30 s"
  token_url=$(sed -n 's|^token_url ||p' "$RUN/fake.log")
  log "fake IMAP server on $upstream, token endpoint $token_url"

  PROXY_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cp "$RUN/fake/ca.pem" "$data/test-ca.pem"
  # The README's layout: the configuration in %ProgramData%\xoauth2-proxy,
  # no state_dir in it, so the tokens go there too.
  cat >"$data/proxy.toml" <<EOF
[proxy]
ca_file = '$DATA_WIN\\test-ca.pem'
connect_timeout_secs = 10
shutdown_grace_secs = 5

[[listener]]
protocol = "imap"
listen = "127.0.0.1:$PROXY_PORT"
upstream = "$upstream"
upstream_tls = "implicit"

[[account]]
username = "$ACCOUNT"
provider = "custom"
client_id = "wine-client"
token_url = "$token_url/token"
device_code_url = "$token_url/devicecode"
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"]
EOF
  wx 60 check-config --config "$CONF_WIN" >"$RUN/check-config.log" 2>&1 ||
    die "check-config under wine: $(tail -n 3 "$RUN/check-config.log")"
  ok "check-config: $(tail -n 1 "$RUN/check-config.log")"

  # The data folder as an administrator makes it by hand (here: from the
  # Linux side): what doctor says before the proxy has touched it.
  # Wine makes its DACL up from the mode (0755): Everyone may read. doctor
  # must say so (it reads the DACL back with GetNamedSecurityInfoW).
  chmod 755 "$data"
  wx 120 doctor --config "$CONF_WIN" --state-dir "$DATA_WIN" >"$RUN/doctor-before.log" 2>&1 || true
  grep -aq "^PROBLEM: state folder .*Everyone (S-1-1-0) may read it" "$RUN/doctor-before.log" ||
    die "doctor does not report the data folder readable by Everyone: $(grep -a 'state folder' "$RUN/doctor-before.log")"
  ok "doctor reads a DACL back: $(grep -a '^PROBLEM: state folder' "$RUN/doctor-before.log" | cut -c1-110)…"

  # Sign in the way the README says (device flow; the fake approves it as
  # the account's own user), choosing the local password on standard input.
  printf '%s\n' "$PASSWORD" |
    wx 120 authorize "$ACCOUNT" --device --password-stdin --config "$CONF_WIN" \
      --state-dir "$DATA_WIN" >"$RUN/authorize.log" 2>&1 ||
    die "authorize: $(tail -n 3 "$RUN/authorize.log")"
  ok "authorize (device flow): $(grep -a '^Signed in' "$RUN/authorize.log")"

  local t2=$SECONDS
  wx 120 service install --config "$CONF_WIN" >"$RUN/install.log" 2>&1 ||
    die "service install: $(tail -n 3 "$RUN/install.log")"
  ok "service install: $(tail -n 1 "$RUN/install.log")"
  wait_port_open "$PROXY_PORT" "after service install"
  ok "the service listens on 127.0.0.1:$PROXY_PORT ($((SECONDS - t2))s after install)"
  local status
  status=$(wx 60 service status --config "$CONF_WIN" 2>&1) || die "service status: $status"
  grep -q "^$SERVICE: Running" <<<"$status" || die "service status: $status"
  ok "service status: $(head -n 1 <<<"$status")"

  imap_check fetch >"$RUN/imap.out" 2>&1 || die "IMAP through the service: $(cat "$RUN/imap.out")"
  ok "imaplib through the service: $(tail -n 1 "$RUN/imap.out")"

  permissions_check

  wine_cmd 90 net stop "$SERVICE" >"$RUN/net.log" 2>&1 ||
    die "net stop $SERVICE: $(tail -n 3 "$RUN/net.log")"
  wait_port_closed "$PROXY_PORT" "after net stop"
  ok "net stop $SERVICE: the listener is closed"

  t2=$SECONDS
  wine_cmd 90 net start "$SERVICE" >"$RUN/net.log" 2>&1 ||
    die "net start $SERVICE: $(tail -n 3 "$RUN/net.log")"
  wait_port_open "$PROXY_PORT" "after net start"
  ok "net start $SERVICE: listening again ($((SECONDS - t2))s)"
  imap_check wrong >"$RUN/imap.out" 2>&1 ||
    die "IMAP through the restarted service: $(cat "$RUN/imap.out")"
  ok "imaplib through the restarted service: $(paste -sd ';' "$RUN/imap.out")"

  wine_cmd 90 net stop "$SERVICE" >"$RUN/net.log" 2>&1 ||
    die "net stop $SERVICE: $(tail -n 3 "$RUN/net.log")"
  wait_port_closed "$PROXY_PORT" "after the second net stop"
  ok "net stop $SERVICE"

  wx 120 service uninstall --config "$CONF_WIN" >"$RUN/uninstall.log" 2>&1 ||
    die "service uninstall: $(tail -n 3 "$RUN/uninstall.log")"
  ok "service uninstall: $(tail -n 1 "$RUN/uninstall.log")"
  status=$(wx 60 service status --config "$CONF_WIN" 2>&1) || die "service status: $status"
  grep -q "not installed" <<<"$status" || die "still installed after uninstall: $status"
  if wine_cmd 60 sc query "$SERVICE" >"$RUN/sc.log" 2>&1; then
    die "sc query still finds $SERVICE: $(tail -n 3 "$RUN/sc.log")"
  fi
  ok "gone: service status says \"$status\"; sc query does not find it"

  grep -aq 'running as the Windows service' "$data"/logs/* ||
    die "the service's log does not say it ran as a service"
  ok "the service's log: $(grep -ac 'running as the Windows service' "$data"/logs/*) start(s) as a Windows service"

  timeout 30 wineserver -k || true
  WINE_UP=""
  log "wine part took $((SECONDS - t1))s (all: $((SECONDS - t0))s)"
  echo "Windows service under wine: passed"
}

main "$@"
