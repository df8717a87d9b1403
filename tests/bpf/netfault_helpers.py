"""Minimal servers and clients in a private network namespace for the netns/injection tests
(independent of bench/ on purpose: these tests check the injectors, not the bench)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Optional

from common.netns import Namespace

ROOT = Path(__file__).resolve().parents[2]
PORT = 9999  # fine: every test has its own namespace


@contextlib.contextmanager
def private_ns(tag: str, sysctls: Optional[Dict[str, str]] = None):
    ns = Namespace.create(f"sttest-scen-{tag}-{os.getpid()}", sysctls or {})
    try:
        yield ns
    finally:
        ns.remove()


class Server:
    """Listener in `ns` served by a thread: accept (after `accept_delay_s`), read `echo` bytes
    and send them back (0 = none), read until EOF, close. `linger` sets SO_LINGER {1,0}."""

    def __init__(self, ns: Namespace, backlog: int = 64, accept_delay_s: float = 0.0,
                 echo: int = 0, linger: bool = False, port: int = PORT):
        with ns.inside():
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if linger:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.bind(("127.0.0.1", port))
            self.sock.listen(backlog)
        self.accept_delay_s, self.echo = accept_delay_s, echo
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "Server":
        self.thread.start()
        return self

    def _serve(self) -> None:
        time.sleep(self.accept_delay_s)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                got = b""
                while len(got) < self.echo:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    got += chunk
                if self.echo:
                    conn.sendall(got)
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=2)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def connect_concurrently(ns: Namespace, n: int, port: int = PORT, send: int = 0,
                         stagger_s: float = 0.0) -> Dict[int, float]:
    """Open `n` connections from threads at once (staggered by `stagger_s`); if `send`,
    send that many bytes and wait for the echo. Returns {client port: seconds} where seconds
    is the connect time (send = 0) or the echo round trip (send > 0)."""
    with ns.inside():
        socks = [socket.socket() for _ in range(n)]
    out: Dict[int, float] = {}

    def one(s: socket.socket) -> None:
        with s:
            s.settimeout(15)
            t = time.monotonic()
            s.connect(("127.0.0.1", port))
            if send:
                t = time.monotonic()
                s.sendall(b"a" * send)
                got = 0
                while got < send:
                    chunk = s.recv(65536)
                    assert chunk, "server closed early"
                    got += len(chunk)
            out[s.getsockname()[1]] = time.monotonic() - t

    threads = [threading.Thread(target=one, args=(s,)) for s in socks]
    for th in threads:
        th.start()
        if stagger_s:
            time.sleep(stagger_s)
    for th in threads:
        th.join()
    assert len(out) == n, f"only {len(out)} of {n} connections completed"
    return out


# A client in its own process (so it can be put in a cgroup before it opens sockets, as the
# bench workers are): enters the netns, waits for a line on stdin, connects N sockets at
# once, prints {port: connect seconds} as JSON.
_CLIENT = r"""
import json, socket, sys, threading, time
from common.netns import enter as enter_netns
enter_netns(sys.argv[1]); port, n = int(sys.argv[2]), int(sys.argv[3])
sys.stdin.readline()
out = {}
def one():
    s = socket.socket(); s.settimeout(15); t = time.monotonic()
    s.connect(("127.0.0.1", port)); out[s.getsockname()[1]] = time.monotonic() - t; s.close()
th = [threading.Thread(target=one) for _ in range(n)]
[t.start() for t in th]; [t.join() for t in th]
print(json.dumps(out), flush=True)
"""


class ClientProcess:
    def __init__(self, ns: Namespace, n: int, port: int = PORT):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-c", _CLIENT, ns.name, str(port), str(n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.pid = self.proc.pid

    def go(self, timeout: float = 30) -> Dict[int, float]:
        out, _ = self.proc.communicate("go\n", timeout=timeout)
        assert self.proc.returncode == 0, out
        return {int(k): v for k, v in json.loads(out).items()}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def delta(before: Dict[str, int], after: Dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)
