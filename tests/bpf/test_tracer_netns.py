"""netns scoping: the same port used in two namespaces; a tracer scoped to one reports only its
traffic, and the netns it reads from the socket (BTF offsets) is the namespace's inode."""
from __future__ import annotations

import os

import pytest

from tests.bpf.tracer_helpers import Worker, private_netns, random_port, read_table, start_tracer
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf


def test_other_namespace_on_same_port_is_not_reported(tmp_path):
    port = random_port()
    with private_netns("nsa") as ns_a, private_netns("nsb") as ns_b:
        inum_a = netns_inum_of(ns_a)
        servers = [Worker(ns, "server", port, 16, 0, 30) for ns in (ns_a, ns_b)]
        tracer = None
        try:
            for s in servers:
                s.wait_ready()
            # the known truth for the BTF-offset read: the inode of the server's /proc netns link
            assert os.stat(f"/proc/{servers[0].pid}/ns/net").st_ino == inum_a
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=inum_a, all_events=True),
                                  tmp_path)
            ports_a = {c["port"] for c in Worker(ns_a, "clients", port, 5, 5, "echo").result()["clients"]}
            ports_b = {c["port"] for c in Worker(ns_b, "clients", port, 5, 5, "echo").result()["clients"]}
        finally:
            stats = tracer.stop() if tracer else None
            for s in servers:
                s.kill()

    events = read_table(tmp_path, "events")
    changes = events[events.kind == "state_change"]
    assert stats.lost_events == 0
    socket_events = events[events.kind != "runq_delay"]  # scheduler events have no socket
    assert len(socket_events) and (socket_events.netns == inum_a).all()
    seen = set(changes.sport) | set(changes.dport)
    assert ports_a <= seen
    assert not (ports_b - ports_a) & seen
    assert len(changes[changes.new_state == 2]) == 5  # SYN_SENT: only namespace A's clients
