"""The scenarios driven by the real bench (server + client processes in the namespace), as
`spiketrace run` drives them: every slow transaction has its ground-truth row and vice versa."""
from __future__ import annotations

import pandas as pd
import pytest

from netfault_helpers import private_ns
from spiketrace.scenarios import SCENARIOS

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]

bench_server = pytest.importorskip("bench.server")
bench_client = pytest.importorskip("bench.client")


def run_scenario(name, run_dir, n, client_extra=None, **params):
    sc = SCENARIOS[name]
    with private_ns(name, sc.sysctls) as ns:
        inj = sc.setup(ns, run_dir, **params)
        try:
            srv = bench_server.start_server_process(
                bench_server.ServerOptions(**sc.server_overrides), run_dir, netns=ns.name)
            inj.add_pids([srv.pid], "server")
            try:
                opts = bench_client.ClientOptions(n=n, **{**sc.client_overrides, **(client_extra or {})})
                bench_client.run_clients(opts, run_dir, netns=ns.name,
                                         on_start=lambda pids: inj.add_pids(pids, "client"))
            finally:
                srv.stop()
        finally:
            inj.teardown()
    tx = pd.read_parquet(run_dir / "transactions.parquet")
    tx["ms"] = (tx["t_end"] - tx["t_start"]) / 1e6
    return tx, pd.read_parquet(run_dir / "ground_truth.parquet")


def marked(tx, gt):
    """Transactions with a ground-truth row (same client port, t_ns inside the transaction)."""
    ids = set()
    for row in gt.itertuples():
        hit = tx[(tx["local_port"] == row.sport) & (tx["t_start"] <= row.t_ns) & (row.t_ns <= tx["t_end"])]
        assert len(hit) == 1, row
        ids.add(int(hit["id"].iloc[0]))
    return ids


def test_syn_loss_with_bench(tmp_path):
    # 2 clients: with more, backlog 1 would overflow by itself (see listen-overflow)
    tx, gt = run_scenario("syn-loss", tmp_path, 200, {"concurrency": 2}, drop_every=40)
    assert len(gt) == 5
    slow = set(tx.loc[tx["ms"] > 500, "id"])
    assert marked(tx, gt) == slow
    assert tx.loc[tx["id"].isin(slow), "ms"].between(950, 1500).all()


def test_port_exhaustion_with_bench(tmp_path):
    tx, gt = run_scenario("port-exhaustion", tmp_path, 230)
    stalled = set(tx.loc[tx["ms"] > 300, "id"])
    assert len(stalled) >= 2  # transactions 100 and 200 wait for a reusable port
    assert stalled <= marked(tx, gt)
    assert (gt["kind"] == "port_exhaustion").all()
