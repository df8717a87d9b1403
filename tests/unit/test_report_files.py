"""Report files from one computed result: terminal, report.md, summary.json,
explanations.parquet; overwrite protection; the `report` and `explain` commands."""
from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from analysis import analyse
from analysis.report import print_summary, write_reports
from common import rundir
from spiketrace.commands.explain import command as explain_cmd
from spiketrace.commands.report import command as report_cmd
from common.errors import SpikeTraceError
from common.rundir import RunDir
from tests.helpers.synthetic import MS, S, SyntheticRun


@pytest.fixture
def run_path(tmp_path):
    run = SyntheticRun(tmp_path / "run", lost_events=3)
    run.normal(40)
    t = run.txn(connect_ms=1000.1)
    run.event("retransmit", t["t_start"] + S, t, state=2)
    run.counter("TcpExt.ListenOverflows", t["t_start"] - 30 * MS, 1)
    run.counter("TcpExt.ListenOverflows", t["t_start"] + 20 * MS, 2)
    t = run.txn(ex1_ms=150.2)
    run.event("runq_delay", t["t_connected"] + 150 * MS, None, pid=run.client_pid, comm="python3", value=149 * MS)
    run.ground_truth("syn_drop", run.txns[40]["t_start"] + 1000, sport=run.txns[40]["local_port"])
    run.normal(10, seed=5)
    return run.write()


def test_all_reports_from_one_result(run_path):
    run = RunDir.open(run_path)
    result = analyse(run)
    written = write_reports(run, result)
    assert [p.name for p in written] == ["report.md", "report.html", "summary.json", "explanations.parquet"]

    summary = json.loads((run_path / "summary.json").read_text())
    assert summary["counts"]["spikes"] == 2 and summary["counts"]["lost_events"] == 3
    assert {c["cause"] for c in summary["causes"]} == {"syn_retransmit", "runq_delay"}
    assert summary["accuracy"][0]["cause"] == "syn_retransmit" and summary["accuracy"][0]["recall"] == 1.0

    md = (run_path / "report.md").read_text()
    assert "| lost events | 3 |" in md and "3 kernel events were lost" in md
    assert "ListenOverflows +1" in md and "## Attribution vs ground truth" in md

    expl = RunDir.open(run_path).table("explanations")
    assert list(expl.columns) == rundir.SCHEMAS["explanations"].names
    assert sorted(expl["cause"]) == ["runq_delay", "syn_retransmit"]
    assert all(len(e) >= 1 for e in expl["evidence_events"])

    buf = io.StringIO()
    print_summary(result, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "Spikes by cause" in text and "3 lost" in text and "Attribution vs ground truth" in text
    assert "retransmit=tracepoint" in text


def test_reports_are_not_overwritten_without_force(run_path):
    run = RunDir.open(run_path)
    result = analyse(run)
    write_reports(run, result, formats=["md"])
    before = (run_path / "report.md").read_text()
    with pytest.raises(SpikeTraceError, match=r"report\.md already exists \(use --force"):
        write_reports(run, result, formats=["md", "json"])
    assert not (run_path / "summary.json").exists()  # refused before writing anything
    write_reports(run, result, formats=["md"], force=True)
    assert (run_path / "report.md").read_text() == before


def test_report_command_writes_and_refuses_again(run_path):
    runner = CliRunner()
    res = runner.invoke(report_cmd, [str(run_path), "--format", "terminal,md,json"])
    assert res.exit_code == 0, res.output
    assert f"Wrote {run_path / 'report.md'}" in res.output and f"Wrote {run_path / 'summary.json'}" in res.output
    assert "spiketrace explain" in res.output
    res = runner.invoke(report_cmd, [str(run_path), "--format", "md"])
    assert isinstance(res.exception, SpikeTraceError) and "--force" in str(res.exception)
    res = runner.invoke(report_cmd, [str(run_path), "--format", "md", "--force", "--threshold", "50ms"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(report_cmd, [str(run_path), "--threshold", "fast"])
    assert res.exit_code == 2 and "'fast' is not a duration" in res.output  # refused while parsing
    res = runner.invoke(report_cmd, [str(run_path), "--format", "pdf"])
    assert res.exit_code == 2 and "unknown format pdf" in res.output


def test_explain_shows_phases_and_kernel_events_side_by_side(run_path):
    run = RunDir.open(run_path)
    slow_id = int(run.table("transactions")["id"].iloc[40])
    res = CliRunner().invoke(explain_cmd, [str(run_path), str(slow_id)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    out = res.output
    for text in ("connect() returned", "accept() returned", "SYN retransmit (client side)",
                 "TcpExt.ListenOverflows 1 -> 2", "syn_retransmit (listen_overflow)", "1000.000"):
        assert text in out, text
    res = CliRunner().invoke(explain_cmd, [str(run_path), "99999"])
    assert isinstance(res.exception, SpikeTraceError) and "no transaction with id 99999" in str(res.exception)


def test_cli_help_has_examples():
    for cmd in (report_cmd, explain_cmd):
        res = CliRunner().invoke(cmd, ["--help"])
        assert res.exit_code == 0 and "Examples:" in res.output


def test_report_out_dir_leaves_the_run_directory_untouched(run_path, tmp_path):
    before = sorted(p.name for p in run_path.iterdir())
    out = tmp_path / "elsewhere"
    res = CliRunner().invoke(report_cmd, [str(run_path), "--format", "html,parquet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in run_path.iterdir()) == before
    assert (out / "report.html").is_file() and any((out / "explanations.parquet").glob("*.parquet"))
