"""Stopping a client run early keeps every completed transaction on disk: Ctrl-C (SIGINT to the
whole process group), SIGTERM to the parent, and SIGKILL of the parent (the workers get SIGTERM
from PR_SET_PDEATHSIG). The server's own records are the ground truth: every connection it
served completely must be in the client's table, except at most the one in flight per worker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.server import ServerOptions, start_server_process

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2


def _children(pid: int):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _wait_gone(pids, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists()
                 and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes still alive: {alive}")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-parent", "sigkill-parent"])
def test_stopping_a_run_keeps_completed_transactions(tmp_path, how):
    out = tmp_path / "run"
    server_dir = tmp_path / "server"
    # think_ms keeps the rate low so a 1,000,000-transaction run is surely in progress
    with start_server_process(ServerOptions(port=0, think_ms=1.0, backlog=16), server_dir) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spiketrace.cli", "bench", "client", "-n", "1000000",
             "-c", str(WORKERS), "--port", str(server.port), "--out", str(out)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            # the workers running (a loaded machine takes seconds to start Python), then some load
            deadline = time.monotonic() + 60
            while len(_children(proc.pid)) < WORKERS and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            time.sleep(3.0)
            workers = [p for p in _children(proc.pid)]
            assert proc.poll() is None, proc.communicate()
            if how == "ctrl-c":
                os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
            elif how == "sigterm-parent":
                proc.send_signal(signal.SIGTERM)
            else:
                proc.kill()
            stdout, stderr = proc.communicate(timeout=30)
            _wait_gone(workers)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server.stop()

    tx = pd.read_parquet(out / "transactions.parquet")
    sv = pd.read_parquet(server_dir / "server.parquet")
    served = set(sv.loc[sv["outcome"] == "ok", "peer_port"])
    assert len(tx) > 100, "the run made too little progress to test anything"
    assert (tx["outcome"] == "ok").all()
    assert set(tx["local_port"]) <= served
    assert len(tx) >= len(served) - WORKERS
    assert tx["id"].is_unique and sorted(tx["worker"].unique()) == list(range(WORKERS))

    meta = json.loads((out / "meta.json").read_text())
    if how == "sigkill-parent":
        assert meta["status"] == "running"  # nobody left to say otherwise; the rows are there
    else:
        assert proc.returncode == 130, stderr
        assert meta["status"] == "interrupted"
        assert meta["counts"]["transactions"] == len(tx)
        assert "Traceback" not in stderr
        assert f"Wrote {out}" in stdout and f"spiketrace report {out}" in stdout


def test_stop_event_ends_the_run_early_and_keeps_its_rows(tmp_path):
    """The library's stop_event (what `spiketrace run` uses for --duration and its own stops)."""
    import threading

    from bench.client import ClientOptions, run_clients

    stop = threading.Event()
    with start_server_process(ServerOptions(port=0, think_ms=1.0, backlog=16), None) as server:
        timer = threading.Timer(1.0, stop.set)
        timer.start()
        try:
            result = run_clients(ClientOptions(port=server.port, n=1_000_000, concurrency=2),
                                 tmp_path, stop_event=stop)
        finally:
            timer.cancel()
    assert result.stopped and not result.interrupted
    assert 0 < result.transactions < 1_000_000
    tx = pd.read_parquet(tmp_path / "transactions.parquet")
    assert len(tx) == result.transactions == result.ok


def test_server_process_follows_its_parent_and_keeps_its_records(tmp_path):
    """SIGKILL of the process that started the server: PR_SET_PDEATHSIG stops the server, which
    still writes the connections it served."""
    import socket

    from bench.client import request_bytes

    code = ("import sys, time\n"
            "from bench.server import ServerOptions, start_server_process\n"
            "s = start_server_process(ServerOptions(port=0), sys.argv[1])\n"
            "print(s.pid, s.port, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        pid, port = map(int, parent.stdout.readline().split())
        req = request_bytes(3000)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                for _ in range(2):
                    s.sendall(req)
                    got = b""
                    while len(got) < len(req):
                        got += s.recv(len(req) - len(got))
        time.sleep(0.2)
    finally:
        parent.kill()
        parent.wait()
    _wait_gone([pid])
    sv = pd.read_parquet(tmp_path / "server.parquet")
    assert len(sv) == 3 and (sv["outcome"] == "ok").all()
