"""Report paths a user takes that once misled (issue 15), each checked as the user sees it."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd

from common import rundir


def healthy_trace(path, counted=6000):
    """A trace whose kernel counted every connection and sent none (nothing was slow)."""
    rundir.create_run_dir(path)
    meta = rundir.new_meta("trace", scenario="trace")
    meta.status = "complete"
    meta.clock_monotonic_ns, meta.clock_wall_ns = 1_407_740_497_648, 1_796_191_025_588_772_765
    meta.counts = {"events": 0, "connections": 0, "lost_events": 0, "connections_counted": counted,
                   "connections_sent": 0}
    rundir.write_table(path, "histograms", pd.DataFrame({
        "t_ns": [1], "name": ["lifetime_ns"], "log2_bucket": [20], "count": [counted]}))
    rundir.write_meta(path, meta)
    return path


def report(*args):
    return subprocess.run([sys.executable, "-m", "spiketrace.cli", "report", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_no_transaction_has_no_first_transaction_time(tmp_path):
    """With no transaction, `first transaction at` was the boot time (t0 = 0 through the
    clock anchor) in the terminal, markdown and HTML reports."""
    path = healthy_trace(tmp_path / "run")
    proc = report(path)
    assert proc.returncode == 0, proc.stderr
    assert "first transaction" not in proc.stdout
    assert "first transaction" not in (path / "report.md").read_text()
    assert "first transaction</td><td>none" in (path / "report.html").read_text()


def test_a_drop_at_a_listener_is_not_said_to_have_found_no_socket():
    """A segment dropped by a listener (state LISTEN) with NO_SOCKET / TCP_FLAGS came after its
    accept queue overflowed: 'no socket was there (nothing listening ...)' contradicted the
    listener in the same line ('... in LISTEN')."""
    from common.vocab import describe_event

    names = {3: "NO_SOCKET", 30: "TCP_FLAGS"}
    for reason in names:
        ev = {"kind": "drop", "state": 10, "value": 0, "reason": reason, "side": "server"}
        text = describe_event(ev, drop_names=names)
        assert "nothing listening" not in text and "at the listener" in text, text
        assert "accept queue was full" in text and names[reason] in text
    elsewhere = describe_event({"kind": "drop", "state": 0, "value": 0, "reason": 3}, drop_names=names)
    assert "no socket was there" in elsewhere  # a port with no socket at all: as before


def test_the_stall_advice_is_given_only_where_it_is_not_already_followed():
    """nagle-delack sets --relative 0 --threshold 30ms itself; its report still advised 'use
    --relative 0 --threshold 30ms to explain each one' under 795 explained stalls."""
    from pathlib import Path

    from analysis import AnalysisOptions, analyse
    from common.rundir import RunDir

    run = RunDir.open(Path(__file__).resolve().parents[1] / "data" / "nagle-delack")
    advice = "use --relative 0 --threshold 30ms"
    assert any(advice in w for w in analyse(run).warnings)  # default rule: nothing explained
    followed = analyse(run, AnalysisOptions(threshold_ms=30, relative=0))
    assert len(followed.explanations) == 100
    assert not any(advice in w for w in followed.warnings)
