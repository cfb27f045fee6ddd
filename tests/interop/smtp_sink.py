#!/usr/bin/env python3
"""A small SMTP sink for the interop suite: Dovecot's submission service relays
to it, and it stores each message it accepts as DIR/NNNN.eml (exactly the
bytes of the DATA section, dot-unstuffed, without the terminating dot line).

Usage: smtp_sink.py --port PORT --dir DIR
Prints "listening on 127.0.0.1:PORT" once it accepts connections.
"""

import argparse
import asyncio
import itertools
import os

MAX_LINE = 1 << 20
MAX_MESSAGE = 128 << 20
counter = itertools.count(1)


async def session(reader, writer, out_dir):
    async def reply(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    await reply("220 sink.interop.example.test ESMTP interop sink")
    have_sender = False
    recipients = 0
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                writer.write(
                    b"250-sink.interop.example.test\r\n"
                    b"250-8BITMIME\r\n"
                    b"250-SIZE %d\r\n"
                    b"250 ENHANCEDSTATUSCODES\r\n" % MAX_MESSAGE
                )
                await writer.drain()
            elif verb == b"HELO":
                await reply("250 sink.interop.example.test")
            elif verb == b"MAIL":
                have_sender, recipients = True, 0
                await reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                if not have_sender:
                    await reply("503 5.5.1 MAIL first")
                    continue
                recipients += 1
                await reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                if not recipients:
                    await reply("503 5.5.1 RCPT first")
                    continue
                await reply("354 End data with <CR><LF>.<CR><LF>")
                data = await read_data(reader)
                store(out_dir, data)
                have_sender, recipients = False, 0
                await reply("250 2.0.0 Ok: stored %d bytes" % len(data))
            elif verb in (b"RSET", b"NOOP"):
                if verb == b"RSET":
                    have_sender, recipients = False, 0
                await reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                await reply("221 2.0.0 Bye")
                return
            else:
                await reply("502 5.5.2 Command not implemented")
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        writer.close()


async def read_data(reader):
    chunks = []
    total = 0
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed inside DATA")
        if line == b".\r\n":
            return b"".join(chunks)
        if line.startswith(b"."):
            line = line[1:]
        total += len(line)
        if total > MAX_MESSAGE:
            raise ValueError("message too large")
        chunks.append(line)


def store(out_dir, data):
    name = "%06d.eml" % next(counter)
    tmp = os.path.join(out_dir, "." + name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(out_dir, name))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    server = await asyncio.start_server(
        lambda r, w: session(r, w, args.dir), "127.0.0.1", args.port, limit=MAX_LINE
    )
    print("listening on 127.0.0.1:%d" % args.port, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
