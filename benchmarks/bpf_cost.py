"""Where the tracer's kernel time goes on the seed workload: per BPF program, runs and
nanoseconds per transaction (the kernel's bpf_stats), for each tracer configuration.

    sudo .venv/bin/python benchmarks/bpf_cost.py                    # 1 client, 4 s a config
    sudo .venv/bin/python benchmarks/bpf_cost.py --clients 4 --seconds 8 --config trace

The workload is benchmarks/tracer_overhead.py's (a new connection per transaction, the seed's
3,000-byte echo twice, SO_LINGER {1, 0}). bpf_stats add two clock reads to every program run
(~20-40 ns here), so the figures are upper bounds; compare programs and configurations with
each other, and confirm a change with tracer_overhead.py, which runs without them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracer_overhead import CONFIGS, Load, start_server  # noqa: E402


def measure(name: str, clients: int, seconds: float) -> None:
    from tracer.btf import netns_inum_of
    from tracer.session import Tracer, TracerConfig
    from tracer.upkeep import enable_bpf_stats, program_stats

    stats_fd = enable_bpf_stats()
    if stats_fd is None:
        sys.exit("this kernel refuses BPF_ENABLE_STATS (5.8+ needed)")
    port, servers, lsock = start_server(clients)
    load = Load(port, clients, max_seconds=seconds + 60)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tracer = Tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(os.getpid()),
                                         **CONFIGS[name]), Path(tmp))
            tracer.start()
            tracer.add_pids([p.pid for p in servers] + load.pids())
            tracer.start_thread()
            try:
                time.sleep(0.5)
                s0, n0 = program_stats(tracer), sum(load.done)
                time.sleep(seconds)
                s1, n1 = program_stats(tracer), sum(load.done)
            finally:
                lost = tracer.stop().lost_events
    finally:
        load.close()
        for p in servers:
            p.kill()
        lsock.close()
        os.close(stats_fd)
    n = max(1, n1 - n0)
    rows = []
    for fn in s1:
        ns = s1[fn][0] - s0.get(fn, (0, 0))[0]
        runs = s1[fn][1] - s0.get(fn, (0, 0))[1]
        rows.append((ns / n, runs / n, ns / runs if runs else 0.0, fn))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"tracer as `spiketrace {name}`, {clients} client(s): {n / seconds:,.0f} transactions/s, "
          f"BPF {total:,.0f} ns per transaction, lost events {lost}")
    for ns, runs, per_run, fn in rows:
        if runs:
            print(f"  {fn:28s} {ns:7.0f} ns/txn  {runs:6.2f} runs/txn  {per_run:6.0f} ns/run")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--config", default="run,trace", help="comma-separated: " + ", ".join(CONFIGS))
    args = ap.parse_args(argv)
    for name in args.config.split(","):
        if name not in CONFIGS:
            ap.error(f"--config: choose from {', '.join(CONFIGS)}")
        measure(name, args.clients, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
