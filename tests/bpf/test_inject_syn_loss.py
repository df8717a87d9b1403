"""syn-loss and data-loss: the tc classifier drops exactly the packets it records, checked
against the namespace's own retransmit counters and the clients' measured times."""
from __future__ import annotations

import pandas as pd
import pytest

from netfault_helpers import Server, connect_concurrently, delta, private_ns
from spiketrace.scenarios import SCENARIOS

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]


def test_syn_loss_drops_exactly_the_recorded_syns(tmp_path):
    sc = SCENARIOS["syn-loss"]
    with private_ns("synloss", sc.sysctls) as ns, Server(ns):
        before = ns.tcp_counters()
        inj = sc.setup(ns, tmp_path, drop_every=2)
        try:
            times = connect_concurrently(ns, 6)
            records = inj.fault.records()
        finally:
            inj.teardown()
        after = ns.tcp_counters()

    dropped = {r.sport for r in records}
    assert len(records) == 3
    assert all(r.kind == "syn" and r.dport == 9999 and r.copies == 2 for r in records)
    # the kernel retransmitted exactly those SYNs, once each
    assert delta(before, after, "TcpExt.TCPSynRetrans") == 3
    assert delta(before, after, "Tcp.RetransSegs") == 3
    # ... after the 1 s initial RTO, and only those connections were slow
    for port, secs in times.items():
        if port in dropped:
            assert 0.95 <= secs <= 1.4, (port, secs)
        else:
            assert secs < 0.5, (port, secs)
    for r in records:
        assert 0.95e9 <= r.t_last - r.t_first <= 1.4e9

    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert set(gt["kind"]) == {"syn_retransmit"} and set(gt["detail"]) == {"drop"}
    assert set(gt["sport"]) == dropped and set(gt["dport"]) == {9999}
    assert sorted(gt["t_ns"]) == sorted(r.t_first for r in records)
    assert inj.params["tc_stats"]["drops"] == 3
    assert inj.teardown() == 3  # idempotent


def test_syn_loss_fraction_is_deterministic_per_hash(tmp_path):
    """With drop_fraction the choice depends only on (client port, ISN, seed): fraction 0
    drops nothing, fraction 1 drops every first SYN (and nothing else)."""
    sc = SCENARIOS["syn-loss"]
    with private_ns("synfrac", sc.sysctls) as ns, Server(ns):
        for fraction, expect in ((0.0, 0), (1.0, 3)):
            inj = sc.setup(ns, tmp_path, drop_every=0, drop_fraction=fraction, seed=7)
            try:
                before = ns.tcp_counters()
                connect_concurrently(ns, 3)
                after = ns.tcp_counters()
            finally:
                inj.teardown()
            assert len(inj.ground_truth_rows) == expect
            assert delta(before, after, "TcpExt.TCPSynRetrans") == expect


def test_data_loss_drops_the_first_data_segment(tmp_path):
    sc = SCENARIOS["data-loss"]
    with private_ns("dataloss", sc.sysctls) as ns, Server(ns, echo=3000):
        before = ns.tcp_counters()
        inj = sc.setup(ns, tmp_path, drop_every=2)
        try:
            times = connect_concurrently(ns, 6, send=3000)
            records = inj.fault.records()
        finally:
            inj.teardown()
        after = ns.tcp_counters()

    dropped = {r.sport for r in records}
    assert len(records) == 3 and all(r.kind == "data" and r.copies == 2 for r in records)
    assert delta(before, after, "Tcp.RetransSegs") == 3
    assert delta(before, after, "TcpExt.TCPSynRetrans") == 0
    # recovered by a tail loss probe or the RTO: both wait >= ~200 ms on loopback
    for port, secs in times.items():
        if port in dropped:
            assert 0.19 <= secs <= 1.0, (port, secs)
        else:
            assert secs < 0.15, (port, secs)
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert set(gt["kind"]) == {"data_retransmit"} and set(gt["sport"]) == dropped
