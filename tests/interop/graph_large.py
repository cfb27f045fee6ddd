"""Large messages for the Graph listener's draft path (stdlib only).

The proxy sends a message over 3 MiB through a draft: the MIME without its
largest attachments, then each attachment cut out. The fake Graph writes
what it would deliver: the draft's MIME as N.eml, each attachment as
N.att-K (its bytes) and N.att-K.json (name, contentType, isInline,
contentId). `check_draft` compares that with the message the client sent.
"""

import base64
import email
import email.policy
import json
import os
import random
from email.message import EmailMessage

import common

CRLF = b"\r\n"
# What one Graph request may carry whole (src/session/graph.rs,
# GRAPH_MAX_MESSAGE); the proxy cuts the largest attachments until the
# rest fits.
GRAPH_MAX_MESSAGE = 3 * 1024 * 1024


class Mismatch(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Mismatch(what)


def _random_bytes(tag, what, size):
    return random.Random(f"{tag}/{what}").randbytes(size)


def smtplib_message(tag, sender, rcpt):
    """Built with the `email` package as a client would: a text part, a
    6 MB PDF (an upload session: over 3,000,000 bytes) and a 2.5 MB PNG
    shown inline (Content-ID; a fileAttachment). Both are cut out: the
    PNG's base64 alone is over 3 MiB. Returns the bytes smtplib sends and
    the names of the parts the proxy must cut, in message order."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"Interop Sender <{sender}>"
    msg["To"] = f"<{rcpt}>"
    msg["Subject"] = f"interop {tag}: a report with a chart"
    msg["Message-ID"] = f"<{tag}@interop.example.test>"
    msg["Date"] = "Mon, 1 Jan 2024 00:00:00 +0000"
    msg.set_content("The report is attached; the chart is below.\n\nCafé € 📧\n")
    msg.add_attachment(_random_bytes(tag, "pdf", 6_000_000), maintype="application",
                       subtype="pdf", filename="report.pdf")
    msg.add_attachment(_random_bytes(tag, "png", 2_500_000), maintype="image", subtype="png",
                       filename="chart.png", disposition="inline",
                       cid=f"<chart.{tag}@interop.example.test>")
    return msg.as_bytes(), ["report.pdf", "chart.png"]


def curl_message(tag, sender, rcpt):
    """A hand-written .eml as a mail program would store it: a
    quoted-printable text part, a 5 MB ZIP attachment (an upload session)
    and a 100 kB logo with a Content-ID, which stays in the draft (the
    rest fits once the ZIP is out). Returns the bytes and the cut names."""
    boundary = f"=_interop_{tag}_outer"
    zip_b64 = _base64_lines(_random_bytes(tag, "zip", 5_000_000))
    logo_b64 = _base64_lines(_random_bytes(tag, "logo", 100_000))
    parts = [
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"The archive is attached.=0D=0A=\r\nCaf=C3=A9 =E2=82=AC\r\n",
        b"Content-Type: application/zip; name=\"archive.zip\"\r\n"
        b"Content-Disposition: attachment; filename=\"archive.zip\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + zip_b64,
        b"Content-Type: image/png\r\n"
        b"Content-ID: <logo." + tag.encode() + b"@interop.example.test>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + logo_b64,
    ]
    head = (
        f"From: Interop Sender <{sender}>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: interop {tag}: an archive\r\n"
        f"Message-ID: <{tag}@interop.example.test>\r\n"
        "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n"
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
    ).encode()
    delim = b"--" + boundary.encode()
    body = b"".join(delim + CRLF + p + CRLF for p in parts)
    return head + body + delim + b"--" + CRLF, ["archive.zip"]


def _base64_lines(data):
    return base64.encodebytes(data).replace(b"\n", CRLF)


def write(kind, tag, sender, rcpt, out):
    data, cut = (smtplib_message if kind == "smtplib" else curl_message)(tag, sender, rcpt)
    with open(out, "wb") as f:
        f.write(data)
    return cut


# --- the check --------------------------------------------------------------


def _top_chunks(data):
    """The message split at its top-level multipart delimiter lines: the
    head and preamble, then one chunk per part (its delimiter line, the
    part and the line end before the next delimiter), then the close
    delimiter and epilogue. The proxy cuts a part as exactly such a chunk."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    delim = b"--" + msg.get_boundary().encode()
    starts = []
    pos = 0
    while True:
        pos = data.find(CRLF + delim, pos)
        if pos < 0:
            break
        starts.append(pos + 2)
        pos += 2
    bounds = [0] + starts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _filename(part):
    return part.get_filename() or part.get_param("name") or ""


def check_draft(graph_dir, tag, original_path, cut_names):
    """Raises Mismatch unless the fake Graph's draft for message TAG is
    ORIGINAL less exactly the parts named CUT_NAMES, and the attachments
    saved beside it are those parts, in order, bytes and properties."""
    original = common.read_file(original_path)
    name = common.message_file(graph_dir, tag)
    n = name[: -len(".eml")]
    draft = common.read_file(os.path.join(graph_dir, name))

    orig_msg = email.message_from_bytes(original, policy=email.policy.compat32)
    draft_msg = email.message_from_bytes(draft, policy=email.policy.compat32)
    # Readable first: the top-level header lists, the parts kept and gone.
    expect(draft_msg.items() == orig_msg.items(),
           f"the draft's top-level headers differ: {draft_msg.items()} vs {orig_msg.items()}")
    orig_parts = orig_msg.get_payload()
    draft_parts = draft_msg.get_payload()
    kept = [p for p in orig_parts if _filename(p) not in cut_names]
    removed = [p for p in orig_parts if _filename(p) in cut_names]
    names = [_filename(p) for p in orig_parts]
    expect([_filename(p) for p in removed] == cut_names,
           f"the original's parts {names} lack some of {cut_names}")
    # The removed parts are absent, the others all there.
    expect([_filename(p) for p in draft_parts] == [_filename(p) for p in kept],
           f"the draft's parts {[_filename(p) for p in draft_parts]}, expected "
           f"{[_filename(p) for p in kept]} (cut: {cut_names})")
    for got, want in zip(draft_parts, kept):
        expect(got.items() == want.items(), f"a kept part's headers differ: {got.items()}")
        expect(got.get_payload(decode=True) == want.get_payload(decode=True),
               f"the kept part {got.get_content_type()} {_filename(got)!r} has other bytes")
    # Then byte for byte: the original with exactly those chunks cut out.
    chunks = _top_chunks(original)

    def is_cut(chunk):
        head = chunk.split(CRLF + CRLF, 1)[0]
        return chunk.startswith(b"--") and any(
            f'filename="{cut}"'.encode() in head for cut in cut_names)

    expected = b"".join(c for c in chunks if not is_cut(c))
    expect(sum(map(is_cut, chunks)) == len(cut_names), "cannot find the cut parts' octets")
    diff = common.first_difference(draft, expected)
    expect(not diff, f"the draft is not the original less the cut parts: {diff}")
    print(f"draft {name}: {len(draft)} octets, the original's {len(original)} less "
          f"{', '.join(cut_names)}")

    # The attachments, in message order.
    for k, part in enumerate(removed, start=1):
        att = os.path.join(graph_dir, f"{n}.att-{k}")
        got = common.read_file(att)
        want = part.get_payload(decode=True)
        diff = common.first_difference(got, want)
        expect(not diff, f"attachment {k} ({_filename(part)}) differs: {diff}")
        with open(att + ".json", encoding="utf-8") as f:
            props = json.load(f)
        cid = part.get("Content-ID")
        disposition = part.get_content_disposition() or ""
        expected_props = {
            "name": _filename(part),
            "contentType": part.get_content_type(),
            "isInline": cid is not None and disposition != "attachment",
            "contentId": cid.strip().strip("<>") if cid else None,
        }
        expect(props == expected_props, f"attachment {k}: {props}, expected {expected_props}")
        print(f"attachment {k}: {len(got)} octets, {props}")
    extra = os.path.join(graph_dir, f"{n}.att-{len(removed) + 1}")
    expect(not os.path.exists(extra), f"an attachment more than the parts cut: {extra}")
