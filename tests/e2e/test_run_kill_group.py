"""`kill -9` of `spiketrace run`'s whole process group in its first seconds (the parent, the bench
server and every client worker at once: nobody is left to flush) keeps what was measured up to
the last flush interval (1 s): before, the clients wrote nothing until 32,768 rows per worker,
so such a run left nothing to analyse. `spiketrace report` then explains what is there, and
`spiketrace cleanup` removes what the run left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.bpf, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "spiketrace.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_kill_9_of_the_process_group_keeps_what_was_measured(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "spiketrace.cli", "run", "-n", "1000000", "-c", "2",
                             "--no-report", "-o", str(out)], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:  # the load starts once meta.json says the probes are attached
            meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
            if (out / "transactions.parquet").is_dir() and meta.get("probes"):
                break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        time.sleep(4.0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        cleanup = _cli("cleanup")
    assert cleanup.returncode == 0, cleanup.stderr
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "transactions.parquet").glob("*.parquet"))
    assert rows >= 1000, rows  # seconds of load at thousands a second, minus at most the last one
    res = _cli("report", str(out), "--format", "terminal,md")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert f"{rows:,} transactions" in res.stdout and "marked 'running'" in res.stdout
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"-{proc.pid}" not in left
