"""`spiketrace report --transactions FILE`: the application's own log, read in its documented
formats and matched to the kernel's connections (by port and time, by time, by order), so the
report's spikes are the application's slow entries, each explained."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from analysis import analyse
from analysis.applog import read_app_log
from spiketrace.commands.report import command as report_cmd
from common.errors import SpikeTraceError
from common.rundir import RunDir
from tests.helpers.trace_synthetic import MS, S, US, ClosedLoopApp, TraceRun

SPIKES = {(0, 30): 1.0, (0, 31): 1.0, (0, 200): 2.0, (1, 5): 1.0, (1, 250): 1.0}


@pytest.fixture
def traced(tmp_path):
    app = ClosedLoopApp(workers=2, n=300, spikes=SPIKES)
    run = TraceRun(tmp_path / "run")
    app.record(run)
    run.write()
    return app, run


def _logs(app, run, tmp_path, fmt):
    offset = run.meta.clock_wall_ns - run.meta.clock_monotonic_ns
    return [app.write_log(tmp_path / f"w{w}.{fmt}", w, fmt, mono_to_wall=offset) for w in range(2)]


def _spikes(app):
    d = app.df[app.df["spike"]]
    return sorted(zip(d["worker"], d["i"]))


def _matched(result, app):
    """(worker, index) of each spike, and whether its kernel connection is the right one."""
    expl = result.explanations
    txn = result.context.frames.txn
    out = []
    for r in expl.itertuples():
        row = app.df.iloc[int(r.txn_id)]
        out.append(((int(row.worker), int(row.i)), int(txn.loc[r.txn_id, "local_port"]) == int(row.port)))
    return sorted(out)


@pytest.mark.parametrize("fmt, how", [("verbose", {"port"}), ("csv", {"unique", "ambiguous"}),
                                      ("jsonl", {"unique", "ambiguous"}), ("mono", {"unique", "ambiguous"}),
                                      ("plain", {"order"})])
def test_every_slow_entry_is_matched_to_its_connection_and_explained(traced, tmp_path, fmt, how):
    app, run = traced
    logs = _logs(app, run, tmp_path, fmt)
    result = analyse(RunDir.open(run.path), app_log=read_app_log(logs))
    expl = result.explanations
    assert [w for w, _ in _matched(result, app)] == _spikes(app)  # the app's slow entries, no more
    assert all(ok for _, ok in _matched(result, app))  # each with the connection it really used
    assert set(expl["match"]) <= how
    assert set(expl["cause"]) == {"syn_retransmit"} and set(expl["cause_detail"]) == {"listen_overflow"}
    assert result.summary["run"]["source"] == "app_log"
    assert result.summary["counts"]["transactions"] == 600
    if fmt != "plain":
        assert (expl["match_distance_ns"] < 1 * MS).all()
    lines = {int(s.split(":")[1]) for s in expl["source"]}
    header = 0 if fmt in ("plain", "jsonl") else 1
    assert lines == {i + 1 + header for _, i in _spikes(app)}


def test_a_fast_entry_is_not_matched_to_another_clients_slow_connection(tmp_path):
    """By time only, a slow connection opened next to a fast entry of another worker must go to
    the entry that lasted as long as it did."""
    app = ClosedLoopApp(workers=3, n=200, spikes={(0, 100): 1.0})
    run = TraceRun(tmp_path / "run")
    app.record(run)
    run.write()
    logs = _logs(app, run, tmp_path, "csv")
    result = analyse(RunDir.open(run.path), app_log=read_app_log(logs))
    txn = result.context.frames.txn
    assert (txn["match"] != "none").sum() == 1
    assert _matched(result, app) == [((0, 100), True)]


def test_port_given_but_not_recorded_matches_nothing(traced, tmp_path):
    """A port that no kernel connection has (a fast connection: never sent) is no match, and
    time alone is not tried for it."""
    app, run = traced
    logs = _logs(app, run, tmp_path, "verbose")
    result = analyse(RunDir.open(run.path), app_log=read_app_log(logs))
    txn = result.context.frames.txn
    assert (txn["match"] == "port").sum() == len(_spikes(app))
    assert (txn["match"] == "none").sum() == 600 - len(_spikes(app))


def test_formats_and_errors(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("0.001\n\n# comment\n1.02\nConnection refused\n0.0004\n")
    log = read_app_log([p])
    assert log.entries["duration_ns"].tolist() == [1_000_000, 1_020_000_000, 400_000]
    assert log.entries["line"].tolist() == [1, 4, 6] and log.formats == ["plain"]
    assert "skipped 1 line" in log.warnings[0] and "line 5" in log.warnings[0]

    p.write_text("ts\tlatency_us\tlocal_port\n1795000000.5\t1500\t41000\n")
    log = read_app_log([p], ts_kind="end")
    e = log.entries.iloc[0]
    assert (e["duration_ns"], e["ts_kind"], e["local_port"], log.formats) == (1_500_000, "end", 41000, ["tsv"])

    p.write_text('{"start": "2026-11-26T14:00:00.25Z", "end": "2026-11-26T14:00:01.5Z"}\n')
    e = read_app_log([p]).entries.iloc[0]
    assert e["duration_ns"] == 1_250_000_000 and e["ts_kind"] == "start"

    for text, msg in (("start,port\n1,2\n", "no duration column"), ("1.0 2.0\n", "Add a header"),
                      ("\n# only a comment\n", "empty"), ('{"duration_s": 1}\n[1]\n', "not a JSON object")):
        p.write_text(text)
        with pytest.raises(SpikeTraceError, match=msg):
            read_app_log([p])
    with pytest.raises(SpikeTraceError, match="no such file"):
        read_app_log([tmp_path / "missing.log"])


def test_timestamps_outside_the_trace_are_refused(traced, tmp_path):
    app, run = traced
    p = tmp_path / "far.csv"
    p.write_text("start,duration_s\n1000000000,0.5\n1000000001,0.5\n")  # 2001
    with pytest.raises(SpikeTraceError, match="do not fall within the trace"):
        analyse(RunDir.open(run.path), app_log=read_app_log([p]))


def test_report_command_with_transactions(traced, tmp_path):
    app, run = traced
    logs = _logs(app, run, tmp_path, "verbose")
    res = CliRunner().invoke(report_cmd, [str(run.path), "-t", str(logs[0]), "-t", str(logs[1])])
    assert res.exit_code == 0, res.output
    expl = RunDir.open(run.path).table("explanations")
    assert len(expl) == len(_spikes(app)) and set(expl["match"]) == {"port"}
    assert all(s.startswith(("w0.verbose:", "w1.verbose:")) for s in expl["source"])
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["app_log"]["by_match"]["port"] == len(_spikes(app))
    assert summary["app_log"]["spikes_unmatched"] == 0
    md = (run.path / "report.md").read_text()
    assert "w0.verbose:" in md and "port, " in md and "application log: 2 file(s)" in md
    res = CliRunner().invoke(report_cmd, [str(run.path), "-t", str(tmp_path / "nope.log"), "--force"])
    assert isinstance(res.exception, SpikeTraceError) and "no such file" in str(res.exception)


def test_order_matching_keeps_only_alignments_consistent_in_time(traced, tmp_path):
    """Worker 0's spikes 30 and 31 are back to back; a log claiming 10 s of other entries between
    them cannot be the process whose connections opened ~1 s apart."""
    app, run = traced
    p = tmp_path / "other.log"
    p.write_text("1.02\n" + "0.001\n" * 10_000 + "1.02\n")
    result = analyse(RunDir.open(run.path), app_log=read_app_log([p]))
    assert result.summary["app_log"]["by_match"].get("order", 0) == 1


def test_a_server_log_is_matched_by_its_peers_port(traced, tmp_path):
    """A server logs its own port as local_port and the client's as remote_port."""
    app, run = traced
    offset = run.meta.clock_wall_ns - run.meta.clock_monotonic_ns
    d = app.df[app.df["worker"] == 1]
    p = tmp_path / "server.csv"
    p.write_text("start,duration_ms,local_port,remote_port\n" + "".join(
        f"{(s + 80_000 + offset) / 1e9!r},{(dur - 100_000) / 1e6},9999,{port}\n"
        for s, dur, port in zip(d["start"], d["duration"], d["port"])))
    result = analyse(RunDir.open(run.path), app_log=read_app_log([p]))
    expl = result.explanations
    assert sorted(expl["local_port"]) == sorted(d[d["spike"]]["port"])
    assert set(expl["match"]) == {"port"} and set(expl["cause"]) == {"syn_retransmit"}
