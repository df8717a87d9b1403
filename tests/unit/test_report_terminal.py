"""The terminal output never misleads: at 80 columns, wider, narrower, and when it is not a
terminal, no value is truncated (no `8.19-16…`, no two counters both shown as `TcpExt.Listen…`,
no fix command split mid-word); spikes carry their UTC time; a run without spikes says what was
measured, why nothing spiked and the one command that shows spikes; and no control character
from a run directory (comm names, paths, notes) reaches the terminal."""
from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from analysis import analyse
from analysis.report import data as report_data
from analysis.report import print_summary, write_reports
from analysis.report.terminal import fits, pack
from common.rundir import RunDir
from spiketrace.cli import main
from tests.helpers.synthetic import MS, S, SyntheticRun

GOLDEN = Path(__file__).resolve().parents[1] / "data"
EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x9b1m\r"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _summary(result, width: int) -> str:
    buf = io.StringIO()
    print_summary(result, Console(file=buf, width=width))
    return buf.getvalue()


def _values(data) -> list:
    """Every value cell the terminal shows (kept whole, unlike wrapping text)."""
    from common.vocab import fmt_ms

    out = [fmt_ms(v) for _, v in data.latency]
    for row in report_data.histogram_rows(data.trace):
        out += row[1:]
    out += [s.wall[11:] for s in data.spikes[:report_data.TERMINAL_SPIKES]]
    out += [fmt_ms(s.latency_ms) for s in data.spikes[:report_data.TERMINAL_SPIKES]]
    return [v for v in out if v]


@pytest.mark.parametrize("name", ["original-trace", "cpu-contention", "nagle-delack"])
@pytest.mark.parametrize("width", [60, 80, 120, 250])
def test_no_value_is_truncated_at_any_width(name, width):
    rd = RunDir.open(GOLDEN / name)
    result = analyse(rd)
    text = _summary(result, width)
    assert "…" not in text
    lines = text.splitlines()
    data = report_data.build(result, max_spikes=report_data.TERMINAL_SPIKES)
    for value in _values(data):
        assert any(value in line for line in lines), (value, width)
    for spike in data.spikes[:3]:  # each sentence is all there, wrapped at words
        assert " ".join(spike.sentence.split()) in " ".join(re.sub(r"[│┃]", " ", text).split())


def test_output_to_a_pipe_keeps_values_whole(capsys):
    """Not a terminal: rich's 80 columns. The histogram table falls back to one record per row."""
    code = main(["report", str(GOLDEN / "original-trace"), "--format", "terminal"])
    out = capsys.readouterr().out
    assert code is None and "…" not in out
    for value in ("8.19-16.4 us", "TcpExt.ListenOverflows", "runq_delay"):
        if value in out.replace("\n", " "):
            assert any(value in line for line in out.splitlines()), value


def test_explain_keeps_counter_names_whole_at_80_columns(tmp_path, capsys, monkeypatch):
    run = SyntheticRun(tmp_path / "run")
    run.normal(30)
    t = run.txn(connect_ms=1000.1)
    run.event("retransmit", t["t_start"] + S, t, state=2)
    run.counter("TcpExt.ListenOverflows", t["t_start"] - 30 * MS, 1)
    run.counter("TcpExt.ListenOverflows", t["t_start"] + 20 * MS, 2)
    run.counter("TcpExt.ListenDrops", t["t_start"] - 30 * MS, 1)
    run.counter("TcpExt.ListenDrops", t["t_start"] + 20 * MS, 2)
    path = run.write()
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["explain", str(path), str(t["id"])]) is None
    out = capsys.readouterr().out
    assert "…" not in out
    assert any("TcpExt.ListenOverflows 1 -> 2" in line for line in out.splitlines()), out
    assert any("TcpExt.ListenDrops 1 -> 2" in line for line in out.splitlines()), out


def test_doctor_fix_commands_are_whole_lines(monkeypatch):
    from spiketrace.commands.doctor import render
    from tracer.host import Check, Report

    fix = "apt install linux-headers-6.18.44-fc-v973-some-long-suffix   # exact ones, if they exist"
    report = Report(system=[Check("kernel headers", None, "generic-linked: linux-headers-6.1.0-57-amd64 (built "
                                  "for 6.1.192); BCC compiles, offsets come from BTF", fix)], probes=[])
    buf = io.StringIO()
    render(report, Console(file=buf, width=80))
    out = buf.getvalue()
    assert any(line.endswith(fix) for line in out.splitlines()), out  # one line, never split


def test_spikes_carry_their_utc_time(tmp_path, capsys):
    run = SyntheticRun(tmp_path / "run")
    run.normal(30)
    t = run.txn(connect_ms=1000.1)
    run.event("retransmit", t["t_start"] + S, t, state=2)
    rd = RunDir.open(run.write())
    result = analyse(rd)
    wall = rd.meta.wall_time(t["t_start"]).strftime("%H:%M:%S.%f")[:-3]
    day = rd.meta.wall_time(t["t_start"]).strftime("%Y-%m-%d")
    assert wall in _summary(result, 120) and day in _summary(result, 120)
    write_reports(rd, result, formats=["md", "html"])
    assert f"{day} {wall}" in (rd.path / "report.md").read_text()
    assert f"{day} {wall}" in (rd.path / "report.html").read_text()
    assert main(["explain", str(rd.path), str(t["id"])]) is None
    # (the terminal wraps lines at its width, and the run's path is in the first one)
    assert f"started {day} {wall} UTC" in " ".join(capsys.readouterr().out.split())


def test_a_run_without_spikes_says_what_was_measured_and_what_to_run(tmp_path, capsys):
    run = SyntheticRun(tmp_path / "run")
    run.meta.params["client"]["concurrency"] = 1  # the seed's serial client
    run.normal(200)
    path = run.write()
    assert main(["report", str(path)]) is None
    out = capsys.readouterr().out
    assert "No spikes: 200 transactions measured (median" in out and "slowest" in out
    assert "none passed the spike rule (>= 100 ms and > 10x median" in out
    assert "Why no spike: one serial client never has more than one connection waiting" in out
    assert "To see the original spikes explained: sudo spiketrace run --scenario listen-overflow -n " in out
    assert "TXN_ID" not in out and "spiketrace explain" not in out
    md = (path / "report.md").read_text()
    assert "No spikes: 200 transactions measured" in md


def test_no_control_character_from_the_run_reaches_the_terminal(tmp_path, capsys):
    base = tmp_path / f"runs{EVIL[:9]}"
    run = SyntheticRun(base / "run", scenario=EVIL)
    run.meta.notes = [EVIL]
    run.meta.command = ["spiketrace", EVIL]
    run.meta.kernel = EVIL
    run.meta.probes["retransmit"] = EVIL
    run.meta.drop_reasons = {"3": EVIL}
    run.normal(30)
    t = run.txn(connect_ms=1000.1)
    run.event("retransmit", t["t_start"] + S, t, state=2, comm=EVIL, pid=7)
    run.event("drop", t["t_start"] + MS, t, side="server", reason=3, comm=EVIL)
    path = run.write()
    assert main(["report", str(path)]) is None
    assert main(["explain", str(path), str(t["id"])]) is None
    out, err = capsys.readouterr()
    assert not CONTROL.search(out + err), repr(CONTROL.search(out + err))
    assert "\\x1b]0;owned\\x07" in out  # shown as what it is
    for name in ("report.md",):
        assert not CONTROL.search((path / name).read_text())
    # an error naming a file of the run: the same
    part = next((path / "events.parquet").glob("*.parquet"))
    shutil.copy(part, part.with_name(f"bad{EVIL[:5]}.parquet"))
    part.write_bytes(b"PAR1garbage")
    with pytest.raises(SystemExit):
        main(["report", str(path), "--force"])
    out, err = capsys.readouterr()
    assert err.startswith("spiketrace: ") and not CONTROL.search(err.rstrip("\n")), repr(err)


def test_helpers():
    assert pack(["a 1", "bb 22", "ccc 333"], 9) == ["a 1", "bb 22", "ccc 333"]
    assert pack(["a 1", "bb 22", "ccc 333"], 12) == ["a 1  bb 22", "ccc 333"]
    assert pack(["x" * 30], 10) == ["x" * 30]  # a value longer than the line stays whole
    from rich.table import Table

    t = Table()
    t.add_column("v", no_wrap=True, min_width=30)
    t.add_row("y" * 30)
    assert fits(t, 80) and not fits(t, 20)
