"""The trace daemon's CPU at 10,000 connections/s: its own process (every thread) plus the time
the kernel spends in its BPF programs (bpf_stats, `trace --bpf-stats`). Goal: <= 2% of one core.

    sudo .venv/bin/python benchmarks/daemon_cost.py                  # 8 pairs of 10 s windows
    sudo .venv/bin/python benchmarks/daemon_cost.py --rate 5000 --pairs 4 --spikes 500

The load (benchmarks/daemon_load.c) runs in a private network namespace, a new client process
every 200 connections. Windows alternate, loaded and idle, and each figure is the median over
the windows of its kind (this VM's speed wanders by +-15%). Where the time goes: the daemon's
threads (spiketrace_thread_cpu_seconds_total: main loop + live analysis, tracer consumer,
counter sampler, metrics server) and each BPF program's run time. `--spikes N` drops the first
SYN of every Nth connection (syn-loss injector), so the live explanations have work to do.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict

from daemon_harness import Bench, bpf_seconds


def _threads(m: dict) -> dict:
    return {dict(labels)["thread"]: v for (name, labels), v in m.items()
            if name == "spiketrace_thread_cpu_seconds_total"}


def _progs(m: dict) -> dict:
    return {dict(labels)["program"]: v for (name, labels), v in m.items()
            if name == "spiketrace_bpf_run_seconds_total"}


def window(bench: Bench, seconds: float) -> dict:
    m0, c0, t0 = bench.scrape(), bench.cpu_s(), time.monotonic()
    time.sleep(seconds)
    m1, c1, t1 = bench.scrape(), bench.cpu_s(), time.monotonic()
    dt = t1 - t0
    conns = (m1[("spiketrace_connections_total", frozenset())] -
             m0[("spiketrace_connections_total", frozenset())]) / 2 / dt  # two sockets per connection
    th0, th1, p0, p1 = _threads(m0), _threads(m1), _progs(m0), _progs(m1)
    lost = [m.get(("spiketrace_lost_events_total", frozenset({("kind", "all")})), 0) for m in (m0, m1)]
    slow = [m.get(("spiketrace_connections_recorded_total", frozenset()), 0) for m in (m0, m1)]
    return {"conn_per_s": conns, "lost": lost[1] - lost[0], "recorded": slow[1] - slow[0], "daemon_pct": 100 * (c1 - c0) / dt,
            "bpf_pct": 100 * (bpf_seconds(m1) - bpf_seconds(m0)) / dt,
            "threads": {k: 100 * (th1[k] - th0.get(k, 0)) / dt for k in th1},
            "progs": {k: 100 * (p1[k] - p0.get(k, 0)) / dt for k in p1}}


def median_of(rows, key):
    return statistics.median(r[key] for r in rows)


def report(name: str, rows) -> None:
    if not rows:
        print(f"{name}: no window")
        return
    print(f"{name}: {len(rows)} windows, {median_of(rows, 'conn_per_s'):,.0f} connections/s; "
          f"daemon process {median_of(rows, 'daemon_pct'):.2f}% of a core, BPF programs "
          f"{median_of(rows, 'bpf_pct'):.2f}%, total {statistics.median(r['daemon_pct'] + r['bpf_pct'] for r in rows):.2f}% (median)")
    for part in ("threads", "progs"):
        keys = sorted({k for r in rows for k in r[part]})
        med = {k: statistics.median(r[part].get(k, 0) for r in rows) for k in keys}
        print(f"  {part}: " + ", ".join(f"{k} {v:.2f}%" for k, v in sorted(med.items(), key=lambda kv: -kv[1])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=10000.0)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--spikes", type=int, default=0, help="drop the first SYN of every Nth connection")
    ap.add_argument("--daemon-args", default="", help="extra `spiketrace trace` options, space-separated")
    args = ap.parse_args(argv)
    bench = Bench("cost", ["--bpf-stats", "--max-size", "1G", *args.daemon_args.split()])
    inj = None
    if args.spikes:
        from spiketrace.scenarios import SCENARIOS

        (bench.tmp / "inj").mkdir()
        inj = SCENARIOS["syn-loss"].setup(bench.ns, bench.tmp / "inj", drop_every=args.spikes)
    runs = defaultdict(list)
    try:
        time.sleep(3)  # settle after start
        for i in range(args.pairs):
            order = ("loaded", "idle") if i % 2 == 0 else ("idle", "loaded")
            for kind in order:
                load = bench.load(args.rate, args.seconds + 1.0) if kind == "loaded" else None
                time.sleep(0.5)
                runs[kind].append(window(bench, args.seconds))
                if load is not None:
                    load.wait()
        final = bench.scrape()
    finally:
        if inj is not None:
            inj.teardown()
        bench.close()
    for kind in ("loaded", "idle"):
        for r in runs[kind]:
            print(f"  {kind} window: {r['conn_per_s']:,.0f}/s daemon {r['daemon_pct']:.2f}% bpf {r['bpf_pct']:.2f}% "
                  f"lost {r['lost']:.0f} recorded {r['recorded']:.0f} threads "
                  + " ".join(f"{k} {v:.2f}" for k, v in sorted(r["threads"].items())))
        report(kind, runs[kind])
        # windows where this VM's other load stalled the workload into a storm of slow
        # connections (lost events, thousands recorded) measure the storm, not the daemon
        report(kind + " (windows without a storm)", [r for r in runs[kind] if not r["lost"] and r["recorded"] < 100])
    lost = final.get(("spiketrace_lost_events_total", frozenset({("kind", "all")})))
    spikes = sum(v for (n, _l), v in final.items() if n == "spiketrace_spikes_total")
    kinds = {dict(labels)["kind"]: v for (name, labels), v in final.items()
             if name == "spiketrace_lost_events_total" and dict(labels)["kind"] != "all" and v}
    print(f"lost events {lost:.0f}{f' {kinds}' if kinds else ''}; spikes explained live {spikes:.0f}; live analyses "
          f"{final.get(('spiketrace_live_analyses_total', frozenset()), 0):.0f} taking "
          f"{final.get(('spiketrace_live_analysis_seconds_total', frozenset()), 0):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
