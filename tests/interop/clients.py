#!/usr/bin/env python3
"""Python's own mail clients (imaplib, poplib, smtplib) against the proxy, and
a few direct probes of Dovecot. One check per invocation; exit 0 on success,
otherwise 1 with the reason on stderr. Stdlib only.

Settings come from the environment (run.sh sets them):
  INTEROP_USER, INTEROP_PASSWORD      the account and its local password
  INTEROP_IMAP, INTEROP_POP3, INTEROP_SMTP   the proxy's listeners (host:port)
  INTEROP_LOCAL_TLS                   none | starttls | implicit (client to proxy)
  INTEROP_CA                          the test CA (PEM), for TLS to Dovecot and the proxy
  INTEROP_DOVECOT_IMAPS               Dovecot's IMAPS (host:port), for direct probes
  INTEROP_TOKEN_URL                   the fake token endpoint's /token URL
  INTEROP_TIMEOUT                     seconds for each network operation (default 60)

Checks:
  dovecot-no-password                 Dovecot offers only XOAUTH2/OAUTHBEARER and refuses LOGIN
  dovecot-tokens REFRESH_TOKEN        a token from the fake token endpoint opens Dovecot, a bogus one does not
  imap-fetch MODE FOLDER EXPECTED     log in (MODE: quoted | literal | plain), FETCH BODY[] of UID 1
  imap-append FOLDER FILE             APPEND FILE, then FETCH it back
  imap-idle FOLDER MAILDIR FILE SECS  IDLE SECS seconds, then deliver FILE; expect EXISTS, then FETCH
  imap-wrong-password                 LOGIN with another password is refused
  pop3-retr EXPECTED...               USER/PASS, RETR each expected message (found by size)
  smtp-send MECH FILE TAG SINK_DIR    AUTH MECH (plain | login), send FILE; the sink got it
  graph-send MECH FILE TAG GRAPH_DIR  the same to the Graph listener, with a Bcc-only
                                      recipient: Graph's copy is FILE with a Bcc field on top
  graph-send-large MECH FILE          send FILE (a large message) to the Graph listener, to its
                                      own To: address; expect 250 2.0.0 (run.sh then checks the draft)
"""

import base64
import imaplib
import json
import os
import poplib
import select
import smtplib
import ssl
import sys
import time
import urllib.parse
import urllib.request

import common

ENV = os.environ
USER = ENV.get("INTEROP_USER", "user@example.test")
PASSWORD = ENV.get("INTEROP_PASSWORD", "")
LOCAL_TLS = ENV.get("INTEROP_LOCAL_TLS", "none")
TIMEOUT = float(ENV.get("INTEROP_TIMEOUT", "60"))


class CheckFailed(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise CheckFailed(what)


def hostport(name):
    host, port = ENV[name].rsplit(":", 1)
    return host, int(port)


def ca_context():
    return ssl.create_default_context(cafile=ENV["INTEROP_CA"])


def read(path):
    with open(path, "rb") as f:
        return f.read()


# --- IMAP -------------------------------------------------------------------


def imap_connect():
    host, port = hostport("INTEROP_IMAP")
    if LOCAL_TLS == "implicit":
        return imaplib.IMAP4_SSL(host, port, ssl_context=ca_context(), timeout=TIMEOUT)
    conn = imaplib.IMAP4(host, port, timeout=TIMEOUT)
    if LOCAL_TLS == "starttls":
        conn.starttls(ssl_context=ca_context())
    return conn


def imap_close(conn):
    if conn.state != "LOGOUT":
        try:
            conn.shutdown()
        except OSError:
            pass


def imap_login(conn, mode):
    if mode == "quoted":
        # imaplib quotes the password (escaping '"' and '\\').
        typ, data = conn.login(USER, PASSWORD)
    elif mode == "literal":
        # What imaplib does for a password that a quoted string cannot carry:
        # it goes as a synchronising literal, {n} + continuation + bytes.
        conn.literal = PASSWORD.encode()
        typ, data = conn._simple_command("LOGIN", conn._quote(USER))
        conn.state = "AUTH"
    elif mode == "plain":
        typ, data = conn.authenticate(
            "PLAIN", lambda _: b"\0" + USER.encode() + b"\0" + PASSWORD.encode()
        )
    else:
        raise CheckFailed(f"unknown login mode {mode}")
    expect(typ == "OK", f"login ({mode}) answered {typ} {data}")


def fetch_uid1(conn, folder):
    typ, data = conn.select(folder)
    expect(typ == "OK", f"SELECT {folder}: {typ} {data}")
    typ, data = conn.uid("FETCH", "1", "(BODY.PEEK[])")
    expect(typ == "OK", f"UID FETCH 1: {typ} {data}")
    parts = [d for d in data if isinstance(d, tuple)]
    expect(len(parts) == 1, f"UID FETCH 1 returned {len(parts)} literals: {data!r:.300}")
    return parts[0][1]


def check_imap_fetch(mode, folder, expected_path):
    expected = read(expected_path)
    conn = imap_connect()
    try:
        imap_login(conn, mode)
        got = fetch_uid1(conn, folder)
        diff = common.first_difference(got, expected)
        expect(not diff, f"FETCH BODY[] of {folder} UID 1 differs from the stored message: {diff}")
        conn.logout()
    finally:
        imap_close(conn)


def check_imap_append(folder, path):
    data = read(path)
    conn = imap_connect()
    try:
        imap_login(conn, "quoted")
        typ, resp = conn.create(folder)
        expect(typ == "OK", f"CREATE {folder}: {typ} {resp}")
        typ, resp = conn.append(folder, None, None, data)
        expect(typ == "OK", f"APPEND: {typ} {resp}")
        got = fetch_uid1(conn, folder)
        diff = common.first_difference(got, data)
        expect(not diff, f"the appended message reads back differently: {diff}")
        conn.logout()
    finally:
        imap_close(conn)


def check_imap_idle(folder, maildir, path, secs):
    """IDLE for `secs` seconds of silence, then deliver; Dovecot must say EXISTS."""
    data = read(path)
    secs = float(secs)
    common.make_folder(maildir, folder)
    conn = imap_connect()
    try:
        imap_login(conn, "quoted")
        typ, resp = conn.select(folder)
        expect(typ == "OK", f"SELECT {folder}: {typ} {resp}")
        expect(resp[0] == b"0", f"{folder} is not empty: {resp}")
        # imaplib has no IDLE before Python 3.14: speak it on the socket. Its
        # buffered reader is empty here (the SELECT reply was read whole).
        lines = RawLines(conn.socket())
        tag = conn._new_tag()
        conn.send(tag + b" IDLE\r\n")
        line = lines.readline(time.monotonic() + TIMEOUT)
        expect(line and line.startswith(b"+"), f"IDLE got {line!r} instead of a continuation")
        started = time.monotonic()
        # The quiet period: only untagged keep-alives ("* OK Still here") may come.
        while (line := lines.readline(started + secs)) is not None:
            expect(line.startswith(b"* OK"), f"unexpected line while idling: {line!r}")
        held = time.monotonic() - started
        common.deliver(maildir, folder, data)
        delivered = time.monotonic()
        while True:
            line = lines.readline(delivered + 30)
            expect(line is not None, "no EXISTS within 30 s of the delivery")
            if line == b"* 1 EXISTS\r\n":
                break
            expect(line.startswith(b"* "), f"unexpected line while idling: {line!r}")
        noticed = time.monotonic() - delivered
        conn.send(b"DONE\r\n")
        while True:
            line = lines.readline(time.monotonic() + TIMEOUT)
            expect(line is not None, "no reply to DONE")
            if line.startswith(tag + b" "):
                expect(line.startswith(tag + b" OK"), f"IDLE ended with {line!r}")
                break
            expect(line.startswith(b"* "), f"unexpected line after DONE: {line!r}")
        expect(not lines.buf, f"unexpected bytes after the IDLE reply: {lines.buf!r}")
        got = fetch_uid1(conn, folder)
        diff = common.first_difference(got, data)
        expect(not diff, f"the message delivered during IDLE reads back differently: {diff}")
        conn.logout()
        print(f"idled {held:.1f}s, EXISTS {noticed:.1f}s after delivery")
    finally:
        imap_close(conn)


class RawLines:
    """CRLF lines straight off a socket, each read with a deadline."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def readline(self, deadline):
        """The next line, or None if none came before `deadline` (monotonic)."""
        while b"\n" not in self.buf:
            pending = getattr(self.sock, "pending", lambda: 0)()
            left = deadline - time.monotonic()
            if not pending:
                if left <= 0:
                    return None
                readable, _, _ = select.select([self.sock], [], [], left)
                if not readable:
                    return None
            chunk = self.sock.recv(65536)
            expect(chunk, "the connection was closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"


def check_imap_wrong_password():
    conn = imap_connect()
    try:
        try:
            typ, data = conn.login(USER, PASSWORD + "-wrong")
        except imaplib.IMAP4.error as e:
            expect("AUTHENTICATIONFAILED" in str(e), f"refused, but without [AUTHENTICATIONFAILED]: {e}")
        else:
            raise CheckFailed(f"a wrong password was accepted: {typ} {data}")
        # The connection stays usable for another try.
        imap_login(conn, "quoted")
        conn.logout()
    finally:
        imap_close(conn)


# --- POP3 -------------------------------------------------------------------


def check_pop3_retr(*expected_paths):
    host, port = hostport("INTEROP_POP3")
    if LOCAL_TLS == "implicit":
        conn = poplib.POP3_SSL(host, port, context=ca_context(), timeout=TIMEOUT)
    else:
        conn = poplib.POP3(host, port, timeout=TIMEOUT)
        if LOCAL_TLS == "starttls":
            conn.stls(context=ca_context())
    try:
        conn.user(USER)
        conn.pass_(PASSWORD)
        _, listing, _ = conn.list()
        by_size = {}
        for entry in listing:
            num, size = entry.split()
            by_size.setdefault(int(size), int(num))
        for path in expected_paths:
            expected = read(path)
            num = by_size.get(len(expected))
            expect(num is not None, f"no message of {len(expected)} bytes in LIST {listing}")
            _, lines, _ = conn.retr(num)
            # poplib un-dot-stuffs and splits at CRLF; the messages have CRLF only.
            got = b"".join(line + b"\r\n" for line in lines)
            diff = common.first_difference(got, expected)
            expect(not diff, f"RETR {num} differs from the stored message: {diff}")
        conn.quit()
    finally:
        conn.close()


# --- SMTP -------------------------------------------------------------------


def smtp_logged_in(port_env, mech):
    """An SMTP connection to the proxy's listener in `port_env`, in this
    run's local TLS mode, logged in with AUTH PLAIN or LOGIN (235 checked)."""
    host, port = hostport(port_env)
    if LOCAL_TLS == "implicit":
        conn = smtplib.SMTP_SSL(host, port, context=ca_context(), timeout=TIMEOUT)
    else:
        conn = smtplib.SMTP(host, port, timeout=TIMEOUT)
    try:
        conn.ehlo("interop-client.example.test")
        if LOCAL_TLS == "starttls":
            conn.starttls(context=ca_context())
            conn.ehlo("interop-client.example.test")
        if mech == "plain":
            # smtplib picks PLAIN among PLAIN and LOGIN
            code, resp = conn.login(USER, PASSWORD)
        elif mech == "login":
            conn.user, conn.password = USER, PASSWORD
            code, resp = conn.auth("LOGIN", conn.auth_login, initial_response_ok=False)
        else:
            raise CheckFailed(f"unknown mechanism {mech}")
        expect(code == 235, f"AUTH {mech.upper()}: {code} {resp}")
    except BaseException:
        conn.close()
        raise
    return conn


def check_smtp_send(mech, path, tag, sink_dir):
    data = read(path)
    conn = smtp_logged_in("INTEROP_SMTP", mech)
    try:
        refused = conn.sendmail(USER, ["rcpt@example.test"], data)
        expect(not refused, f"recipients refused: {refused}")
        conn.quit()
    finally:
        conn.close()
    got = common.strip_first_header(common.sink_message(sink_dir, tag))
    diff = common.first_difference(got, data)
    expect(not diff, f"the sink's copy differs from what was sent: {diff}")


BCC_ONLY = "bcc-only@example.test"


def check_graph_send(mech, path, tag, graph_dir):
    """Through the Graph listener: the envelope has the To: address and one
    that no header names; Graph takes recipients from the headers, so the
    proxy adds that one as a Bcc field, and nothing else changes."""
    data = read(path)
    conn = smtp_logged_in("INTEROP_GRAPH", mech)
    try:
        expect(conn.has_extn("size"), "no SIZE in the Graph listener's EHLO")
        refused = conn.sendmail(USER, [USER, BCC_ONLY], data)
        expect(not refused, f"recipients refused: {refused}")
        conn.quit()
    finally:
        conn.close()
    got = common.sink_message(graph_dir, tag)
    first, _, rest = got.partition(b"\r\n")
    expect(first.lower().startswith(b"bcc:") and BCC_ONLY.encode() in first,
           f"Graph's copy does not start with a Bcc field for {BCC_ONLY}: {first[:100]!r}")
    diff = common.first_difference(rest, data)
    expect(not diff, f"Graph's copy, less its Bcc field, differs from what was sent: {diff}")


def check_graph_send_large(mech, path):
    """A message over 3 MiB: the proxy sends it through a Graph draft and
    answers 250 2.0.0 after the draft's /send. Only the reply is checked
    here; what reached Graph is compared by tool.py graph-draft."""
    data = read(path)
    conn = smtp_logged_in("INTEROP_GRAPH", mech)
    try:
        size = conn.esmtp_features.get("size", "")
        expect(size.isdigit() and int(size) >= len(data),
               f"the Graph listener's SIZE {size!r} is below the message's {len(data)} octets")
        code, resp = conn.mail(USER, [f"SIZE={len(data)}"])
        expect(code == 250, f"MAIL FROM: {code} {resp}")
        code, resp = conn.rcpt(USER)
        expect(code == 250, f"RCPT TO: {code} {resp}")
        code, resp = conn.data(data)
        expect(code == 250 and resp.startswith(b"2.0.0"), f"after DATA: {code} {resp}")
        print(f"{len(data)} octets: {code} {resp.decode(errors='replace')}")
        conn.quit()
    finally:
        conn.close()


# --- Dovecot directly -------------------------------------------------------


def dovecot_connect():
    host, port = hostport("INTEROP_DOVECOT_IMAPS")
    return imaplib.IMAP4_SSL(host, port, ssl_context=ca_context(), timeout=TIMEOUT)


def check_dovecot_no_password():
    conn = dovecot_connect()
    try:
        caps = set(conn.capabilities)
        expect("AUTH=XOAUTH2" in caps, f"no AUTH=XOAUTH2 in {sorted(caps)}")
        plain = {c for c in caps if c in ("AUTH=PLAIN", "AUTH=LOGIN")}
        expect(not plain, f"Dovecot offers {plain}")
        try:
            conn.login(USER, PASSWORD)
        except imaplib.IMAP4.error:
            pass
        else:
            raise CheckFailed("Dovecot accepted LOGIN with a password")
        conn.logout()
    finally:
        imap_close(conn)


def xoauth2(token):
    return f"user={USER}\x01auth=Bearer {token}\x01\x01".encode()


def check_dovecot_tokens(refresh_token):
    form = urllib.parse.urlencode(
        {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": "interop-direct",
            "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
        }
    ).encode()
    with urllib.request.urlopen(
        ENV["INTEROP_TOKEN_URL"], data=form, timeout=TIMEOUT, context=ca_context()
    ) as resp:
        token = json.load(resp)["access_token"]

    conn = dovecot_connect()
    try:
        try:
            conn.authenticate("XOAUTH2", lambda _: xoauth2("at-bogus-token"))
        except imaplib.IMAP4.error as e:
            expect("AUTHENTICATIONFAILED" in str(e), f"bogus token refused oddly: {e}")
        else:
            raise CheckFailed("Dovecot accepted a token the token server never issued")
        typ, data = conn.authenticate("XOAUTH2", lambda _: xoauth2(token))
        expect(typ == "OK", f"AUTHENTICATE XOAUTH2 with a fresh token: {typ} {data}")
        conn.logout()
    finally:
        imap_close(conn)


CHECKS = {
    "dovecot-no-password": check_dovecot_no_password,
    "dovecot-tokens": check_dovecot_tokens,
    "imap-fetch": check_imap_fetch,
    "imap-append": check_imap_append,
    "imap-idle": check_imap_idle,
    "imap-wrong-password": check_imap_wrong_password,
    "pop3-retr": check_pop3_retr,
    "smtp-send": check_smtp_send,
    "graph-send": check_graph_send,
    "graph-send-large": check_graph_send_large,
}


def main(argv):
    if not argv or argv[0] not in CHECKS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        CHECKS[argv[0]](*argv[1:])
    except (CheckFailed, imaplib.IMAP4.error, poplib.error_proto, smtplib.SMTPException,
            OSError, LookupError, ValueError) as e:
        print(f"{argv[0]}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
