"""Many connections open at once are all tracked: 8,000 concurrent connections (16,000 sockets,
a quarter of the `conns` table) leave none untracked, and the table holds exactly them.

Ground truth is the test's own sockets. With two candidate slots per socket (the table's first
design) about 6% of these sockets found both held and went untracked; buckets of eight slots
left none while the socket slab was young (regular addresses hash evenly) but 16 on a host up
for hours (random ones: about one full bucket at this fill); the buckets of sixteen
(tracer/bpf/common.h) leave none.
"""
from __future__ import annotations

import resource
import socket

import pytest

from common.netns import run_in
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig
from tracer.upkeep import scan_connections

from tests.bpf.tracer_helpers import private_netns, random_port, start_tracer

pytestmark = pytest.mark.bpf

CONNECTIONS = 8000


def _open_many(port: int, n: int):
    """n connections to a listener of our own, all left open: (listener, [sockets])."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", port))
    lsock.listen(4096)
    held = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        s, _ = lsock.accept()
        held += [c, s]
    return lsock, held


def test_eight_thousand_open_connections_are_all_tracked(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * CONNECTIONS + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), max(hard, need)))
    held, lsock, tracer = [], None, None
    try:
        with private_netns("concurrency") as ns:
            port = random_port()
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns)), tmp_path)
            try:
                lsock, held = run_in(ns, _open_many, port, CONNECTIONS)
                _slow, used = scan_connections(tracer, open_longer_than_ns=1 << 62)
                live = tracer.stats(total=True)
            finally:
                for s in held:
                    s.close()
                if lsock is not None:
                    lsock.close()
                stats = tracer.stop()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert live.lost_by_kind.get("untracked_connection", 0) == 0, live.lost_by_kind
    assert used == 2 * CONNECTIONS
    assert stats.connections_counted == 2 * CONNECTIONS  # each tracked to its close
    assert stats.lost_events == 0, stats.lost_by_kind
