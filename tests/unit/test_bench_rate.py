"""Open loop (--rate): transactions start on a fixed schedule and latency is counted from the
*scheduled* start, so a server that falls behind shows up as growing latency (no coordinated
omission); a closed loop against the same slow server would hide it."""
from __future__ import annotations

import pandas as pd

from bench.client import ClientOptions, run_clients
from bench.server import ServerOptions, start_server_process

N = 25


def _latencies_ms(run_dir):
    tx = pd.read_parquet(run_dir / "transactions.parquet").sort_values("id").reset_index(drop=True)
    return tx, (tx["t_end"] - tx["t_start"]) / 1e6


def test_open_loop_counts_latency_from_the_scheduled_start(tmp_path):
    # the server accepts at most one connection per 20 ms; the schedule asks for one per 10 ms
    with start_server_process(ServerOptions(port=0, think_ms=20.0, backlog=64), tmp_path / "s") as server:
        result = run_clients(ClientOptions(port=server.port, n=N, rate=100.0), tmp_path / "open")
        closed = run_clients(ClientOptions(port=server.port, n=N), tmp_path / "closed")
    assert result.ok == closed.ok == N

    tx, lat = _latencies_ms(tmp_path / "open")
    # t_start is the schedule itself: exactly 10 ms apart, whatever happened
    assert (tx["t_start"].diff().dropna() == 10_000_000).all()
    # the worker could not keep up, so it started late, and that wait is in the latency
    late = (tx["t_connected"] - tx["t_start"]) / 1e6
    assert late.iloc[-1] >= 150
    assert lat.iloc[-1] >= 200  # ~ N x (20 - 10) ms behind by the end
    assert lat.is_monotonic_increasing or (lat.diff().dropna() > -15).all()

    # the same server in a closed loop: each transaction alone takes ~20 ms, no growth
    _, closed_lat = _latencies_ms(tmp_path / "closed")
    assert closed_lat.median() < 100
    assert closed_lat.max() < lat.iloc[-1]


def test_open_loop_keeps_the_schedule_when_the_server_keeps_up(tmp_path):
    with start_server_process(ServerOptions(port=0), None) as server:
        result = run_clients(ClientOptions(port=server.port, n=40, rate=400.0, concurrency=2),
                             tmp_path)
    assert result.ok == 40
    tx = pd.read_parquet(tmp_path / "transactions.parquet").sort_values("id")
    start = tx["t_start"].to_numpy()
    assert ((start - start[0]) == tx["id"].to_numpy() * 2_500_000).all()  # 400/s over both workers
    assert set(tx.loc[tx["id"] % 2 == 0, "worker"]) == {0} and set(tx.loc[tx["id"] % 2 == 1, "worker"]) == {1}
    # each started close to its scheduled time (the sleep's wake-up, a few ms on a busy VM)
    assert ((tx["t_connected"] - tx["t_start"]) < 50e6).mean() >= 0.9
    assert result.elapsed_s >= 39 / 400.0
