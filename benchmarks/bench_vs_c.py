"""Serial echo bench: Python client + Python blocking server vs the minimal C pair in bench/c/.

Both pairs run the same protocol (connect, 2 x echo of `--payload` bytes, close) on loopback,
one transaction at a time, with the same SO_LINGER {1, 0} and backlog. Runs are interleaved
(Python, C, Python, C, ...) because throughput on a shared VM drifts; the verdict is the ratio
of the medians. The target: Python >= 0.85 x C.

    .venv/bin/python benchmarks/bench_vs_c.py               # 5 pairs of 20,000 transactions
    .venv/bin/python benchmarks/bench_vs_c.py --pairs 3 -n 5000
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.client import ClientOptions, run_clients  # noqa: E402
from bench.server import ServerOptions, start_server_process  # noqa: E402

C_DIR = ROOT / "bench" / "c"


def compile_c(out_dir: Path) -> dict:
    binaries = {}
    for name in ("echo_server", "echo_client"):
        exe = out_dir / name
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(C_DIR / f"{name}.c")], check=True)
        binaries[name] = str(exe)
    return binaries


def run_python(n: int, payload: int, backlog: int, work: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=work))
    server = start_server_process(ServerOptions(port=0, backlog=backlog, payload=payload), run_dir)
    try:
        result = run_clients(ClientOptions(port=server.port, n=n, payload=payload), run_dir)
    finally:
        server.stop()
    if result.ok != n:
        raise SystemExit(f"python pair: only {result.ok} of {n} transactions ok")
    return result.rate


def run_c(n: int, payload: int, backlog: int, binaries: dict) -> float:
    server = subprocess.Popen([binaries["echo_server"], "0", str(backlog), str(payload)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().split()[1]
        out = subprocess.run([binaries["echo_client"], "127.0.0.1", port, str(n), str(payload)],
                             capture_output=True, text=True, check=True).stdout.split()
    finally:
        server.kill()
        server.wait()
    fields = dict(zip(out[0::2], out[1::2]))
    return float(fields["tx_per_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=5, help="Python/C run pairs (default 5)")
    ap.add_argument("-n", type=int, default=20000, help="transactions per run (default 20000)")
    ap.add_argument("--payload", type=int, default=3000)
    ap.add_argument("--backlog", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-vs-c-") as tmp:
        work = Path(tmp)
        binaries = compile_c(work)
        py, c = [], []
        for i in range(args.pairs):
            py.append(run_python(args.n, args.payload, args.backlog, work))
            c.append(run_c(args.n, args.payload, args.backlog, binaries))
            print(f"pair {i + 1}: python {py[-1]:8.0f} tx/s   C {c[-1]:8.0f} tx/s   "
                  f"ratio {py[-1] / c[-1]:.3f}", flush=True)
    mp, mc = statistics.median(py), statistics.median(c)
    ratio = mp / mc
    print(f"median: python {mp:.0f} tx/s, C {mc:.0f} tx/s, ratio {ratio:.3f} "
          f"(target >= 0.85: {'met' if ratio >= 0.85 else 'NOT met'})")
    print(f"per-pair ratios: median {statistics.median(p / q for p, q in zip(py, c)):.3f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(main())
