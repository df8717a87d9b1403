"""Golden runs recorded by `spiketrace run` on the build VM (kernel 6.18, real BPF tracer and
bench output, kept small under tests/data/): the analysis must name the injected cause."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from analysis import AnalysisOptions, analyse
from common.rundir import RunDir

DATA = Path(__file__).resolve().parents[1] / "data"


def test_cpu_contention_run_is_runq_delay_of_the_client():
    result = analyse(RunDir.open(DATA / "cpu-contention"))
    expl = result.explanations
    assert len(expl) == 4
    assert set(expl["cause"]) == {"runq_delay"} and set(expl["cause_detail"]) == {"client"}
    assert (expl["runq_delay_ns"] > 0.9 * expl["latency_ns"]).all()
    acc = result.accuracy.set_index("cause").loc["runq_delay"]
    assert (acc.precision, acc.recall) == (1.0, 1.0)


def test_nagle_delack_run_stalls_every_transaction_in_exchange_2():
    run = RunDir.open(DATA / "nagle-delack")
    assert analyse(run).explanations.empty
    result = analyse(run, AnalysisOptions(threshold_ms=30, relative=0))
    assert len(result.explanations) == 100
    assert set(result.explanations["cause"]) == {"delayed_ack"}
    acc = result.accuracy.set_index("cause").loc["delayed_ack"]
    assert (acc.precision, acc.recall) == (1.0, 1.0)


def test_analysis_never_imports_bcc():
    code = ("import sys, analysis, analysis.report, analysis.timeline, analysis.report.html, "
            "analysis.report.plots, analysis.report.markdown, analysis.report.terminal; "
            "from spiketrace.commands import report, explain; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'bcc' or m.startswith('bcc.') "
            "or m.startswith('tracer'))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []


def test_golden_runs_are_explained_as_recorded():
    """Every explanation of the golden runs, word for word and ns for ns, as in
    tests/data/golden-explanations.json (regenerate it on purpose: tests/helpers/golden.py)."""
    from tests.helpers.golden import GOLDEN, explanations

    expected = json.loads(GOLDEN.read_text())
    got = explanations()
    assert set(got) == set(expected)
    for name in expected:
        assert len(got[name]) == len(expected[name]), name
        for want, have in zip(expected[name], got[name]):
            assert have == want, f"{name} transaction {want['txn_id']}"
