"""Does the tracer's overhead regress? This tree against an earlier commit, interleaved.

    sudo .venv/bin/python benchmarks/overhead_ab.py --before 0f72a6f            # 4 rounds
    sudo .venv/bin/python benchmarks/overhead_ab.py --before HEAD~5 --rounds 6 --pairs 40

Each round runs the earlier commit's benchmarks/tracer_overhead.py (from a temporary git
worktree, with this tree's virtualenv) and then this tree's, or the other way round (the order
alternates), each for `--pairs` pairs of traced and untraced windows. Each run measures its own
traced / untraced ratio against untraced windows taken at the same moments, so the machine's
drift cancels inside a run; alternating the trees spreads what is left over both. Prints, per
client count and tracer configuration, the median ratio of each tree over its rounds and the
difference. A configuration only one tree knows is left out.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(\d+) client\(s\), tracer as `spiketrace (\w+)`: .* median ratio ([0-9.]+) ")


def run_tree(tree: Path, pairs: int, clients: str, config: str) -> dict:
    """{(clients, config): ratio} from one run of `tree`'s tracer_overhead.py."""
    cmd = [sys.executable, str(tree / "benchmarks" / "tracer_overhead.py"), "--pairs", str(pairs),
           "--clients", clients, "--config", config]
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        sys.exit(f"{tree}: tracer_overhead.py failed ({out.returncode}):\n{out.stderr[-2000:]}")
    found = {}
    for line in out.stdout.splitlines():
        m = LINE.match(line)
        if m:
            found[(int(m.group(1)), m.group(2))] = float(m.group(3))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    ap.add_argument("--rounds", type=int, default=4, help="runs of each tree (>= 2)")
    ap.add_argument("--pairs", type=int, default=50, help="pairs of windows a run")
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--config", default="run,trace")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be >= 2")
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT,
                         capture_output=True, text=True)
    if rev.returncode != 0:
        ap.error(f"--before: {args.before!r} is not a commit of {ROOT}")
    ratios = {"before": defaultdict(list), "this tree": defaultdict(list)}
    with tempfile.TemporaryDirectory(prefix="spiketrace-ab-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            for i in range(args.rounds):
                order = [("before", before), ("this tree", ROOT)]
                for name, tree in (order if i % 2 == 0 else order[::-1]):
                    for key, r in run_tree(tree, args.pairs, args.clients, args.config).items():
                        ratios[name][key].append(r)
                    print(f"round {i + 1}/{args.rounds}: {name} done", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                           capture_output=True)
    print(f"traced / untraced, median over {args.rounds} runs of {args.pairs} pairs each "
          f"(before = {rev.stdout.strip()}):")
    for key in sorted(set(ratios["before"]) & set(ratios["this tree"])):
        b, a = ratios["before"][key], ratios["this tree"][key]
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"  {key[0]} client(s), as `spiketrace {key[1]}`: before {mb:.3f} "
              f"({', '.join(f'{x:.3f}' for x in b)}), this tree {ma:.3f} "
              f"({', '.join(f'{x:.3f}' for x in a)}), difference {ma - mb:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
