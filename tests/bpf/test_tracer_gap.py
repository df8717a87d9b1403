"""A state change the kernel never ran the probe for is detected and counted: each change of a
tracked socket starts from the state the tracer saw last, so a change whose old state is not
that one follows a skipped run. This VM's kernel once skipped every run of one softirq (a SYN
retransmit and the ESTABLISHED after it), with no recursion miss counted; such a run cannot be
caused on purpose, so the test makes the slot look like it: the client's slot is put back to
SYN_SENT, as if its ESTABLISHED had not been seen, and then the connection closes for real."""
from __future__ import annotations

import ctypes as ct
import socket

import numpy as np
import pytest

from common.netns import run_in
from common.vocab import CONN_GAP
from tracer import events
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig
from tracer.upkeep import read_array

from tests.bpf.tracer_helpers import private_netns, random_port, read_table, start_tracer

pytestmark = pytest.mark.bpf

SYN_SENT = 2


def _connected(port: int):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", port))
    lsock.listen(8)
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    s, _ = lsock.accept()
    return lsock, c, s


def _slot_of(tracer, sport: int) -> int:
    """The index in `conns` of the client socket with local port `sport`."""
    table = tracer._bpf[b"conns"]
    raw = read_array(tracer, b"conns")
    slots = np.frombuffer(raw, dtype=np.uint8).reshape(-1, ct.sizeof(table.Leaf))
    conns = np.frombuffer(np.ascontiguousarray(slots[:, :events.CONN_SIZE]).tobytes(), dtype=events.CONN_DTYPE)
    sk = slots[:, events.CONN_SIZE:events.CONN_SIZE + 8].copy().view("<u8").ravel()
    hit = np.flatnonzero((sk != 0) & (conns["sport"] == sport) & (conns["role"] == 1))
    assert len(hit) == 1, f"client slot of port {sport}: {len(hit)} found"
    return int(hit[0])


def test_a_state_change_whose_old_state_was_not_seen_marks_the_record_and_counts_it(tmp_path):
    with private_netns("gap") as ns:
        port = random_port()
        tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns)), tmp_path)
        socks = ()
        try:
            socks = run_in(ns, _connected, port)
            cport = socks[1].getsockname()[1]
            table = tracer._bpf[b"conns"]
            idx = ct.c_int(_slot_of(tracer, cport))
            leaf = table[idx]
            assert leaf.c.state == 1 and leaf.c.t_established  # ESTABLISHED, seen
            leaf.c.state = SYN_SENT
            table[idx] = leaf
        finally:
            for s in socks:
                s.close()  # the client's close: ESTABLISHED -> FIN_WAIT1, from a state not seen
            stats = tracer.stop()
    assert stats.lost_by_kind.get("missed_state_change") == 1, stats.lost_by_kind
    conns = read_table(tmp_path, "connections")
    gap = conns[(conns["flags"] & CONN_GAP) > 0]
    assert list(zip(gap["role"], gap["sport"])) == [("client", cport)]  # the server's change all seen
