"""Wall time of the whole `spiketrace run -n N` (namespace, BPF compile, tracing, analysis,
reports) against the bench alone for the same N (server + clients, no tracer), interleaved
A B A B; prints each pair, the medians and the median ratio (issue 5's target: <= 1.15).

    sudo .venv/bin/python benchmarks/run_vs_bench.py -n 1000000 --pairs 1
    sudo .venv/bin/python benchmarks/run_vs_bench.py -n 100000 --pairs 3
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_alone(n: int, concurrency: int, out: Path) -> float:
    """The bench's own CLI, server and client, on a loopback port, timed like `run` is."""
    server = subprocess.Popen([sys.executable, "-m", "spiketrace.cli", "bench", "server", "--port", "19999"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "spiketrace.cli", "bench", "client", "-n", str(n), "-c",
                        str(concurrency), "--port", "19999", "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        return time.monotonic() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)


def full_run(n: int, concurrency: int, out: Path) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "spiketrace.cli", "run", "-n", str(n), "-c", str(concurrency),
                           "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"spiketrace run failed:\n{proc.stderr[-2000:]}")
    import json

    meta = json.loads((out / "meta.json").read_text())
    print(f"    run: {meta['counts'].get('transactions')} transactions, lost events "
          f"{meta['counts'].get('lost_events')}, status {meta['status']}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    bench_s, run_s = [], []
    with tempfile.TemporaryDirectory(prefix="spiketrace-runbench-") as base:
        for i in range(args.pairs):
            b = bench_alone(args.n, args.concurrency, Path(base) / f"bench-{i}")
            r = full_run(args.n, args.concurrency, Path(base) / f"run-{i}")
            bench_s.append(b)
            run_s.append(r)
            print(f"pair {i + 1}: bench alone {b:7.1f} s   spiketrace run {r:7.1f} s   ratio {r / b:.3f}")
    ratios = [r / b for r, b in zip(run_s, bench_s)]
    print(f"median: bench {statistics.median(bench_s):.1f} s, run {statistics.median(run_s):.1f} s, "
          f"ratio {statistics.median(ratios):.3f} (target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
