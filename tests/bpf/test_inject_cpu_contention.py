"""cpu-contention: a process pinned next to the hog waits runnable during each recorded
burst -- measured by its own oversleeps and by the kernel's schedstat run-queue time."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from netfault_helpers import ROOT
from common.leftovers import proc_starttime
from spiketrace.scenarios import SCENARIOS

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]

# sleeps 1 ms in a loop for 1.2 s; prints the oversleeps > 30 ms (start, end ns) and the
# kernel's run-queue wait time of the thread (schedstat field 2) over the loop
_VICTIM = r"""
import json, sys, time
sys.stdin.readline()
def rq(): return int(open("/proc/thread-self/schedstat").read().split()[1])
w0, late, end = rq(), [], time.monotonic_ns() + 1_200_000_000
while time.monotonic_ns() < end:
    t = time.monotonic_ns(); time.sleep(0.001); d = time.monotonic_ns()
    if d - t > 30_000_000: late.append((t, d))
print(json.dumps({"late": late, "runq_ns": rq() - w0}), flush=True)
"""


def test_pinned_process_waits_during_bursts(tmp_path):
    sc = SCENARIOS["cpu-contention"]
    victim = subprocess.Popen([sys.executable, "-c", _VICTIM], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    inj = sc.setup(None, tmp_path, burst_ms=150.0, period_ms=400.0, duration_s=10.0)
    try:
        hog_pid = inj.hogs[0][0].pid
        inj.add_pids([victim.pid], "client")
        assert os.sched_getaffinity(victim.pid) == {inj.cpu}
        out, _ = victim.communicate("go\n", timeout=20)
    finally:
        victim.kill()
        victim.wait()
        inj.teardown()
    result = json.loads(out)
    assert proc_starttime(hog_pid) is None  # the hog was stopped
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert len(gt) >= 3 and set(gt["kind"]) == {"runq_delay"}
    windows = [tuple(int(x) for x in d.split("burst_ns=")[1].split()[0].split("-"))
               for d in gt["detail"]]
    assert all(0.14e9 <= e - s <= 0.25e9 for s, e in windows)
    policy = inj.params["hog_policy"]
    assert policy == "SCHED_FIFO", f"hog ran as {policy}"
    # every long oversleep overlaps a burst, and the kernel saw the thread wait runnable
    assert result["late"], "the pinned process never waited"
    assert max(d - t for t, d in result["late"]) >= 0.1e9
    for t, d in result["late"]:
        assert any(s - 5e6 <= d and t <= e + 5e6 for s, e in windows), (t, d, windows)
    assert result["runq_ns"] >= 0.1e9
