"""Does the tracer's overhead regress? This tree against an earlier commit, interleaved.

    sudo .venv/bin/python benchmarks/overhead_ab.py --before 0f72a6f            # 4 rounds
    sudo .venv/bin/python benchmarks/overhead_ab.py --before HEAD~5 --rounds 6 --pairs 40
    sudo .venv/bin/python benchmarks/overhead_ab.py --before 0f72a6f --after 0f7b6f5  # one change

Each round runs the earlier commit's benchmarks/tracer_overhead.py (from a temporary git
worktree, with this tree's virtualenv) and then this tree's (or `--after`'s, from a second
worktree), or the other way round (the order
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
    ap.add_argument("--after", help="the later commit (default: this tree as it is)")
    ap.add_argument("--rounds", type=int, default=4, help="runs of each tree (>= 2)")
    ap.add_argument("--pairs", type=int, default=50, help="pairs of windows a run")
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--config", default="run,trace")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be >= 2")
    revs = {}
    for opt in ("before", "after"):
        if getattr(args, opt) is None:
            continue
        rev = subprocess.run(["git", "rev-parse", "--short", getattr(args, opt)], cwd=ROOT,
                             capture_output=True, text=True)
        if rev.returncode != 0:
            ap.error(f"--{opt}: {getattr(args, opt)!r} is not a commit of {ROOT}")
        revs[opt] = rev.stdout.strip()
    later = "after" if args.after else "this tree"
    ratios = {"before": defaultdict(list), later: defaultdict(list)}
    with tempfile.TemporaryDirectory(prefix="spiketrace-ab-") as tmp:
        trees = {"before": Path(tmp) / "before", later: Path(tmp) / "after" if args.after else ROOT}
        added = []
        try:
            for name in revs:
                subprocess.run(["git", "worktree", "add", "--detach", str(trees[name]), revs[name]],
                               cwd=ROOT, check=True, capture_output=True)
                added.append(trees[name])
            for i in range(args.rounds):
                order = [("before", trees["before"]), (later, trees[later])]
                for name, tree in (order if i % 2 == 0 else order[::-1]):
                    for key, r in run_tree(tree, args.pairs, args.clients, args.config).items():
                        ratios[name][key].append(r)
                    print(f"round {i + 1}/{args.rounds}: {name} done", flush=True)
        finally:
            for tree in added:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                               capture_output=True)
    print(f"traced / untraced, median over {args.rounds} runs of {args.pairs} pairs each "
          f"(before = {revs['before']}, {later} = {revs.get('after', 'the working tree')}):")
    for key in sorted(set(ratios["before"]) & set(ratios[later])):
        b, a = ratios["before"][key], ratios[later][key]
        mb, ma = statistics.median(b), statistics.median(a)
        print(f"  {key[0]} client(s), as `spiketrace {key[1]}`: before {mb:.3f} "
              f"({', '.join(f'{x:.3f}' for x in b)}), {later} {ma:.3f} "
              f"({', '.join(f'{x:.3f}' for x in a)}), difference {ma - mb:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
