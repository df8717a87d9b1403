"""CounterSampler against real sockets in a private network namespace, checked against
iproute2's own view of the same namespace (`nstat`, `ss`). Needs root (netns)."""
from __future__ import annotations

import errno
import socket
import subprocess
import time

import pandas as pd
import pytest

from common.errors import SpikeTraceError
from tracer.counters import CounterSampler, read_counters, read_tcp_sysctls
from common.netns import run_in as run_in_netns

pytestmark = pytest.mark.bpf

PORT = 9999  # fine inside a private namespace




def nstat(ns, name):
    """Absolute value of one counter as `nstat` sees it in the namespace (history untouched)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-asz", name],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return int(fields[1])
    raise AssertionError(f"nstat did not report {name}: {out!r}")


def counter_series(run_dir, name):
    df = pd.read_parquet(run_dir / "counters.parquet")
    return df[df["name"] == name].sort_values("t_ns")["value"].tolist()


def test_listen_overflow_and_queue_depth(ns, tmp_path):
    backlog = 1

    def make_sockets():
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", PORT))
        srv.listen(backlog)  # never accepts
        clients = []
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            assert c.connect_ex(("127.0.0.1", PORT)) in (0, errno.EINPROGRESS)
            clients.append(c)
        return srv, clients

    start_nstat = nstat(ns, "TcpExtListenOverflows")
    sampler = CounterSampler(tmp_path, ns, [PORT])
    sampler.start()
    srv = clients = None
    try:
        srv, clients = run_in_netns(ns, make_sockets)
        time.sleep(1.3)  # long enough for the 1 s SYN retransmits to overflow again
        # `ss -lnt` shows a listener's queue as Recv-Q and its backlog as Send-Q
        ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH", f"sport = :{PORT}"],
                            capture_output=True, text=True, check=True).stdout.split()
        assert (sampler.latest[f"listen.{PORT}.queue"], sampler.latest[f"listen.{PORT}.backlog"]) \
            == (int(ss[1]), int(ss[2]))
    finally:
        if srv is not None:
            srv.close()
        for c in clients or []:
            c.close()
        time.sleep(0.3)  # let the closes settle before both views are read
        sampler.stop()
    end_nstat = nstat(ns, "TcpExtListenOverflows")

    overflows = counter_series(tmp_path, "TcpExt.ListenOverflows")
    assert overflows[-1] - overflows[0] == end_nstat - start_nstat
    assert end_nstat - start_nstat > 0
    assert overflows[-1] == end_nstat  # a fresh namespace: absolute values agree too
    queue = counter_series(tmp_path, f"listen.{PORT}.queue")
    assert max(queue) == backlog + 1  # a queue with backlog B holds B+1
    assert set(counter_series(tmp_path, f"listen.{PORT}.backlog")) == {backlog}


def test_time_wait_count_matches_ss(ns, tmp_path):
    n = 12

    def churn():
        srv = socket.socket()
        srv.bind(("127.0.0.1", PORT))
        srv.listen(16)
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", PORT))
            s, _ = srv.accept()
            c.close()  # the active closer's socket goes to TIME_WAIT
            s.recv(1)
            s.close()
        srv.close()

    sampler = CounterSampler(tmp_path, ns, [PORT])
    sampler.start()
    try:
        run_in_netns(ns, churn)
        time.sleep(0.3)
    finally:
        sampler.stop()
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tanH", "state", "time-wait"],
                         capture_output=True, text=True, check=True).stdout
    ss_count = len([line for line in out.splitlines() if line.strip()])
    assert ss_count == n
    assert counter_series(tmp_path, "sockstat.tw")[-1] == ss_count
    assert sampler.latest["sockstat.tw"] == ss_count
    assert read_counters(ns)["sockstat.tw"] == ss_count


def test_rate_and_changed_only_storage(ns, tmp_path):
    sampler = CounterSampler(tmp_path, ns, [PORT], hz=20.0)
    sampler.start()
    time.sleep(1.0)
    samples = sampler.stop()
    assert samples >= 20
    assert sampler.errors == 0
    df = pd.read_parquet(tmp_path / "counters.parquet")
    times = sorted(df["t_ns"].unique())
    # an idle namespace: only the first and the last (full) samples store rows
    assert len(times) == 2
    assert (times[-1] - times[0]) / 1e9 >= 0.95
    first = df[df["t_ns"] == times[0]]
    assert {"TcpExt.ListenOverflows", "Tcp.RetransSegs", "sockstat.tw"} <= set(first["name"])
    assert len(first) == len(df[df["t_ns"] == times[-1]])


def test_sysctls_are_read_inside_the_namespace(ns):
    from pyroute2 import netns

    netns.pushns(ns)
    try:
        with open("/proc/sys/net/ipv4/tcp_syn_retries", "w") as fh:
            fh.write("3")
    finally:
        netns.popns()
    assert read_tcp_sysctls(ns)["net.ipv4.tcp_syn_retries"] == "3"
    host = read_tcp_sysctls(None)
    with open("/proc/sys/net/ipv4/tcp_syn_retries") as fh:
        assert host["net.ipv4.tcp_syn_retries"] == fh.read().strip()
    assert "net.ipv4.ip_local_port_range" in host


def test_missing_namespace_is_one_clear_error(tmp_path):
    with pytest.raises(SpikeTraceError, match="does not exist"):
        CounterSampler(tmp_path, "sttest-ctr-no-such-ns", [PORT]).start()
    with pytest.raises(SpikeTraceError, match="no process"):
        read_tcp_sysctls(2 ** 22 + 12345)
