"""legacy-rto: with the sock_ops program on the clients' cgroup, a dropped SYN costs the
3 s initial RTO of Linux < 3.1 instead of 1 s."""
from __future__ import annotations

import os

import pandas as pd
import pytest

from netfault_helpers import ClientProcess, Server, delta, private_ns
from spiketrace.scenarios import SCENARIOS

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]


def test_dropped_syn_costs_three_seconds(tmp_path):
    sc = SCENARIOS["legacy-rto"]
    with private_ns("legacy", sc.sysctls) as ns, Server(ns):
        client = ClientProcess(ns, 4)
        inj = sc.setup(ns, tmp_path, drop_every=2)
        try:
            cgroup = inj.cgroup
            inj.add_pids([client.pid], "client")  # before it opens sockets, as bench workers
            assert str(client.pid) in open(os.path.join(cgroup, "cgroup.procs")).read().split()
            before = ns.tcp_counters()
            times = client.go()
            after = ns.tcp_counters()
            records = inj.fault.records()
        finally:
            client.kill()
            inj.teardown()

    dropped = {r.sport for r in records}
    assert len(dropped) == 2
    assert delta(before, after, "TcpExt.TCPSynRetrans") == 2
    for port, secs in times.items():
        if port in dropped:
            assert 2.7 <= secs <= 3.3, (port, secs)  # 3 s +-10% (timer wheel granularity)
        else:
            assert secs < 0.5, (port, secs)
    assert inj.params["rto_jiffies"] == round(3 * inj.params["hz"])
    assert inj.params["sock_ops_stats"]["applied"] >= 4
    assert not os.path.exists(cgroup)
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert set(gt["detail"]) == {"drop+legacy_rto"} and set(gt["sport"]) == dropped
