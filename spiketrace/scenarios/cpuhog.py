"""CPU contention: busy-loop hogs pinned to one CPU, in bursts, with the bench processes
pinned to the same CPU, so their threads wait runnable (run-queue delay) during each burst.

Each hog is a child process (`python spiketrace/scenarios/_hog.py`), bounded in time, that
exits when its parent goes away, and logs the monotonic start and end of every burst: those
windows are the ground truth. By default it runs as SCHED_FIFO priority 1, so a burst takes the
whole CPU (the kernel's RT throttling still leaves 5%); without the right to do so it falls
back to nice -20, which steals less.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

from common import leftovers
from common.errors import SpikeTraceError
from spiketrace.scenarios.base import Injection, gt_row, read_transactions


def pin_process(pid: int, cpus) -> None:
    """Pin every thread of `pid` (threads started later inherit it from their creator)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, FileNotFoundError):
            continue


def read_windows(path: str):
    """(policy, [(start_ns, end_ns), ...]) from a hog's log."""
    policy, windows = "", []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return policy, windows
    for line in lines:
        if line.startswith("# policy"):
            policy = line.split()[-1]
        elif line.strip():
            parts = line.split()
            if len(parts) == 2:
                windows.append((int(parts[0]), int(parts[1])))
    return policy, windows


class CpuContention(Injection):
    """Hog CPU `cpu` (default: the last one) in bursts; pin the bench processes to it."""

    def install(self) -> None:
        p = self.params
        cpus = sorted(os.sched_getaffinity(0))
        cpu = int(p["cpu"]) if p.get("cpu") is not None else cpus[-1]
        if cpu not in cpus:
            raise SpikeTraceError(f"cpu-contention: CPU {cpu} is not available (have {cpus})")
        self.cpu = cpu
        self.params["cpu"] = cpu
        self.hogs: List[tuple] = []
        script = str(Path(__file__).resolve().with_name("_hog.py"))  # stdlib only: fast start
        for i in range(int(p["hogs"])):
            fd, log = tempfile.mkstemp(prefix="spiketrace-hog-", suffix=".log")
            os.close(fd)
            leftovers.track("files", log)
            proc = subprocess.Popen(
                [sys.executable, script, "--cpu", str(cpu), "--start-delay-ms", str(p["start_delay_ms"]),
                 "--burst-ms", str(p["burst_ms"]), "--period-ms", str(p["period_ms"]),
                 "--duration-s", str(p["duration_s"]), "--policy", str(p["policy"]),
                 "--out", log], stdin=subprocess.DEVNULL, close_fds=True)
            rec = leftovers.track_pids([proc.pid], "cpu-hog")
            self.hogs.append((proc, log, rec))

    def on_pids(self, pids, role):
        if self.params.get("pin") in (role, "both"):
            for pid in pids:
                pin_process(pid, {self.cpu})

    def collect(self):
        """One row per transaction in progress during a burst (its threads, pinned to the
        hogged CPU, had to wait for the burst's end); without a transactions table, one row
        per burst with sport 0."""
        self._stop_hogs()
        bursts = []
        for proc, log, _ in self.hogs:
            policy, windows = read_windows(log)
            self.params.setdefault("hog_policy", policy)
            bursts += [(start, end, proc.pid, policy) for start, end in windows]
        self.params["bursts"] = len(bursts)
        tx = read_transactions(self.run_dir, ["t_start", "t_end", "local_addr", "local_port",
                                              "remote_addr", "remote_port"])
        rows = []
        for start, end, pid, policy in sorted(bursts):
            detail = f"cpu={self.cpu} hog_pid={pid} burst_ns={start}-{end} policy={policy}"
            if tx is None:
                rows.append(gt_row(start, "runq_delay", detail))
                continue
            hit = tx[(tx["t_start"] < end) & ((tx["t_end"] == 0) | (tx["t_end"] > start))]
            rows += [gt_row(max(int(r.t_start), start), "runq_delay", detail, r.local_addr or "",
                            int(r.local_port or 0), r.remote_addr or "", int(r.remote_port or 0))
                     for r in hit.itertuples(index=False)]
        if self.params.get("hog_policy") not in (None, "SCHED_FIFO"):
            self.notes.append(f"cpu-contention: hogs ran as {self.params.get('hog_policy')}, "
                              "not SCHED_FIFO: run-queue delays will be shorter")
        return rows

    def _stop_hogs(self) -> None:
        for proc, _, rec in getattr(self, "hogs", []):
            if proc.poll() is None:
                proc.kill()  # by pid: our own child, still unreaped, so the pid is its
            proc.wait()
            leftovers.untrack_pids(rec)

    def uninstall(self) -> None:
        self._stop_hogs()
        for _, log, _ in getattr(self, "hogs", []):
            try:
                os.unlink(log)
            except FileNotFoundError:
                pass
            leftovers.untrack("files", log)
