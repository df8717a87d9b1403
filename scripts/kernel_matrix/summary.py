"""The kernel matrix's summary: reads what each guest left in the results directory (doctor.json,
progress.jsonl, steps.tsv, wall_s, vng.rc, done) and prints kernel x evidence -> backend, each
test passed/failed per kernel, the wall time per kernel, and every failure with its text. Also
writes summary.json and summary.md beside them. Exit status 1 if anything failed.

    python3 scripts/kernel_matrix/summary.py RESULTS --kernels 5.10 6.1 [--missing 6.12] [--strict 1]

Runs on the host's python3 (no project imports: the project may be mid-change under it)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

SYSTEM_ROWS = ("kernel headers", "BTF", "BPF ring buffer", "kprobes")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_text(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def test_outcomes(progress: Path) -> Dict[str, dict]:
    """nodeid -> {"outcome": passed|failed|skipped|running|not run, "duration_s", "text"}."""
    tests: Dict[str, dict] = {}
    try:
        lines = progress.read_text().splitlines()
    except OSError:
        return tests
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a guest's end
        if rec["event"] == "collected":
            for nodeid in rec["tests"]:
                tests.setdefault(nodeid, {"outcome": "not run", "duration_s": 0.0, "text": ""})
        elif rec["event"] == "start":
            tests.setdefault(rec["test"], {"duration_s": 0.0, "text": ""})["outcome"] = "running"
        elif rec["event"] == "result":
            t = tests.setdefault(rec["test"], {"duration_s": 0.0, "text": ""})
            t["duration_s"] += rec.get("duration_s", 0.0)
            if rec["outcome"] != "passed" or t.get("outcome") in (None, "running", "not run"):
                if t.get("outcome") != "failed":  # a teardown error after a failure keeps "failed"
                    t["outcome"] = rec["outcome"]
            if rec.get("text"):
                t["text"] = (t["text"] + "\n" + rec["text"]).strip()
    return tests


def kernel_result(results: Path, name: str) -> dict:
    out = results / name
    doctor = read_json(out / "doctor.json")
    steps = {}
    for line in read_text(out / "steps.tsv").splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            steps[parts[0]] = {"rc": int(parts[1]), "seconds": int(parts[2])}
    tests = test_outcomes(out / "progress.jsonl")
    problems: List[str] = []
    rc = read_text(out / "vng.rc", "")
    if not (out / "done").exists():
        why = {"124": "stopped by the matrix's --timeout", "137": "killed after its --timeout",
               "255": "the kernel panicked or the guest died"}.get(rc, f"exit status {rc or '?'}")
        problems.append(f"the guest did not get to its end ({why}): see {out}/console.log")
    if steps.get("headers", {}).get("rc", 0) != 0:
        problems.append(f"no kernel headers at /lib/modules/<release>/build: see {out}/headers.txt")
    if doctor is None:
        problems.append(f"no doctor JSON (doctor exit {steps.get('doctor', {}).get('rc', '?')}): "
                        f"see {out}/doctor.err")
    if not tests and (out / "done").exists():
        problems.append(f"pytest collected no test: see {out}/pytest.log")
    if "pytest" in steps and steps["pytest"]["rc"] not in (0, 1) and tests:
        problems.append(f"pytest exit status {steps['pytest']['rc']}: see {out}/pytest.log")
    backends = {}
    system = {}
    if doctor:
        for p in doctor.get("probes", []):
            cell = p["backend"]
            if p.get("detail") and p["backend"] not in ("unavailable",):
                cell += f" ({p['detail']})"
            backends[p["evidence"]] = cell
        for check in doctor.get("system", []):
            if check["name"] in SYSTEM_ROWS:
                system[check["name"]] = check["value"]
    release = read_text(out / "uname.txt").split("\n")[0].split(" ")[2:3]
    wall = read_text(out / "wall_s", "")
    return {"name": name, "release": release[0] if release else "?", "wall_s": int(wall) if wall else None,
            "steps": steps, "backends": backends, "system": system, "tests": tests,
            "doctor_problems": (doctor or {}).get("problems", []), "problems": problems,
            "failed": bool(problems) or any(t["outcome"] != "passed" for t in tests.values())}


def table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def short_test(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    return f"{Path(path).stem.replace('test_guest_', '')}::{name}"


def render(kernels: List[dict], missing: List[str], strict: bool, accel: str) -> str:
    names = [k["name"] for k in kernels]
    parts = [f"accelerator: {accel}"]
    evidence: List[str] = []
    for k in kernels:
        evidence += [e for e in k["backends"] if e not in evidence]
    rows = [[e] + [k["backends"].get(e, "-") for k in kernels] for e in evidence]
    rows += [[s] + [k["system"].get(s, "-") for k in kernels] for s in SYSTEM_ROWS
             if any(s in k["system"] for k in kernels)]
    if kernels:
        parts.append("kernel x evidence -> backend (from `spiketrace doctor --json` inside each kernel)\n"
                     + table(["evidence"] + [f"{k['name']} ({k['release']})" for k in kernels], rows))
    tests: List[str] = []
    for k in kernels:
        tests += [t for t in k["tests"] if t not in tests]
    trows = []
    for t in tests:
        row = [short_test(t)]
        for k in kernels:
            r = k["tests"].get(t)
            row.append("-" if r is None else f"{r['outcome']} {r['duration_s']:.0f}s"
                       if r["outcome"] in ("passed", "failed", "skipped") else r["outcome"])
        trows.append(row)
    trows.append(["wall time (boot to power-off)"]
                 + [f"{k['wall_s']} s" if k["wall_s"] is not None else "?" for k in kernels])
    trows.append(["result"] + ["FAILED" if k["failed"] else "passed" for k in kernels])
    if kernels:
        parts.append("tests per kernel\n" + table(["test"] + names, trows))
    total = sum(k["wall_s"] or 0 for k in kernels)
    parts.append(f"guest wall time in all: {total} s ({total / 60:.1f} min)")
    for name in missing:
        parts.append(f"{name}: its packages could not be fetched: "
                     + ("FAILED (under CI a missing kernel is a failure)" if strict else "skipped"))
    for k in kernels:
        lines = [f"  {p}" for p in k["problems"]]
        for t, r in k["tests"].items():
            if r["outcome"] != "passed":
                lines.append(f"  {short_test(t)}: {r['outcome']}")
                lines += [f"    {ln}" for ln in r["text"].splitlines()[-12:]]
        if lines:
            parts.append(f"{k['name']} ({k['release']}): failures\n" + "\n".join(lines))
    return "\n\n".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--kernels", nargs="*", default=[])
    ap.add_argument("--missing", nargs="*", default=[])
    ap.add_argument("--strict", default="0", help="1: a kernel that could not be fetched fails")
    args = ap.parse_args(argv)
    strict = args.strict == "1"
    accel = read_text(args.results / "accel", "-")
    kernels = [kernel_result(args.results, name) for name in args.kernels]
    text = render(kernels, args.missing, strict, accel)
    print(text)
    failed = any(k["failed"] for k in kernels) or (strict and bool(args.missing)) or not (kernels or args.missing)
    (args.results / "summary.md").write_text(text + "\n")
    (args.results / "summary.json").write_text(json.dumps(
        {"accel": accel, "kernels": kernels, "missing": args.missing, "failed": failed}, indent=2) + "\n")
    print(f"\nkernel matrix: {'FAILED' if failed else 'passed'}; results in {args.results}")
    print(closing_line(kernels, args.missing if strict else []))
    return 1 if failed else 0


def closing_line(kernels: List[dict], failed_missing: List[str]) -> str:
    """'N passed, M failed' over every (kernel, test); a kernel that failed outside its tests
    (no guest end, no doctor) and a kernel that could not be fetched under CI count once each."""
    passed = sum(t["outcome"] == "passed" for k in kernels for t in k["tests"].values())
    failed = sum(t["outcome"] != "passed" for k in kernels for t in k["tests"].values())
    failed += sum(1 for k in kernels if k["problems"] and all(
        t["outcome"] == "passed" for t in k["tests"].values()))
    return f"kernel-matrix: {passed} passed, {failed + len(failed_missing)} failed"


if __name__ == "__main__":
    sys.exit(main())
