"""Run-queue delay of a traced thread against the kernel's own account of it
(/proc/<pid>/schedstat, second field: ns spent runnable on a run queue), with a CPU hog
sharing the thread's CPU so that every wakeup has to wait."""
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
        print(time.monotonic_ns(), fh.read().split()[1], flush=True)
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
        time.sleep(0.2)  # the sleeper gets switched out once, so its thread is known
        sleeper.stdin.write("go\n")
        sleeper.stdin.flush()
        out, _ = sleeper.communicate(timeout=30)
        (t_before, before), (t_after, after) = [map(int, ln.split()) for ln in out.splitlines()]
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
    assert len(delays) >= 250  # ~one per wakeup
    # same quantity, measured two ways (the scheduler's rq clock is read a few µs before the
    # sched_switch tracepoint, which matters only for µs delays, not for these ms waits)
    assert abs(delays.value.sum() - truth) < 0.05 * truth, (delays.value.sum(), truth)
    hist = read_table(tmp_path, "histograms")
    assert (hist.name == "runq_delay_ns").any()
