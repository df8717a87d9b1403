"""Run-queue delay of a traced thread against the kernel's own account of it
(/proc/<pid>/schedstat: ns spent runnable on a run queue, and the number of those waits), with a
CPU hog sharing the thread's CPU so that its wakeups have to wait.

The tracer samples the same accounting (task_struct.sched_info) at each switch-out, so what is
checked is that it splits it into the right waits, at the right times, for the right thread,
without losing any. The scheduler's clock may not move between a wakeup and the switch in (a
wakeup that preempts skips the clock update): such a wait counts as 0 ns and, like any wait
under the threshold, only in the histogram."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.bpf.tracer_helpers import random_port, read_table, start_tracer
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

SLEEPER = """
import os, sys, time
def mark():
    with open("/proc/self/schedstat") as fh:
        print(time.monotonic_ns(), *fh.read().split()[1:3], flush=True)
os.sched_setaffinity(0, {0})
os.nice(10)  # a light task: its wakeups wait for the hog's slice instead of preempting it
sys.stdin.readline()
mark()
for _ in range(300):
    time.sleep(0.001)
    t = time.perf_counter()
    while time.perf_counter() - t < 0.0002:
        pass
mark()
"""
HOG = """
import os, time
os.sched_setaffinity(0, {0})
end = time.monotonic() + 15
while time.monotonic() < end:
    pass
"""


def test_runq_delay_matches_schedstat(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    sleeper = subprocess.Popen([sys.executable, "-c", SLEEPER.replace("{0}", f"{{{cpu}}}")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    hog = subprocess.Popen([sys.executable, "-c", HOG.replace("{0}", f"{{{cpu}}}")])
    tracer = None
    try:
        tracer = start_tracer(TracerConfig(ports=[random_port()], runq_threshold_ms=0), tmp_path)
        tracer.add_pids([sleeper.pid])
        tracer_probe = tracer.probes["runq_delay"]
        time.sleep(0.2)  # the sleeper gets switched out once, so its thread is known
        sleeper.stdin.write("go\n")
        sleeper.stdin.flush()
        out, _ = sleeper.communicate(timeout=30)
        (t_before, before, waits_before), (t_after, after, waits_after) = [
            map(int, ln.split()) for ln in out.splitlines()]
    finally:
        stats = tracer.stop() if tracer else None
        for p in (sleeper, hog):
            if p.poll() is None:
                p.kill()
                p.wait()

    events = read_table(tmp_path, "events")
    delays = events[(events.kind == "runq_delay") & (events.pid == sleeper.pid)]
    delays = delays[(delays.t_ns > t_before) & (delays.t_ns <= t_after)]
    truth = after - before
    assert stats.lost_events == 0
    assert truth > 100e6, "the hog must make the sleeper wait"
    assert waits_after - waits_before >= 300  # one per sleep at least
    assert len(delays) >= 100  # most of them behind the hog
    assert (delays.value > 0).all()
    if tracer_probe == "raw_tracepoint":  # the hog, pinned to the same CPU, had it (reason)
        assert (delays.reason == hog.pid).mean() >= 0.9, delays.reason.value_counts()
    # the waits in the window add up to the kernel's total (events are stamped when the wait
    # ended, so one that straddles a window edge may fall on either side)
    assert abs(delays.value.sum() - truth) < 0.05 * truth, (delays.value.sum(), truth)
    hist = read_table(tmp_path, "histograms")
    runq = hist[hist.name == "runq_delay_ns"]
    totals = runq[runq.t_ns == runq.t_ns.max()]  # snapshots are cumulative
    # every wait is in the histogram, the 0 ns ones too (the whole trace: the window and more)
    assert totals["count"].sum() >= waits_after - waits_before, totals
