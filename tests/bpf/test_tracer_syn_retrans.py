"""SYN retransmits against a listen(1) server that does not accept for a while.

Ground truth: the namespace's TcpExt.TCPSynRetrans counter, bcc's own tcpretrans tool run
alongside, and the clients' own connect() timings (the n-th SYN retransmit leaves n initial RTOs
after connect() began). The same run checks the accept-queue wait (ESTABLISHED -> the server's
first read, which follows its accept() at once here) against the server's accept times, and the
connection rows of the slow connections.
"""
from __future__ import annotations

import collections
import os
import re

import pytest

from tests.bpf.tracer_helpers import (BccTool, Worker, netstat, private_netns, random_port,
                                      read_table, start_tracer)
from tracer.btf import netns_inum_of
from common.vocab import TCP_STATES
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

CLIENTS = 6
ACCEPT_DELAY_S = 2.5
_TCPRETRANS = re.compile(r"(\S+):(\d+)\s+R>\s+(\S+):(\d+)\s+(\S+)\s*$")


def syn_offsets_s(n: int):
    """When the n-th SYN retransmit leaves, in initial RTOs after connect(): 1 s apart for the
    first tcp_syn_linear_timeouts (Linux 6.5+, default 4 in a new netns), else doubling."""
    linear = 4 if os.path.exists("/proc/sys/net/ipv4/tcp_syn_linear_timeouts") else 0
    t, rto, out = 0.0, 1.0, []
    for i in range(1, n + 1):
        t += rto
        out.append(t)
        if i >= linear:
            rto *= 2
    return out


def test_syn_retransmits_match_counter_and_tcpretrans(tmp_path):
    with private_netns("synrt") as ns:
        port, inum = random_port(), netns_inum_of(ns)
        server = Worker(ns, "server", port, 1, ACCEPT_DELAY_S, 20)
        tool = tracer = None
        try:
            server.wait_ready()
            before = netstat(server.pid)
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=inum), tmp_path)
            tool = BccTool("tcpretrans", ready="TIME")
            server.go()
            clients = Worker(ns, "clients", port, CLIENTS, CLIENTS, "echo").result()["clients"]
            after = netstat(server.pid)
            accepts = server.stop()["accepts"]
        finally:
            lines = tool.stop() if tool else []
            stats = tracer.stop() if tracer else None
            server.kill()

    events = read_table(tmp_path, "events")
    retrans = events[events.kind == "retransmit"]
    syn = retrans[retrans.state == 2]
    synack = events[events.kind == "synack_retransmit"]
    assert stats.lost_events == 0
    assert len(syn) > 0, "the scenario must make the clients retransmit their SYNs"

    # 1. the kernel's own count (TCPSynRetrans counts SYN and SYN-ACK retransmits)
    assert len(syn) + len(synack) == after["TcpExt.TCPSynRetrans"] - before["TcpExt.TCPSynRetrans"]

    # 2. bcc's tcpretrans saw the same retransmits (same local ports, same states)
    theirs = collections.Counter()
    for line in lines:
        m = _TCPRETRANS.search(line)
        if m and (int(m.group(2)) == port or int(m.group(4)) == port):
            theirs[(int(m.group(2)), m.group(5))] += 1
    ours = collections.Counter((int(r.sport), TCP_STATES[int(r.state)])
                               for r in retrans.itertuples())
    assert ours == theirs

    # 3. the right clients, at the right times, with the right tuple and namespace
    by_port = {c["port"]: c for c in clients}
    assert all(c["err"] == 0 for c in clients)
    assert (syn.dport == port).all() and (syn.daddr == "127.0.0.1").all()
    assert (syn.netns == inum).all()
    for cport, group in syn.groupby("sport"):
        c = by_port[cport]
        connect_s = (c["t_connected"] - c["t_start"]) / 1e9
        assert len(group) == sum(1 for t in syn_offsets_s(8) if t < connect_s)
        for r, expected in zip(group.sort_values("t_ns").itertuples(), syn_offsets_s(len(group))):
            assert r.value >= 1
            assert abs((r.t_ns - c["t_start"]) / 1e9 - expected) < 0.25
    slow = {p for p, c in by_port.items() if c["t_connected"] - c["t_start"] > 0.9e9}
    assert set(syn.sport) == slow

    # 4. the slow connections' rows
    conns = read_table(tmp_path, "connections")
    client_rows = conns[conns.role == "client"].set_index("sport")
    for cport, group in syn.groupby("sport"):
        row = client_rows.loc[cport]
        assert row["syn_retrans"] == len(group) and row["flags"] & 0x01  # CONN_SLOW_CONNECT
        c = by_port[cport]
        assert abs((row["t_established"] - row["t_open"]) - (c["t_connected"] - c["t_start"])) < 50e6
    assert stats.connections_sent == len(conns) and stats.connections_counted >= 2 * CLIENTS

    # 5. accept-queue wait: server-side ESTABLISHED -> accept(), vs the server's accept times
    waits = events[events.kind == "accept_wait"]
    accepted = {a["peer_port"]: a["t_accept"] for a in accepts}
    early = [p for p, t in accepted.items() if by_port[p]["t_connected"] - by_port[p]["t_start"] < 0.5e9]
    assert set(early) <= set(waits.dport)
    for r in waits.itertuples():
        truth = accepted[r.dport] - by_port[r.dport]["t_connected"]
        assert abs(r.value - truth) < 50e6, (r, truth)
        assert r.value > 5e6  # accept_wait_threshold_ms
    assert waits[waits.dport.isin(early)].value.min() > (ACCEPT_DELAY_S - 0.5) * 1e9
