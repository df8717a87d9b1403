#!/usr/bin/env python3
"""How fast `analyse` + report writing is on a large synthetic run, and its peak memory.

    .venv/bin/python benchmarks/analysis_speed.py                 # 1M transactions, 1M events
    .venv/bin/python benchmarks/analysis_speed.py -n 100000 --events 100000

The run directory is generated once per size under benchmarks/out/ (kept for the next run).
Generation is not timed; peak RSS (resource.getrusage) covers the whole process, generation
included, so `--generate-only` then a second run gives the analysis's own peak.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--transactions", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--spike-every", type=int, default=100, help="one transaction in N is slow (default 100)")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = ap.parse_args(argv)

    from tests.helpers.synthetic import bulk

    path = args.out / f"run-{args.transactions}-{args.events}-{args.spike_every}"
    if not (path / "meta.json").exists():
        t = time.monotonic()
        bulk(path, args.transactions, args.events, args.spike_every)
        print(f"generated {path} in {time.monotonic() - t:.1f} s")
        if args.generate_only:
            return 0

    from analysis import analyse
    from analysis.report import write_reports
    from common.rundir import RunDir

    t0 = time.monotonic()
    run = RunDir.open(path)
    result = analyse(run)
    t1 = time.monotonic()
    written = write_reports(run, result, force=True)
    t2 = time.monotonic()
    print(f"transactions {args.transactions:,}, events {args.events:,}, spikes {len(result.explanations):,}")
    print("causes: " + ", ".join(f"{c['cause']} {c['spikes']}" for c in result.summary["causes"]))
    print(f"analyse {t1 - t0:.2f} s, reports {t2 - t1:.2f} s ({len(written)} files), total {t2 - t0:.2f} s")
    print(f"peak RSS {peak_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
