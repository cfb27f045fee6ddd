"""Helpers shared by the interop suite's Python tools (stdlib only).

Test messages, delivery into Dovecot's maildir, and byte-exact comparisons.
"""

import os
import pwd
import random
import socket
import time

CRLF = b"\r\n"

WORDS = [
    b"lorem", b"ipsum", b"dolor", b"mail", b"proxy", b"token", b"refresh",
    b"bearer", b"xoauth2", b"imap", b"pop3", b"smtp", b"relay", b"From",
    b"Subject:", b"exact", b"bytes",
]


def message(size, tag, sender="sender@example.test", rcpt="user@example.test"):
    """A deterministic RFC 5322 message of exactly `size` bytes, CRLF line ends.

    Its Message-ID is `<TAG@interop.example.test>` (the sink looks messages up
    by it). The body mixes lines that start with '.', lines that are a lone
    '.', empty lines and lines with 8-bit bytes (UTF-8 and raw 0x80-0xFF), so
    dot-stuffing and 8-bit paths get exercised; no bare CR or LF, no NUL, no
    line over 100 bytes.
    """
    head = (
        b"From: Interop Sender <" + sender.encode() + b">\r\n"
        b"To: <" + rcpt.encode() + b">\r\n"
        b"Subject: interop " + tag.encode() + b" (" + str(size).encode() + b" bytes)\r\n"
        b"Message-ID: <" + tag.encode() + b"@interop.example.test>\r\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
    )
    if size < len(head) + 8:
        raise ValueError(f"message size {size} is below the headers' {len(head)} bytes")
    rng = random.Random(tag)
    out = bytearray(head)
    n = 0
    while True:
        left = size - len(out)
        line = body_line(rng, n)
        n += 1
        if len(line) + 2 <= left - 3:
            out += line + CRLF
            continue
        # The last line: cut or pad so the message ends at `size` with CRLF.
        line = (line + b"z" * left)[: left - 2]
        out += line + CRLF
        break
    assert len(out) == size
    return bytes(out)


def body_line(rng, n):
    kind = rng.randrange(12)
    if kind == 0:
        return b"."
    if kind == 1:
        return b".leading dot line %d" % n
    if kind == 2:
        return b".."
    if kind == 3:
        return b"..double dot %d" % n
    if kind == 4:
        raw = bytes(0x80 | rng.randrange(0x80) for _ in range(rng.randrange(24)))
        return "café naïve € 📧 ".encode() + raw
    if kind == 5:
        return b""
    target = 20 + rng.randrange(57)
    line = b""
    while len(line) < target:
        line += (b" " if line else b"") + rng.choice(WORDS)
    return line


def mail_ids():
    pw = pwd.getpwnam("mail")
    return pw.pw_uid, pw.pw_gid


def folder_dir(maildir, folder):
    """Maildir++ layout: INBOX is the root, other folders are `.NAME`."""
    return maildir if folder.upper() == "INBOX" else os.path.join(maildir, "." + folder)


def make_folder(maildir, folder):
    uid, gid = mail_ids()
    base = folder_dir(maildir, folder)
    for d in (base, *(os.path.join(base, s) for s in ("cur", "new", "tmp"))):
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chown(d, uid, gid)
    if folder.upper() != "INBOX":
        # Dovecot lists a Maildir++ folder once it has a maildirfolder file.
        marker = os.path.join(base, "maildirfolder")
        open(marker, "ab").close()
        os.chown(marker, uid, gid)
    return base


_deliveries = 0


def deliver(maildir, folder, data):
    """Delivers like an MDA: write into tmp/, fsync, rename into new/."""
    global _deliveries
    _deliveries += 1
    base = make_folder(maildir, folder)
    uid, gid = mail_ids()
    name = "%d.M%dP%dQ%d.interop" % (time.time(), time.time_ns() % 1_000_000, os.getpid(), _deliveries)
    tmp = os.path.join(base, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chown(tmp, uid, gid)
    os.chmod(tmp, 0o600)
    os.rename(tmp, os.path.join(base, "new", name))


def first_difference(a, b):
    """A human-readable account of where two byte strings differ ('' if equal)."""
    if a == b:
        return ""
    n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return (
        f"lengths {len(a)} vs {len(b)}, first difference at byte {n}: "
        f"{a[max(0, n - 40):n + 40]!r} vs {b[max(0, n - 40):n + 40]!r}"
    )


def strip_first_header(data):
    """Removes the first header field (with its folded continuation lines).

    Dovecot's submission service prepends exactly one `Received:` field.
    """
    if not data.lower().startswith(b"received:"):
        raise ValueError(f"does not start with a Received: field: {data[:80]!r}")
    pos = data.index(CRLF) + 2
    while data[pos:pos + 1] in (b" ", b"\t"):
        pos = data.index(CRLF, pos) + 2
    return data[pos:]


def sink_message(sink_dir, tag, timeout=10.0):
    """The bytes the SMTP sink stored for the message whose Message-ID has `tag`."""
    return read_file(os.path.join(sink_dir, message_file(sink_dir, tag, timeout)))


def message_file(folder, tag, timeout=10.0):
    """The name of the `.eml` in `folder` (the sink's, or the fake Graph's)
    whose head has the Message-ID of `tag`."""
    needle = b"<" + tag.encode() + b"@interop.example.test>"
    deadline = time.monotonic() + timeout
    while True:
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".eml"):
                continue
            head = read_file(os.path.join(folder, name)).split(b"\r\n\r\n", 1)[0]
            if needle in head:
                return name
        if time.monotonic() > deadline:
            raise LookupError(f"{folder} holds no message with Message-ID {needle.decode()}")
        time.sleep(0.1)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def free_ports(n):
    """`n` distinct TCP ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
