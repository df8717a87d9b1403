"""The explanations of the golden run directories under tests/data, as plain data: what the
analysis says of real recordings, kept in tests/data/golden-explanations.json so a refactor
that changes a word or a share shows up (tests/unit/test_analysis_golden.py).

A deliberate change of the analysis regenerates the file:
    .venv/bin/python -m tests.helpers.golden
and the diff is reviewed like code.
"""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = DATA / "golden-explanations.json"
COLUMNS = ("txn_id", "cause", "cause_detail", "causes", "sentence", "inferred", "match")


def cases():
    from analysis import AnalysisOptions

    trace_logs = sorted((DATA / "original-trace" / "clients").glob("client*.log"))
    return {
        "cpu-contention": (DATA / "cpu-contention", AnalysisOptions(), None),
        "nagle-delack": (DATA / "nagle-delack", AnalysisOptions(threshold_ms=30, relative=0), None),
        "original-trace": (DATA / "original-trace", AnalysisOptions(), None),
        "original-trace-applog": (DATA / "original-trace", AnalysisOptions(), trace_logs),
    }


def explanations():
    from analysis import analyse
    from analysis.applog import read_app_log
    from common.rundir import RunDir

    out = {}
    for name, (path, options, logs) in cases().items():
        result = analyse(RunDir.open(path), options, app_log=read_app_log(logs) if logs else None)
        e = result.explanations
        cols = [c for c in e.columns if c.endswith("_ns") or c in COLUMNS]
        rows = e[cols].sort_values("txn_id").to_dict(orient="records")
        out[name] = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]
    return json.loads(json.dumps(out, sort_keys=True, default=str))


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(explanations(), indent=1, sort_keys=True) + "\n")
    print(f"Wrote {GOLDEN}")
