"""Workloads for the tracer's BPF tests, run as a subprocess inside a private network namespace.

    python tracer_worker.py NETNS server PORT BACKLOG ACCEPT_DELAY_S DURATION_S
    python tracer_worker.py NETNS clients PORT N CONCURRENCY MODE [GAP_S]

Each prints one JSON document on stdout when done (the server: on its first stdout line
"ready" once it listens, then at the end its accepts; with an accept delay it waits for a line
on stdin, sent as the clients start, then sleeps the delay before its first accept()). Times are time.monotonic_ns(), the
clock of bpf_ktime_get_ns(), so they compare directly with the tracer's events.
Modes: `echo` (connect, send, read the echo, close), `refused` (connect to a closed port N
times on fresh sockets, one thread), `hold` (connect and keep the socket open until the end),
`retry` (the seed client's `while connect_ex(): continue` on one socket until it succeeds or
N seconds pass).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time


def enter(netns: str) -> None:
    from pyroute2 import netns as pr_netns

    pr_netns.setns(netns)


def server(port: int, backlog: int, accept_delay: float, duration: float) -> None:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(backlog)
    print("ready", flush=True)
    accepts = []
    stop = time.monotonic() + duration
    signal.signal(signal.SIGTERM, lambda *a: setattr(server, "stopped", True))
    if accept_delay > 0:
        sys.stdin.readline()  # "go": the clients start now
        time.sleep(accept_delay)
    lsock.settimeout(0.1)
    while time.monotonic() < stop and not getattr(server, "stopped", False):
        try:
            conn, peer = lsock.accept()
        except socket.timeout:
            continue
        accepts.append({"peer_port": peer[1], "t_accept": time.monotonic_ns(), "pid": os.getpid()})
        conn.settimeout(2.0)
        try:
            data = conn.recv(4096)
            if data:
                conn.sendall(data)
        except OSError:
            pass
        conn.close()
    print(json.dumps({"accepts": accepts, "pid": os.getpid()}), flush=True)


def _one_client(port: int, mode: str, out: list, hold: list) -> None:
    s = socket.socket()
    rec = {"t_start": time.monotonic_ns(), "port": 0, "t_connected": 0, "err": 0}
    s.settimeout(20)
    try:
        s.connect(("127.0.0.1", port))
        rec["t_connected"] = time.monotonic_ns()
        rec["port"] = s.getsockname()[1]
        if mode == "echo":
            s.sendall(b"x" * 100)
            s.recv(4096)
    except OSError as exc:
        rec["err"] = exc.errno or -1
    rec["t_end"] = time.monotonic_ns()
    out.append(rec)
    if mode == "hold":
        hold.append(s)
    else:
        s.close()


def clients(port: int, n: int, concurrency: int, mode: str, gap: float) -> None:
    out: list = []
    hold: list = []
    if mode == "refused":
        fails = 0
        t0 = time.monotonic_ns()
        for _ in range(n):
            s = socket.socket()
            if s.connect_ex(("127.0.0.1", port)) != 0:
                fails += 1
            s.close()
        print(json.dumps({"attempts": n, "failures": fails, "t_start": t0,
                          "t_end": time.monotonic_ns(), "pid": os.getpid()}), flush=True)
        return
    if mode == "retry":
        s = socket.socket()
        fails, t0 = 0, time.monotonic_ns()
        deadline = time.monotonic() + n
        while s.connect_ex(("127.0.0.1", port)) != 0 and time.monotonic() < deadline:
            fails += 1
        print(json.dumps({"failures": fails, "t_start": t0, "t_connected": time.monotonic_ns(),
                          "port": s.getsockname()[1], "pid": os.getpid()}), flush=True)
        s.close()
        return
    remaining = list(range(n))
    while remaining:
        batch, remaining = remaining[:concurrency], remaining[concurrency:]
        threads = [threading.Thread(target=_one_client, args=(port, mode, out, hold))
                   for _ in batch]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if gap:
            time.sleep(gap)
    for s in hold:
        s.close()
    print(json.dumps({"clients": out, "pid": os.getpid()}), flush=True)


def main(argv) -> None:
    netns, role, *args = argv
    enter(netns)
    if role == "server":
        server(int(args[0]), int(args[1]), float(args[2]), float(args[3]))
    else:
        clients(int(args[0]), int(args[1]), int(args[2]), args[3],
                float(args[4]) if len(args) > 4 else 0.0)


if __name__ == "__main__":
    main(sys.argv[1:])
