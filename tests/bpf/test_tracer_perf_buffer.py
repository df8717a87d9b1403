"""The perf-buffer output (the fallback before Linux 5.8, which has no BPF ring buffer), forced
here with SPIKETRACE_OUTPUT=perf: the same real traffic and ground truth as the ring buffer's
tests. Perf records come padded (to 8 bytes, plus a 4-byte size), and events and connection
records share the buffer, told apart by size (tracer/session.py _store).
- SYN retransmits against a listen(1) server that accepts late: tests/bpf/test_tracer_syn_retrans
  (the namespace's TCPSynRetrans, bcc's tcpretrans alongside, the clients' connect() timings, the
  slow connections' records, the accept waits against the server's accept times);
- every state change of a burst of echo connections (all_events), exactly, with nothing lost;
- losses are counted: tests/bpf/test_tracer_lost.py runs its one-page burst through both."""
from __future__ import annotations

import pytest

import tests.bpf.test_tracer_syn_retrans as syn_retrans
from tests.bpf.tracer_helpers import Worker, private_netns, random_port, read_table, start_tracer
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

CONNECTIONS = 200


@pytest.fixture
def perf_output(monkeypatch):
    """Every tracer started here uses the perf buffer; the list holds them."""
    monkeypatch.setenv("SPIKETRACE_OUTPUT", "perf")
    started = []

    def start(*args, **kwargs):
        tracer = start_tracer(*args, **kwargs)
        started.append(tracer)
        return tracer

    monkeypatch.setattr(syn_retrans, "start_tracer", start)
    return started


def test_syn_retransmits_through_the_perf_buffer(tmp_path, perf_output):
    syn_retrans.test_syn_retransmits_match_counter_and_tcpretrans(tmp_path)
    assert [t.output for t in perf_output] == ["perf"]


def test_every_state_change_through_the_perf_buffer(tmp_path, perf_output):
    with private_netns("perfbuf") as ns:
        port = random_port()
        tracer = server = None
        try:
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns),
                                               all_events=True), tmp_path)
            server = Worker(ns, "server", port, 64, 0, 60)
            server.wait_ready()
            clients = Worker(ns, "clients", port, CONNECTIONS, 8, "echo").result()["clients"]
            accepts = server.stop()["accepts"]
        finally:
            stats = tracer.stop() if tracer else None
            if server:
                server.kill()
    assert tracer.output == "perf"
    assert len(clients) == CONNECTIONS and all(c["err"] == 0 for c in clients)
    assert len(accepts) == CONNECTIONS
    assert stats.lost_events == 0, stats.lost_by_kind
    events = read_table(tmp_path, "events")
    assert stats.events == len(events)
    changes = events[events.kind == "state_change"]
    ports = {c["port"] for c in clients}
    # each client socket: CLOSE -> SYN_SENT (before connect() picks its port) -> ESTABLISHED
    opened = changes[(changes.state == 7) & (changes.new_state == 2)]
    assert len(opened) == CONNECTIONS and set(opened.dport) == {port}
    connected = changes[(changes.state == 2) & (changes.new_state == 1)]
    assert sorted(connected.sport) == sorted(ports)
    # each server child: SYN_RECV -> ESTABLISHED (a listener is not a connection)
    served = changes[(changes.state == 3) & (changes.new_state == 1)]
    assert sorted(served.dport) == sorted(ports)
    closed = changes[changes.new_state == 7]
    assert set(closed.sport) | set(closed.dport) >= ports
