"""The trace daemon's internals that need no root: how options become a TracerConfig and
how a kernel event becomes a live line (the same words as `spiketrace explain`)."""
from __future__ import annotations

import datetime as dt
import os

from common.vocab import describe_event
from spiketrace.daemon import TraceOptions, build_config, event_line
from tracer.host import mounts, resolve_cgroup

T0 = dt.datetime(2026, 11, 26, 14, 0, 3, 412000, tzinfo=dt.timezone.utc)


def test_pid_scopes_sockets_to_its_network_namespace():
    config = build_config(TraceOptions(ports=[8080], pids=[os.getpid()], threshold_ms=75))
    assert config.netns_inum == os.stat("/proc/self/ns/net").st_ino
    assert config.ports == [8080] and config.pids == [os.getpid()]
    assert config.slow_conn_ms == 75


def test_no_scope_means_every_namespace():
    assert build_config(TraceOptions(ports=[8080])).netns_inum == 0


def test_cgroup_relative_to_the_v2_mount():
    import pytest

    from common.errors import SpikeTraceError

    points = [mp for mp, fs in mounts() if fs == "cgroup2"]
    if not points:
        with pytest.raises(SpikeTraceError, match="cgroup v2 is not mounted"):
            resolve_cgroup("/")
        return
    assert resolve_cgroup("/") in [os.path.realpath(m) for m in points]
    assert resolve_cgroup(points[0]) == os.path.realpath(points[0])
    with pytest.raises(SpikeTraceError, match="no such cgroup v2 directory"):
        resolve_cgroup("no/such/cgroup/here")


def test_live_lines_say_what_happened():
    syn = dict(kind="retransmit", t_ns=1, pid=0, comm="swapper/1", saddr="127.0.0.1",
               sport=40132, daddr="127.0.0.1", dport=9999, state=2, reason=0, value=0)
    line = event_line(syn, T0)
    assert "retransmit" in line and "127.0.0.1:40132 > 127.0.0.1:9999" in line
    assert line.endswith("SYN retransmit")
    data = dict(syn, state=1)
    assert event_line(data, T0).endswith("data retransmit in ESTABLISHED")
    err = dict(syn, kind="connect_error", pid=2230, comm="client", sport=0, reason=99, value=37)
    assert event_line(err, T0).endswith("connect() failed with EADDRNOTAVAIL x37")
    wait = dict(syn, kind="accept_wait", value=212_400_000, saddr="::1", daddr="::1")
    line = event_line(wait, T0)
    assert "[::1]:40132 > [::1]:9999" in line and line.endswith("waited 212 ms in the accept queue")
    drop = dict(syn, kind="drop", state=10, reason=77)
    assert event_line(drop, T0, drops={77: "TCP_LISTEN_OVERFLOW"}).endswith(
        "packet dropped because the listener's accept queue was full (drop reason TCP_LISTEN_OVERFLOW) in LISTEN")


def test_live_line_and_explain_put_an_event_in_the_same_words():
    ev = dict(kind="reset_sent", t_ns=1, pid=7, comm="srv", saddr="10.0.0.1", sport=80,
              daddr="10.0.0.2", dport=5555, state=1, reason=3, value=0)
    assert event_line(ev, T0, resets={3: "TCP_ABORT_ON_DATA"}).endswith(
        describe_event(ev, reset_names={3: "TCP_ABORT_ON_DATA"}))
    assert describe_event(ev, reset_names={3: "TCP_ABORT_ON_DATA"}) == "reset sent in ESTABLISHED, TCP_ABORT_ON_DATA"
