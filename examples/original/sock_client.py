#!/usr/bin/env python3
"""Python 3 port of the client of StackOverflow question 2521620 ("Spikes in Socket
Performance"), `sockClient.py`. It was run as

    python sockClient.py 1000000 > client.log
    grep -n "0.[1-9]" client.log        # the slow transactions

and printed the elapsed seconds of each transaction: a new socket, connect (retried at once, on
the same socket, until it works), send 3,000 bytes, read the echo, send them again, read the
echo. docs/original-question.md says what is kept and how it maps to `spiketrace bench client`.

Additions for tests only: `--host`/`--port` (or SPIKETRACE_ORIG_HOST / SPIKETRACE_ORIG_PORT),
and a bound on the busy connect loop: after `--give-up` seconds (30) without a connection the
client says so on stderr and exits 1 instead of spinning forever. With SPIKETRACE_ORIG_VERBOSE=1
(or `--verbose`) each line also says when the transaction started (epoch seconds) and from which
local port, under a header line `start duration_s local_port`, so that `spiketrace report
--transactions` can match every line to its kernel connection by port and time; the default
output is the original's, one duration per line.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time

MESSAGE = ("asd" * 1000).encode()  # 3,000 bytes


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="transactions to make")
    parser.add_argument("--host", default=os.environ.get("SPIKETRACE_ORIG_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SPIKETRACE_ORIG_PORT", "9999")))
    parser.add_argument("--give-up", type=float, default=30.0, metavar="SECONDS",
                        help="stop retrying connect() after this long (default: 30)")
    parser.add_argument("--verbose", action="store_true",
                        default=os.environ.get("SPIKETRACE_ORIG_VERBOSE", "") not in ("", "0"),
                        help="print `start duration_s local_port` lines under a header "
                             "(also SPIKETRACE_ORIG_VERBOSE=1)")
    return parser.parse_args()


def main():
    args = parse_args()
    if args.verbose:
        print("start duration_s local_port")
    for _ in range(args.n):
        t = time.time()
        # No close(): the previous socket is closed when `s` is rebound on this line (CPython
        # frees it as its last reference goes), as in the original.
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        while s.connect_ex((args.host, args.port)) != 0:
            if time.time() - t > args.give_up:  # not in the original: keeps test loops bounded
                print(f"sock_client: no connection to {args.host}:{args.port} after {args.give_up:g} s",
                      file=sys.stderr)
                sys.exit(1)
            continue
        s.send(MESSAGE)
        s.recv(6000)
        s.send(MESSAGE)
        s.recv(6000)
        if args.verbose:  # not in the original: lets each line be matched to its connection
            print(t, time.time() - t, s.getsockname()[1])
        else:
            print(time.time() - t)


if __name__ == "__main__":
    main()
