#!/usr/bin/env python3
"""Python 3 port of the server of StackOverflow question 2521620 ("Spikes in Socket
Performance"), `sockServerLinger.py`. It was started as

    python sockServerLinger.py > /dev/null &

and served one connection at a time: accept, echo the first message, read a second one, send the
*first* one again, read until the client closes, close. docs/original-question.md says what is
kept and how it maps to `spiketrace bench server`.

Additions for tests only: the address can be chosen (`--host`, `--port`, or the SPIKETRACE_ORIG_HOST
/ SPIKETRACE_ORIG_PORT environment variables; port 0 picks a free one), and the address it
listens on is printed once to stderr. The original bound port 9999; the host defaults to
127.0.0.1 here so that the example never listens beyond loopback. `--think-ms` (or
SPIKETRACE_ORIG_THINK_MS) makes the server work that long on each connection after accept(), as
a real server would (0 by default: the original's behaviour), so that a few concurrent clients
keep its one-slot accept queue full.
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

BUFSIZE = 10 * 1024 * 1024  # recv(10 MB), as the original


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("SPIKETRACE_ORIG_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SPIKETRACE_ORIG_PORT", "9999")))
    parser.add_argument("--think-ms", type=float, default=float(os.environ.get("SPIKETRACE_ORIG_THINK_MS", "0")),
                        help="work this long on each connection after accept() (default: 0, as the original)")
    return parser.parse_args()


def main():
    args = parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # SO_LINGER {l_onoff=1, l_linger=0} on the *listening* socket, as the original. Accepted
    # sockets inherit it, so every close() below aborts the connection with a RST instead of a
    # FIN: neither side keeps a TIME_WAIT socket.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.bind((args.host, args.port))
    s.listen(1)
    host, port = s.getsockname()[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)

    while True:
        try:
            conn, addr = s.accept()
            print("Connected by", addr)
            if args.think_ms > 0:  # not in the original: a server that does some work
                time.sleep(args.think_ms / 1000.0)
            data = conn.recv(BUFSIZE)
            conn.send(data)
            conn.recv(BUFSIZE)
            # The original sends the *first* message back again here, not the second one. The
            # client sends the same 3,000 bytes twice, so nobody notices; kept.
            conn.send(data)
            # Drain until the client closes. The original loop tested the wrong variable and
            # could never end (the next client would have waited forever); the intent was
            # "read until EOF", which is what this does: recv() returns b"" on EOF.
            while True:
                more = conn.recv(BUFSIZE)
                if not more:
                    break
            conn.close()
        except KeyboardInterrupt:
            break
        except Exception as exc:  # the original printed any error and went on serving
            print(exc)
    s.close()


if __name__ == "__main__":
    main()
