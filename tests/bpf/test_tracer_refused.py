"""Refused connections: connect() error streaks aggregated in the kernel, resets sent and
received, and the drop (with its reason) of each SYN that found no socket. Ground truth: the
client's own counts and the namespace's Tcp.OutRsts counter."""
from __future__ import annotations

import errno
import time

import pytest

from tests.bpf.tracer_helpers import (Worker, netstat, private_netns, random_port, read_table,
                                      start_tracer)
from tracer import btf
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

ATTEMPTS = 200


def test_refused_connects(tmp_path):
    with private_netns("refused") as ns:
        port, inum = random_port(), btf.netns_inum_of(ns)
        witness = Worker(ns, "server", port + 1, 1, 0, 30)  # a process to read the counters
        tracer = None
        try:
            witness.wait_ready()
            before = netstat(witness.pid)
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=inum), tmp_path)
            burst = Worker(ns, "clients", port, ATTEMPTS, 1, "refused").result()
            after = netstat(witness.pid)
        finally:
            stats = tracer.stop() if tracer else None
            witness.kill()

    assert burst["failures"] == ATTEMPTS and stats.lost_events == 0
    events = read_table(tmp_path, "events")
    # one event for the whole run of identical failures, sent when tracing stopped
    streaks = events[events.kind == "connect_error"]
    assert len(streaks) == 1
    s = streaks.iloc[0]
    assert (s.reason, s.value, s.pid, s.dport) == (errno.ECONNREFUSED, ATTEMPTS, burst["pid"], port)
    assert burst["t_start"] <= s.value2 <= s.t_ns <= burst["t_end"]

    # a reset and a drop per attempt; repeats within 10 ms are folded into one event whose
    # value2 says how many occurrences it stands for (the rest flushed at stop)
    sent = events[events.kind == "reset_sent"]
    received = events[events.kind == "reset_received"]
    drops = events[events.kind == "drop"]
    for kind in (sent, received, drops):
        assert 0 < len(kind) < ATTEMPTS and kind.value2.min() >= 1
    assert sent.value2.sum() == received.value2.sum() == ATTEMPTS
    assert after["Tcp.OutRsts"] - before["Tcp.OutRsts"] == ATTEMPTS
    assert (received.state == 2).all() and (received.dport == port).all()  # in SYN_SENT
    assert (sent.sport == port).all()
    names = btf.reset_reason_names()
    if names:  # 6.10+: the kernel says why
        assert {names[r] for r in sent.reason} == {"NO_SOCKET"}

    assert drops.value2.sum() == ATTEMPTS
    assert {btf.drop_reason_names()[r] for r in drops.reason} == {"NO_SOCKET"}
    # the drop is reported from the receiver's side: s = the SYN's destination
    assert (drops.sport == port).all() and (drops.daddr == "127.0.0.1").all()


def test_busy_retry_streak_ends_at_success(tmp_path):
    with private_netns("retry") as ns:
        port = random_port()
        tracer = start_tracer(TracerConfig(ports=[port], netns_inum=btf.netns_inum_of(ns)), tmp_path)
        server = None
        try:
            client = Worker(ns, "clients", port, 10, 1, "retry")
            time.sleep(0.5)
            server = Worker(ns, "server", port, 1, 0, 10)
            server.wait_ready()
            result = client.result()
        finally:
            stats = tracer.stop()
            if server:
                server.kill()

    assert result["failures"] > 10 and stats.lost_events == 0
    streaks = read_table(tmp_path, "events").query("kind == 'connect_error'")
    assert len(streaks) == 1
    s = streaks.iloc[0]
    assert (s.reason, s.value, s.pid) == (errno.ECONNREFUSED, result["failures"], result["pid"])
    assert result["t_start"] <= s.value2 <= s.t_ns <= result["t_connected"]
