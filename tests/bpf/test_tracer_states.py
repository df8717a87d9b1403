"""State transitions (all_events=True) against bcc's tcpstates, run on the same traffic, and the
inferred entries into TIME_WAIT against a census of TIME_WAIT sockets (ss) right after."""
from __future__ import annotations

import collections
import subprocess

import pytest

from tests.bpf.tracer_helpers import (BccTool, Worker, private_netns, random_port, read_table,
                                      start_tracer)
from tracer.btf import netns_inum_of
from common.vocab import TCP_STATES
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf


def _tcpstates_rows(lines, port):
    """(laddr, lport, raddr, rport, old, new) of tcpstates lines touching `port`."""
    rows = []
    for line in lines:
        tok = line.split()
        if len(tok) < 11 or tok[-3] != "->" or not tok[-5].isdigit():
            continue
        laddr, lport, raddr, rport, old, new = tok[-8], int(tok[-7]), tok[-6], int(tok[-5]), tok[-4], tok[-2]
        if port not in (lport, rport):
            continue
        if new == "LISTEN" or (old == "LISTEN" and new == "CLOSE"):
            continue  # listeners are not connections: the tracer leaves them out by design
        rows.append((laddr, lport, raddr, rport, old, new))
    return rows


def _time_wait_census(netns: str, port: int) -> int:
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htan", "state", "time-wait"],
                         check=True, capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f":{port} " in line + " ")


TRACEPOINTS = {"state_change": "tracepoint", "reset_sent": "tracepoint",
               "reset_received": "tracepoint", "drop": "tracepoint", "retransmit": "tracepoint",
               "synack_retransmit": "tracepoint"}


@pytest.mark.parametrize("force", [None, TRACEPOINTS], ids=["default", "tracepoints"])
def test_state_changes_equal_tcpstates(tmp_path, force):
    with private_netns("states") as ns:
        port, inum = random_port(), netns_inum_of(ns)
        tracer = server = None
        tools = []
        try:
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=inum, all_events=True),
                                  tmp_path, force=force)
            if force:
                assert tracer.probes["state_change"] == "tracepoint"
            # two instances: -D catches the client sockets, -L the server's (ANDed if combined)
            tools.append(BccTool("tcpstates", "-D", str(port), ready="SKADDR"))
            tools.append(BccTool("tcpstates", "-L", str(port), ready="SKADDR"))
            server = Worker(ns, "server", port, 16, 0, 30)
            server.wait_ready()
            clients = Worker(ns, "clients", port, 20, 4, "echo").result()["clients"]
            server.stop()
            census = _time_wait_census(ns, port)
        finally:
            lines = [line for tool in tools for line in tool.stop()]
            stats = tracer.stop() if tracer else None
            if server:
                server.kill()

    assert stats.lost_events == 0
    events = read_table(tmp_path, "events")
    changes = events[events.kind == "state_change"]
    ours = collections.Counter(
        (r.saddr, int(r.sport), r.daddr, int(r.dport), TCP_STATES[int(r.state)],
         TCP_STATES[int(r.new_state)]) for r in changes.itertuples())
    theirs = collections.Counter(_tcpstates_rows(lines, port))
    assert len(clients) == 20 and all(c["err"] == 0 for c in clients)
    # every client connection went CLOSE -> SYN_SENT -> ESTABLISHED ... -> CLOSE
    assert sum(n for k, n in ours.items() if k[4:] == ("CLOSE", "SYN_SENT")) == 20
    assert ours == theirs
    assert (changes.netns == inum).all()

    # TIME_WAIT, inferred from FIN_WAIT2/CLOSING -> CLOSE, vs the sockets ss finds in TIME_WAIT
    time_wait = events[events.kind == "time_wait"]
    assert len(time_wait) == census > 0
