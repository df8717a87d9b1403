"""Kill `spiketrace run` at a random moment and check what it leaves: shared by the e2e test
(a few kills) and benchmarks/kill_runs.py (20 kills, issue 5's acceptance)."""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pyarrow.parquet as pq


@dataclasses.dataclass
class KillResult:
    signal: str
    after_s: float
    client_rows: int
    client_ok: int
    server_ok: int
    missing: int  # server-completed connections with no client row, beyond those in flight
    leftovers_before_cleanup: List[str]
    leftovers_after_cleanup: List[str]


def spiketrace_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "spiketrace.cli", *args]


def our_resources(pid: int) -> List[str]:
    """What the run with this pid may leave: its namespace, its state file, live children."""
    found = []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    found += [f"netns:{n.split()[0]}" for n in names if n.split() and n.split()[0].endswith(f"-{pid}")
              and n.startswith("spiketrace-")]
    state = Path(os.environ.get("SPIKETRACE_STATE_DIR", "/run/spiketrace")) / f"state-{pid}.json"
    found += [f"state:{state}"] if state.exists() else []
    found += [f"process:{child}" for child in _children_of(pid)]
    return found


def _children_of(pid: int) -> List[int]:
    """Live processes whose parent was `pid` (reparented ones are found by their cmdline)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def rows(table_dir: Path, ok_only: bool = False) -> int:
    total = 0
    for part in sorted(table_dir.glob("*.parquet")):
        t = pq.read_table(part, columns=["outcome"])
        total += sum(1 for o in t.column("outcome").to_pylist() if o == "ok") if ok_only else t.num_rows
    return total


def kill_one(out: Path, sig: signal.Signals, after_s: float, scenario: str = "seed",
             concurrency: int = 2) -> KillResult:
    """Start a long run, send it `sig` about `after_s` s after its first client records reached
    the disk (so the kill falls in the load, whatever the set-up took)."""
    proc = subprocess.Popen(spiketrace_cmd("run", "-n", "1000000", "-c", str(concurrency), "--scenario",
                                           scenario, "--no-report", "-o", str(out)),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # the load has begun once a client part file is on disk (bench writers flush every second)
    while not any((out / "transactions.parquet").glob("*.parquet")):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"run did not start: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    time.sleep(after_s)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("run did not stop within 60 s of the signal")
    time.sleep(1.0)  # workers that outlive a SIGKILLed parent get SIGTERM via PDEATHSIG and flush
    before = our_resources(proc.pid)
    subprocess.run(spiketrace_cmd("cleanup"), capture_output=True, check=True, timeout=60)
    after = our_resources(proc.pid)
    client_rows = rows(out / "transactions.parquet")
    client_ok = rows(out / "transactions.parquet", ok_only=True)
    server_ok = rows(out / "server.parquet", ok_only=True) if (out / "server.parquet").exists() else 0
    # a connection the server finished may still be in flight in a client (one per worker)
    missing = max(0, server_ok - client_ok - concurrency)
    return KillResult(sig.name, after_s, client_rows, client_ok, server_ok, missing, before, after)


def random_kills(base: Path, count: int, seed: int = 1) -> List[KillResult]:
    rng = random.Random(seed)
    results = []
    for i in range(count):
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
        results.append(kill_one(base / f"kill-{i:02d}", sig, rng.uniform(0.2, 3.0)))
    return results
