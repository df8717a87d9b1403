"""The accept-queue wait against the server's own clock: a server that accept()s each connection
300 ms after the handshake completed and reads its request 300 ms after that.

Without kprobes or fentry (this host), the wait ends at the server's first read or write
(`sock_recv_length`: an upper bound, here 600 ms); `exact_accept` (`trace --exact-accept`)
times accept() itself with the accept syscalls' exit tracepoint (300 ms). Where a function probe
exists (the kernel matrix's 6.1), both are exact: the option then changes nothing.
"""
from __future__ import annotations

import socket
import threading
import time

import pytest

from common.netns import run_in
from tests.bpf.tracer_helpers import private_netns, random_port, read_table, start_tracer
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

ACCEPT_AFTER_S = READ_AFTER_S = 0.3
CONNECTIONS = 4


def _serve(lsock: socket.socket) -> None:
    for _ in range(CONNECTIONS):
        time.sleep(ACCEPT_AFTER_S)  # the client's connection waits in the accept queue
        conn, _ = lsock.accept()
        time.sleep(READ_AFTER_S)
        conn.recv(100)
        conn.sendall(b"ok")
        conn.close()


def _clients(port: int) -> None:
    for _ in range(CONNECTIONS):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"hello")
            c.recv(100)


def _waits(tmp_path, exact: bool):
    with private_netns("accept") as ns:
        port = random_port()
        lsock = run_in(ns, socket.create_server, ("127.0.0.1", port), backlog=8)
        tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns),
                                           exact_accept=exact), tmp_path)
        try:
            server = threading.Thread(target=_serve, args=(lsock,), daemon=True)
            server.start()
            run_in(ns, _clients, port)
            server.join(timeout=30)
        finally:
            stats = tracer.stop()
            lsock.close()
    ev = read_table(tmp_path, "events")
    return tracer.probes["accept_wait"], ev[ev.kind == "accept_wait"]["value"].to_numpy() / 1e9, stats


@pytest.mark.parametrize("exact", [False, True], ids=["first-read", "exact"])
def test_accept_wait_ends_at_accept_with_exact_accept(tmp_path, exact):
    backend, waits, stats = _waits(tmp_path, exact)
    assert stats.lost_events == 0
    assert len(waits) == CONNECTIONS
    if backend in ("fentry", "fexit", "kretprobe"):  # exact either way
        expect = ACCEPT_AFTER_S
    elif exact:
        assert backend == "tracepoint"
        expect = ACCEPT_AFTER_S
    else:
        assert backend == "raw_tracepoint"
        expect = ACCEPT_AFTER_S + READ_AFTER_S  # accept() and the first read
    # the first connection waits from its handshake; later ones queue behind the server's sleeps
    assert all(expect - 0.05 <= w <= expect + 0.25 for w in waits), (backend, waits)
