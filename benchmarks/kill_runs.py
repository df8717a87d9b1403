"""Issue 5's kill test: 20 `spiketrace run`s killed at random moments (SIGINT and SIGKILL
alternately). For each: rows on disk, server-completed connections missing from the client
table (must be 0), and leftovers before and after `spiketrace cleanup` (after must be none).

    sudo .venv/bin/python benchmarks/kill_runs.py [--count 20] [--seed 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.killing import random_kills  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="spiketrace-kills-") as base:
        print(f"{'#':>2} {'signal':7} {'after':>6} {'rows':>7} {'client ok':>9} {'server ok':>9} "
              f"{'missing':>7}  left before cleanup -> after")
        for i, r in enumerate(random_kills(Path(base), args.count, args.seed)):
            bad = r.missing or r.leftovers_after_cleanup
            failures += bool(bad)
            print(f"{i:>2} {r.signal:7} {r.after_s:5.2f}s {r.client_rows:>7} {r.client_ok:>9} {r.server_ok:>9} "
                  f"{r.missing:>7}  {len(r.leftovers_before_cleanup)} -> {r.leftovers_after_cleanup or 0}"
                  f"{'  FAIL' if bad else ''}")
    print(f"{args.count - failures}/{args.count} kills left every completed transaction on disk and nothing behind")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
