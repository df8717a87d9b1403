"""`spiketrace trace` internals that need no root: how options become a TracerConfig and
how a kernel event becomes a live line."""
from __future__ import annotations

import datetime as dt
import os

from spiketrace.commands.trace import TraceOptions, build_config, event_line, resolve_cgroup

T0 = dt.datetime(2026, 11, 26, 14, 0, 3, 412000, tzinfo=dt.timezone.utc)


def test_pid_scopes_sockets_to_its_network_namespace():
    config = build_config(TraceOptions(ports=[8080], pids=[os.getpid()], threshold_ms=75))
    assert config.netns_inum == os.stat("/proc/self/ns/net").st_ino
    assert config.ports == [8080] and config.pids == [os.getpid()]
    assert config.slow_conn_ms == 75


def test_no_scope_means_every_namespace():
    assert build_config(TraceOptions(ports=[8080])).netns_inum == 0


def test_cgroup_relative_to_the_v2_mount():
    from spiketrace.commands.trace import _cgroup2_mounts

    import pytest

    from spiketrace.errors import SpikeTraceError

    mounts = _cgroup2_mounts()
    if not mounts:
        with pytest.raises(SpikeTraceError, match="cgroup v2 is not mounted"):
            resolve_cgroup("/")
        return
    assert resolve_cgroup("/") in [os.path.realpath(m) for m in mounts]
    assert resolve_cgroup(mounts[0]) == os.path.realpath(mounts[0])


def test_live_lines_say_what_happened():
    syn = dict(kind="retransmit", t_ns=1, pid=0, comm="swapper/1", saddr="127.0.0.1",
               sport=40132, daddr="127.0.0.1", dport=9999, state=2, reason=0, value=0)
    line = event_line(syn, T0)
    assert "retransmit" in line and "127.0.0.1:40132 > 127.0.0.1:9999" in line
    assert line.endswith("SYN retransmit")
    data = dict(syn, state=1)
    assert event_line(data, T0).endswith("data retransmit (ESTABLISHED)")
    err = dict(syn, kind="connect_error", pid=2230, comm="client", sport=0, reason=99, value=37)
    assert event_line(err, T0).endswith("connect() EADDRNOTAVAIL, 37 failed attempts")
    wait = dict(syn, kind="accept_wait", value=212_400_000, saddr="::1", daddr="::1")
    line = event_line(wait, T0)
    assert "[::1]:40132 > [::1]:9999" in line and line.endswith("212.4 ms")
