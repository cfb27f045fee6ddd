#!/usr/bin/env python3
"""Small jobs for run.sh (stdlib only):

  tool.py free-ports N                     N free TCP ports on 127.0.0.1, one a line
  tool.py message SIZE TAG OUT             write a test message (see common.message)
  tool.py deliver MAILDIR FOLDER FILE      deliver FILE into a maildir folder as `mail`
  tool.py mkfolder MAILDIR FOLDER          create a maildir folder owned by `mail`
  tool.py same FILE EXPECTED               exit 1 (and say where) unless byte-equal
  tool.py sink-same SINK_DIR TAG EXPECTED  the sink's copy of message TAG, less the
                                           Received: field Dovecot prepends, equals EXPECTED
  tool.py graph-same DIR TAG EXPECTED      the fake Graph's copy of message TAG equals EXPECTED
  tool.py large-message KIND TAG RCPT OUT  write a large multipart message (KIND: smtplib | curl,
                                           see graph_large) to OUT, the names of its parts the
                                           Graph path must cut out to OUT.cut
  tool.py graph-draft DIR TAG EXPECTED     the fake Graph's draft of message TAG is EXPECTED less
                                           the parts in EXPECTED.cut, its attachments those parts
"""

import sys

import common
import graph_large


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main(argv):
    cmd, args = argv[0], argv[1:]
    if cmd == "free-ports":
        print("\n".join(map(str, common.free_ports(int(args[0])))))
    elif cmd == "message":
        size, tag, out = int(args[0]), args[1], args[2]
        with open(out, "wb") as f:
            f.write(common.message(size, tag))
    elif cmd == "deliver":
        common.deliver(args[0], args[1], read(args[2]))
    elif cmd == "mkfolder":
        common.make_folder(args[0], args[1])
    elif cmd == "same":
        diff = common.first_difference(read(args[0]), read(args[1]))
        if diff:
            print(f"{args[0]} differs from {args[1]}: {diff}", file=sys.stderr)
            return 1
    elif cmd == "sink-same":
        got = common.strip_first_header(common.sink_message(args[0], args[1]))
        diff = common.first_difference(got, read(args[2]))
        if diff:
            print(f"the sink's copy of {args[1]} differs from what was sent: {diff}", file=sys.stderr)
            return 1
    elif cmd == "graph-same":
        got = common.sink_message(args[0], args[1])
        diff = common.first_difference(got, read(args[2]))
        if diff:
            print(f"Graph's copy of {args[1]} differs from what was sent: {diff}", file=sys.stderr)
            return 1
    elif cmd == "large-message":
        kind, tag, rcpt, out = args
        cut = graph_large.write(kind, tag, "sender@example.test", rcpt, out)
        with open(out + ".cut", "w", encoding="utf-8") as f:
            f.write("\n".join(cut) + "\n")
    elif cmd == "graph-draft":
        with open(args[2] + ".cut", encoding="utf-8") as f:
            cut = f.read().split()
        try:
            graph_large.check_draft(args[0], args[1], args[2], cut)
        except (graph_large.Mismatch, LookupError, OSError, ValueError) as e:
            print(f"Graph's draft of {args[1]}: {e}", file=sys.stderr)
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
