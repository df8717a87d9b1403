"""A CPU hog for the cpu-contention scenario (run as a script by spiketrace.scenarios.cpuhog;
standard library only, so it starts fast). Pinned to one CPU, SCHED_FIFO priority 1 if allowed
(else nice -20), it busy-loops `--burst-ms` every `--period-ms` for at most `--duration-s`,
exits when its parent goes away, and logs each burst's monotonic start and end to `--out`."""
from __future__ import annotations

import argparse
import os
import time


def hog(cpu: int, start_delay_ms: float, burst_ms: float, period_ms: float, duration_s: float,
        out: str, policy: str) -> None:
    parent = os.getppid()
    os.sched_setaffinity(0, {cpu})
    used = "SCHED_OTHER"
    if policy == "fifo":
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            used = "SCHED_FIFO"
        except OSError:
            policy = "nice"
    if policy == "nice":
        try:
            os.nice(-20)
            used = "nice-20"
        except OSError:
            pass
    burst, period = int(burst_ms * 1e6), int(period_ms * 1e6)
    deadline = time.monotonic_ns() + int(duration_s * 1e9)
    with open(out, "a", buffering=1) as log:
        log.write(f"# policy {used}\n")
        time.sleep(start_delay_ms / 1e3)
        start = time.monotonic_ns()
        while start < deadline and os.getppid() == parent:
            now = start
            while now - start < burst:
                now = time.monotonic_ns()
            log.write(f"{start} {now}\n")
            start += period
            pause = start - time.monotonic_ns()
            if pause > 0:
                time.sleep(pause / 1e9)
            start = max(start, time.monotonic_ns())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="spiketrace CPU hog (started by cpu-contention)")
    ap.add_argument("--cpu", type=int, required=True)
    ap.add_argument("--start-delay-ms", type=float, default=0.0)
    ap.add_argument("--burst-ms", type=float, required=True)
    ap.add_argument("--period-ms", type=float, required=True)
    ap.add_argument("--duration-s", type=float, required=True)
    ap.add_argument("--policy", choices=("fifo", "nice", "other"), default="fifo")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    hog(a.cpu, a.start_delay_ms, a.burst_ms, a.period_ms, a.duration_s, a.out, a.policy)


if __name__ == "__main__":
    main()
