"""Run every scenario's suggested command (`spiketrace scenarios`) and report, per scenario, the
wall time, the spikes and their causes: the figures behind "each suggested run finishes in about
a minute here and shows its spikes explained" (issue 15).

    sudo .venv/bin/python benchmarks/scenario_times.py                 # all scenarios
    sudo .venv/bin/python benchmarks/scenario_times.py syn-loss seed   # some
    sudo .venv/bin/python benchmarks/scenario_times.py --out /tmp/times.json

Each run goes to a temporary directory (removed afterwards unless --keep).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(name: str, base: Path) -> dict:
    from spiketrace.scenarios import SCENARIOS

    sc = SCENARIOS[name]
    command = sc.suggested_command()
    out = base / name
    argv = shlex.split(command)
    argv = [sys.executable, "-m", "spiketrace.cli"] + argv[argv.index("spiketrace") + 1:] + ["-o", str(out)]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=1800)
    wall = time.monotonic() - started
    row = {"scenario": name, "command": command, "wall_s": round(wall, 1), "exit": proc.returncode}
    try:
        summary = json.loads((out / "summary.json").read_text())
        meta = json.loads((out / "meta.json").read_text())
    except OSError:
        row["error"] = (proc.stderr or proc.stdout)[-2000:]
        return row
    row.update(
        transactions=summary["counts"]["transactions"], spikes=summary["counts"]["spikes"],
        bench_s=round(meta["params"].get("bench_elapsed_s") or 0, 1),
        causes={c["cause"]: c["spikes"] for c in summary["causes"]},
        expected=sc.expected_cause or None,
        accuracy={a["cause"]: {"precision": a["precision"], "recall": a["recall"]}
                  for a in summary["accuracy"] or []},
        lost_events=summary["counts"]["lost_events"], spike_rule=summary["options"]["spike_rule"],
        worst=summary["worst"][0]["sentence"] if summary["worst"] else None)
    return row


def main() -> None:
    from spiketrace.scenarios import SCENARIOS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="scenario-times-"))
    rows = []
    for name in args.scenarios:
        row = measure(name, base)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| scenario | command | wall | bench | spikes | causes |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        causes = ", ".join(f"{k} {v}" for k, v in (r.get("causes") or {}).items()) or "-"
        print(f"| {r['scenario']} | `{r['command']}` | {r['wall_s']} s | {r.get('bench_s', '?')} s | "
              f"{r.get('spikes', '?')} | {causes} |")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(base)])
    else:
        print(f"run directories in {base}")


if __name__ == "__main__":
    main()
