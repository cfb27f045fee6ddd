# shellcheck shell=bash
# Two checks of .ci/wine.sh (sourced after lib.sh; every wine call bounded):
#
# token_pipe_check (the service running): `xoauth2-proxy token` reaches the
#   service over its control pipe (src/control/pipe.rs) and prints a token
#   that the fake IMAP server accepts in AUTHENTICATE XOAUTH2; a wrong
#   password gets nothing; `reload` is answered on the same pipe.
# registry_proxy_check (no service needed): the Windows proxy settings
#   (src/net/proxy/windows.rs) as doctor sees them: the current user's
#   Internet settings, then WinHTTP's, each pointing at a recording fake proxy
#   that refuses every CONNECT; doctor must name the proxy as the path of the
#   mail upstream and the token endpoint, and the fake must have seen both
#   CONNECTs.

# The proxy variables of the Linux side reach wine's processes: none here,
# so only the registry can name a proxy.
no_proxy_env() {
  env -u HTTPS_PROXY -u https_proxy -u ALL_PROXY -u all_proxy -u NO_PROXY -u no_proxy "$@"
}

token_pipe_check() {
  local rc=0
  printf '%s\n' "$PASSWORD" |
    wx 60 token "$ACCOUNT" --password-stdin --xoauth2 --config "$CONF_WIN" \
      --state-dir "$DATA_WIN" >"$RUN/token.out" 2>"$RUN/token.log" || rc=$?
  ((rc == 0)) || die "token over the control pipe (exit $rc): $(tail -n 3 "$RUN/token.log")"
  WINE_FAKE=$UPSTREAM WINE_CA="$RUN/fake/ca.pem" WINE_TOKEN_FILE="$RUN/token.out" \
    timeout --kill-after=5 60 python3 - >"$RUN/xoauth2.out" 2>&1 <<'PY' ||
import base64, imaplib, os, ssl, sys

host, port = os.environ["WINE_FAKE"].rsplit(":", 1)
with open(os.environ["WINE_TOKEN_FILE"], "rb") as f:
    printed = f.read().strip()
sasl = base64.b64decode(printed, validate=True)
user, auth = sasl.split(b"\x01")[0], sasl.split(b"\x01")[1]
assert user.startswith(b"user=") and auth.startswith(b"auth=Bearer "), "not an XOAUTH2 string"
assert len(auth) > len(b"auth=Bearer "), "an empty token"
ctx = ssl.create_default_context(cafile=os.environ["WINE_CA"])
imap = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=30)
typ, data = imap.authenticate("XOAUTH2", lambda _: sasl)
assert typ == "OK", (typ, data)
print(f"the fake IMAP server accepts the printed XOAUTH2 string ({len(auth) - 12}-byte token)")
imap.logout()
PY
    die "the token from the pipe: $(cat "$RUN/xoauth2.out")"
  ok "token over the control pipe: $(tail -n 1 "$RUN/xoauth2.out")"
  grep -aq 'control pipe ready' "$WINEPREFIX"/drive_c/ProgramData/xoauth2-proxy/logs/* ||
    die "the service's log does not say its control pipe is ready"
  grep -aq 'access token handed out' "$WINEPREFIX"/drive_c/ProgramData/xoauth2-proxy/logs/* ||
    die "the service's log does not show the token handed out"
  ok "the service's log: $(grep -ah 'control pipe ready' "$WINEPREFIX"/drive_c/ProgramData/xoauth2-proxy/logs/* | tail -n 1 | cut -c1-160)"

  rc=0
  printf '%s\n' "$PASSWORD-wrong" |
    wx 60 token "$ACCOUNT" --password-stdin --config "$CONF_WIN" --state-dir "$DATA_WIN" \
      >"$RUN/token-wrong.out" 2>"$RUN/token-wrong.log" || rc=$?
  ((rc != 0)) || die "token with a wrong password succeeded"
  [[ ! -s "$RUN/token-wrong.out" ]] || die "token with a wrong password printed something"
  ok "token with a wrong password: exit $rc, nothing printed ($(tr -d '\r' <"$RUN/token-wrong.log" | tail -n 1 | cut -c1-80))"

  rc=0
  wx 60 reload --config "$CONF_WIN" --state-dir "$DATA_WIN" >"$RUN/reload.log" 2>&1 || rc=$?
  ((rc == 0)) || die "reload over the control pipe (exit $rc): $(tail -n 3 "$RUN/reload.log")"
  ok "reload: $(tr -d '\r' <"$RUN/reload.log" | tail -n 1)"
}

# fake_proxy: two ports (HKCU, WinHTTP) that log each CONNECT line and
# answer 403. Sets PROXY_A, PROXY_B; the log is $RUN/fake-proxy.log.
FAKE_PROXY_PID=""
fake_proxy() {
  local i
  timeout --kill-after=5 300 python3 - "$RUN/fake-proxy.ports" "$RUN/fake-proxy.log" <<'PY' &
import socket, sys, threading

ports_file, log_file = sys.argv[1], sys.argv[2]
lock = threading.Lock()

def serve(listener, name):
    while True:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 16384:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            with lock, open(log_file, "a") as f:
                f.write(f"{name} {line}\n")
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            conn.close()

ports = []
for name in ("A", "B"):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    ports.append(str(s.getsockname()[1]))
    threading.Thread(target=serve, args=(s, name), daemon=True).start()
with open(ports_file + ".tmp", "w") as f:
    f.write(" ".join(ports) + "\n")
import os
os.rename(ports_file + ".tmp", ports_file)
threading.Event().wait()
PY
  FAKE_PROXY_PID=$!
  for ((i = 0; i < 100; i++)); do
    [[ -s "$RUN/fake-proxy.ports" ]] && break
    sleep 0.1
  done
  read -r PROXY_A PROXY_B <"$RUN/fake-proxy.ports" || die "the fake proxy did not start"
}

# winhttp_blob HOSTPORT: WinHttpSettings as `netsh winhttp set proxy` writes
# it (version, counter, flags 3, the proxy, no exceptions), as hex.
winhttp_blob() {
  python3 -c '
import struct, sys
p = sys.argv[1].encode()
print((struct.pack("<III", 0x18, 1, 3) + struct.pack("<I", len(p)) + p + struct.pack("<I", 0)).hex())
' "$1"
}

registry_proxy_check() {
  local c="$WINEPREFIX/drive_c" dir_win='C:\proxycheck' conf_win rc
  conf_win="$dir_win\\proxy.toml"
  mkdir -p "$c/proxycheck"
  cp "$RUN/fake/ca.pem" "$c/proxycheck/ca.pem"
  # Names that are not loopback (loopback always goes direct) and need no
  # DNS here (an HTTP proxy resolves them).
  cat >"$c/proxycheck/proxy.toml" <<EOF
[proxy]
ca_file = '$dir_win\\ca.pem'
connect_timeout_secs = 10

[[listener]]
protocol = "imap"
listen = "127.0.0.1:$(free_port)"
upstream = "mail.example.test:993"
upstream_tls = "implicit"

[[account]]
username = "$ACCOUNT"
provider = "custom"
client_id = "wine-client"
token_url = "https://login.example.test/token"
device_code_url = "https://login.example.test/devicecode"
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"]
EOF
  fake_proxy
  local settings='HKCU\Software\Microsoft\Windows\CurrentVersion\Internet Settings'
  local winhttp='HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Internet Settings\Connections'
  wine_cmd 60 reg add "$settings" /v ProxyEnable /t REG_DWORD /d 1 /f >"$RUN/reg.log" 2>&1 &&
    wine_cmd 60 reg add "$settings" /v ProxyServer /t REG_SZ /d "127.0.0.1:$PROXY_A" /f \
      >>"$RUN/reg.log" 2>&1 || die "reg add (Internet settings): $(tail -n 3 "$RUN/reg.log")"
  wine_cmd 60 reg add "$winhttp" /v WinHttpSettings /t REG_BINARY \
    /d "$(winhttp_blob "127.0.0.1:$PROXY_B")" /f >>"$RUN/reg.log" 2>&1 ||
    die "reg add (WinHTTP): $(tail -n 3 "$RUN/reg.log")"

  # The user's Internet settings come first; then, with them off, WinHTTP's.
  local step port name
  for step in "A the Internet settings" "B WinHTTP"; do
    name=${step%% *}
    port=$PROXY_A
    if [[ "$name" == B ]]; then
      port=$PROXY_B
      wine_cmd 60 reg add "$settings" /v ProxyEnable /t REG_DWORD /d 0 /f >>"$RUN/reg.log" 2>&1 ||
        die "reg add ProxyEnable=0: $(tail -n 3 "$RUN/reg.log")"
    fi
    rc=0
    no_proxy_env timeout --kill-after=5 120 wine "$EXE_WIN" doctor --config "$conf_win" \
      --state-dir "$dir_win" >"$RUN/doctor-proxy-$name.log" 2>&1 || rc=$?
    local via="through the proxy http://127.0.0.1:$port"
    grep -aq "^ok: *listener\[0\] .*mail.example.test:993: $via" "$RUN/doctor-proxy-$name.log" ||
      die "doctor (${step#* }, exit $rc) does not name the proxy for the mail upstream: $(grep -a 'listener\[0\]' "$RUN/doctor-proxy-$name.log" | head -n 2)"
    grep -aq "token endpoint https://login.example.test/token .*$via" "$RUN/doctor-proxy-$name.log" ||
      die "doctor (${step#* }) does not name the proxy for the token endpoint: $(grep -a 'token endpoint' "$RUN/doctor-proxy-$name.log")"
    grep -q "^$name CONNECT mail.example.test:993 " "$RUN/fake-proxy.log" ||
      die "the fake proxy of ${step#* } saw no CONNECT to the mail upstream: $(cat "$RUN/fake-proxy.log")"
    grep -q "^$name CONNECT login.example.test:443 " "$RUN/fake-proxy.log" ||
      die "the fake proxy of ${step#* } saw no CONNECT to the token endpoint: $(cat "$RUN/fake-proxy.log")"
    ok "system proxy from ${step#* } (registry): doctor names $via for the upstream and the token endpoint; the proxy saw both CONNECTs"
  done
  kill "$FAKE_PROXY_PID" 2>/dev/null || true
  wait "$FAKE_PROXY_PID" 2>/dev/null || true
  FAKE_PROXY_PID=""
}
