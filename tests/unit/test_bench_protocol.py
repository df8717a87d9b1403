"""The bench's protocol and its records: a small real run on loopback (port 0), client and
server tables checked against each other and against what the kernel reports for the sockets."""
from __future__ import annotations

import errno
import os
import socket
import time

import pandas as pd
import pytest

from bench.client import ClientOptions, run_clients
from bench.server import ServerOptions, start_server_process
from common.errors import SpikeTraceError
from common.rundir import SCHEMAS

N = 120
PHASES = ["t_start", "t_connected", "t_reply1", "t_reply2", "t_end"]
SERVER_PHASES = ["t_accept", "t_request1", "t_reply1", "t_request2", "t_reply2", "t_eof", "t_close"]


def _run(tmp_path, model="blocking", n=N, concurrency=2, payload=3000, **client):
    with start_server_process(ServerOptions(port=0, model=model, payload=payload, backlog=16),
                              tmp_path) as server:
        pids = []
        progress = []
        result = run_clients(ClientOptions(port=server.port, n=n, concurrency=concurrency,
                                           payload=payload, **client), tmp_path,
                             on_start=pids.extend, on_progress=lambda d, s: progress.append(d))
        served = server.stop()
    tx = pd.read_parquet(tmp_path / "transactions.parquet")
    sv = pd.read_parquet(tmp_path / "server.parquet")
    return result, tx, sv, served, pids, progress, server


@pytest.mark.parametrize("model", ["blocking", "threaded", "epoll"])
def test_round_trip_records_agree(tmp_path, model):
    result, tx, sv, served, pids, progress, server = _run(tmp_path, model)
    assert result.transactions == result.ok == N and result.failed == 0
    assert served == N and len(tx) == N and len(sv) == N
    assert list(tx.columns) == SCHEMAS["transactions"].names
    assert list(sv.columns) == SCHEMAS["server"].names

    # ids 0..N-1 once each; every worker did its share; pids are the ones on_start saw
    assert sorted(tx["id"]) == list(range(N))
    assert sorted(tx["worker"].unique()) == [0, 1]
    assert sorted(tx["pid"].unique()) == sorted(pids) == sorted(result.worker_pids)
    assert progress and progress[-1] == N

    # phases in order, all reached
    assert (tx[PHASES] > 0).all().all()
    for a, b in zip(PHASES, PHASES[1:]):
        assert (tx[a] <= tx[b]).all(), (a, b)
    assert (sv[SERVER_PHASES] > 0).all().all()
    for a, b in zip(SERVER_PHASES, SERVER_PHASES[1:]):
        assert (sv[a] <= sv[b]).all(), (a, b)
    assert (tx["outcome"] == "ok").all() and (sv["outcome"] == "ok").all()
    assert (sv["bytes_in"] == 2 * 3000).all()
    assert (tx["connect_attempts"] == 1).all() and (tx["last_errno"] == 0).all()

    # the same connections on both sides: client local port == server peer port, and the
    # server's view of each connection sits inside the client's (one clock, CLOCK_MONOTONIC)
    assert (tx["remote_port"] == server.port).all() and (sv["local_port"] == server.port).all()
    assert tx["local_port"].is_unique and sv["peer_port"].is_unique
    both = tx.merge(sv, left_on="local_port", right_on="peer_port", suffixes=("_c", "_s"))
    assert len(both) == N
    # causality across the two processes: each step happens after the one that caused it
    assert (both["t_start"] <= both["t_accept"]).all()
    assert (both["t_connected"] <= both["t_request1"]).all()
    assert (both["t_request1"] <= both["t_reply1_c"]).all()
    assert (both["t_reply1_c"] <= both["t_request2"]).all()
    assert (both["t_request2"] <= both["t_reply2_c"]).all()
    assert (both["t_reply2_c"] <= both["t_eof"]).all()
    assert sv["pid"].nunique() == 1 and sv["pid"].iloc[0] == server.pid
    now = time.monotonic_ns()
    assert (tx["t_end"] < now).all() and (tx["t_start"] > now - 120e9).all()


def test_small_chunks_stream_to_several_parts(tmp_path):
    result, tx, sv, *_ = _run(tmp_path, n=200, concurrency=2, chunk_rows=30)
    parts = sorted(p.name for p in (tmp_path / "transactions.parquet").glob("*.parquet"))
    # 100 transactions per worker in chunks of 30: 4 parts each, written as the run went
    assert len([p for p in parts if p.startswith("w0-")]) == 4
    assert len([p for p in parts if p.startswith("w1-")]) == 4
    assert len(tx) == 200 and tx["id"].is_unique


def test_request_split_writes_and_nodelay_still_echo(tmp_path):
    result, tx, sv, *_ = _run(tmp_path, n=20, concurrency=1, split_writes=True, nodelay=True)
    assert result.ok == 20 and (sv["bytes_in"] == 6000).all()


def test_linger_resets_instead_of_time_wait(tmp_path):
    """SO_LINGER {1, 0} set on the listening socket is inherited: the server's close() sends a
    RST, so neither side keeps a TIME_WAIT socket for the bench's port."""
    with start_server_process(ServerOptions(port=0), None) as server:
        run_clients(ClientOptions(port=server.port, n=20), tmp_path)
        port = server.port
    tw = _time_wait_ports()
    assert port not in tw


def _time_wait_ports():
    ports = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[3] == "06":  # TIME_WAIT
                ports.add(int(fields[1].split(":")[1], 16))
                ports.add(int(fields[2].split(":")[1], 16))
    return ports


def test_start_server_process_reports_port_in_use(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        with pytest.raises(SpikeTraceError, match=f"port {port} is already in use"):
            start_server_process(ServerOptions(port=port), tmp_path)


def test_server_stop_is_idempotent_and_leaves_no_process(tmp_path):
    server = start_server_process(ServerOptions(port=0), tmp_path)
    assert server.stop() == 0
    assert server.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)


def test_no_transaction_starts_before_on_start_returns(tmp_path):
    """The tracer registers the worker pids in on_start; the load must wait for it."""
    seen = {}

    def on_start(pids):
        seen["pids"] = list(pids)
        for pid in pids:  # the workers exist and are alive, waiting
            os.kill(pid, 0)
        time.sleep(0.3)
        seen["returned"] = time.monotonic_ns()

    with start_server_process(ServerOptions(port=0), None) as server:
        run_clients(ClientOptions(port=server.port, n=10, concurrency=2), tmp_path, on_start=on_start)
    tx = pd.read_parquet(tmp_path / "transactions.parquet")
    assert sorted(tx["pid"].unique()) == sorted(seen["pids"])
    assert (tx["t_start"] > seen["returned"]).all()


@pytest.mark.parametrize("retry", ["busy", "backoff"])
def test_connect_retries_until_the_server_appears(tmp_path, retry):
    import threading

    with socket.socket() as probe:  # a free port, for a server that starts late
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    box = {}

    def client():
        box["result"] = run_clients(ClientOptions(port=port, n=5, connect_retry=retry,
                                                  connect_timeout_s=20.0), tmp_path)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1.5)  # the worker is up and retrying by now
        with start_server_process(ServerOptions(port=port), None):
            thread.join(30)
    finally:
        thread.join(30)
    assert box["result"].ok == 5
    tx = pd.read_parquet(tmp_path / "transactions.parquet").sort_values("id")
    first = tx.iloc[0]
    assert first["connect_attempts"] > 1 and first["last_errno"] == errno.ECONNREFUSED
    assert first["t_connected"] - first["t_start"] > 0.2e9
    assert (tx.iloc[1:]["connect_attempts"] == 1).all()
