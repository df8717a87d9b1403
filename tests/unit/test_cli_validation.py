"""Bad input is refused while the command line is parsed, before any side effect, as one line;
and every command reads durations the same way (`100ms`, `1.5s`, `250us`, `2m`, or a bare
number in the option's unit, as before)."""
from __future__ import annotations

import math

import click
import pytest

from common.errors import SpikeTraceError
from spiketrace.cli import cli, main
from spiketrace.commands.params import Duration, Number

BAD_NUMBERS = ("nan", "NaN", "inf", "-inf", "1e30", "-1")

# command line prefix -> its float options (every one of them: test_no_float_option_escapes
# checks that no other exists)
FLOAT_OPTIONS = {
    ("run",): ("--think-ms", "--rate", "--threshold", "--relative", "--percentile"),
    ("report", "RUN"): ("--threshold", "--relative", "--percentile", "--match-window"),
    ("explain", "RUN", "1"): ("--threshold", "--relative", "--percentile"),
    ("bench", "server"): ("--think-ms", "--duration"),
    ("bench", "client"): ("--rate", "--connect-timeout"),
}
CASES = [(prefix, opt, bad) for prefix, opts in FLOAT_OPTIONS.items() for opt in opts for bad in BAD_NUMBERS
         if not (opt == "--percentile" and bad == "1e30")] + [
    (("report", "RUN"), "--percentile", "100"), (("run",), "--threshold", "fast"),
    (("bench", "server"), "--duration", "0"), (("bench", "client"), "--connect-timeout", "0s")]


def _main(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("prefix, option, bad", CASES)
def test_bad_float_values_are_one_line_before_anything_runs(capsys, tmp_path, prefix, option, bad):
    out_dir = tmp_path / "out"
    argv = [str(tmp_path) if a == "RUN" else a for a in prefix] + [option, bad]
    if prefix[0] in ("run", "bench"):
        argv += ["--out", str(out_dir)]
    if prefix == ("bench", "server") and option != "--duration":
        argv += ["--duration", "1", "--port", "0"]  # a regression must not serve forever
    code, out, err = _main(capsys, argv)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spiketrace: invalid value for '"), err
    assert option in lines[0] and "Traceback" not in err
    assert not out_dir.exists()  # nothing was created


@pytest.mark.parametrize("argv, option, expected", [
    (["run", "--threshold", "100ms"], "threshold", 100.0), (["run", "--threshold", "0.1s"], "threshold", 100.0),
    (["run", "--threshold", "100"], "threshold", 100.0), (["run", "--threshold", "250us"], "threshold", 0.25),
    (["run", "--think-ms", "5"], "think_ms", 5.0), (["run", "--think-ms", "0.005s"], "think_ms", 5.0),
    (["run", "--relative", "5x"], "relative", 5.0), (["run", "--percentile", "p99.9"], "percentile", 99.9),
    (["report", "X", "--match-window", "0.2s"], "match_window", 200.0),
    (["explain", "X", "1", "--threshold", "1.5s"], "threshold", 1500.0),
    (["bench", "server", "--duration", "60"], "duration", 60.0),
    (["bench", "server", "--duration", "1m"], "duration", 60.0),
    (["bench", "server", "--duration", "90s"], "duration", 90.0),
    (["bench", "server", "--think-ms", "2ms"], "think_ms", 2.0),
    (["bench", "client", "--connect-timeout", "0.3"], "connect_timeout", 0.3),
    (["bench", "client", "--connect-timeout", "300ms"], "connect_timeout", 0.3),
    (["bench", "client", "--rate", "2e3"], "rate", 2000.0),
])
def test_one_duration_syntax_everywhere(argv, option, expected):
    ctx = _context(argv)
    assert math.isclose(ctx.params[option], expected), ctx.params[option]


def test_default_values_go_through_the_same_types():
    assert _context(["run"]).params["threshold"] == 100.0
    assert _context(["bench", "client"]).params["connect_timeout"] == 10.0
    assert _context(["report", "X"]).params["formats"] == ["terminal", "md", "html", "json", "parquet"]


@pytest.mark.parametrize("fmt", ["", ",", " , "])
def test_empty_format_is_refused(capsys, tmp_path, fmt):
    code, out, err = _main(capsys, ["report", str(tmp_path), "--format", fmt])
    assert code == 2 and "give at least one of terminal, md, html, json, parquet" in err
    assert list(tmp_path.iterdir()) == []


def test_no_float_option_escapes_the_shared_types():
    """Every float-valued option of every command is a Duration or a Number (finite, in range)."""
    loose = []
    for path, param in _all_options():
        if isinstance(param.type, (click.types.FloatParamType, click.FloatRange)):
            loose.append(f"{' '.join(path)} {param.opts[0]}")
    assert loose == [], f"plain float options (NaN and inf pass): {loose}"


@pytest.mark.parametrize("argv", [["trace", "--threshold", "1e30"], ["trace", "--threshold", "nan"],
                                  ["trace", "-d", "inf"], ["trace", "--summary-interval", "nan"]])
def test_trace_refuses_bad_values_while_parsing(capsys, argv):
    code, out, err = _main(capsys, argv + ["--print-bpf"])  # --print-bpf: no probe even if accepted
    assert code == 2 and err.startswith("spiketrace: invalid value for")


def test_trace_reads_the_shared_duration_syntax():
    assert _context(["trace", "--threshold", "100ms", "-d", "10s"]).params["duration_s"] == 10.0


def test_the_library_checks_a_run_before_setting_anything_up(tmp_path, monkeypatch):
    """`orchestrate.run` refuses bad bench values before root checks, namespaces and BPF."""
    from spiketrace import orchestrate

    def no_tracing(what):
        raise AssertionError("reached the tracing checks with a bad option")

    monkeypatch.setattr("tracer.host.require_tracing", no_tracing)
    out = tmp_path / "run"
    for bad in ({"client": {"rate": float("nan")}}, {"client": {"rate": float("inf")}},
                {"server": {"think_ms": float("nan")}}, {"server": {"duration_s": float("inf")}},
                {"client": {"connect_timeout_s": float("nan")}}, {"client": {"flush_interval_s": 0.0}},
                {"client": {"no_such_option": 1}}, {"threshold_ms": float("nan")}):
        opts = orchestrate.RunOptions(out=out, **{k: v for k, v in bad.items() if k == "threshold_ms"})
        for side in ("client", "server"):
            getattr(opts, side).update(bad.get(side, {}))
        with pytest.raises(SpikeTraceError):
            orchestrate.run(opts)
        assert not out.exists()


def test_types_refuse_what_they_should():
    d = Duration("ms", lo=0, hi=1000)
    for bad in ("nan", "inf", "1e400", "-1ms", "2s", "abc", "10 parsecs", ""):
        with pytest.raises(click.BadParameter):
            d.convert(bad, None, None)
    assert d.convert("1s", None, None) == 1000 and d.convert(" 2.5 ms ", None, None) == 2.5
    n = Number(lo=0, lo_open=True)
    for bad in ("0", "nan", "-inf", "1,5"):
        with pytest.raises(click.BadParameter):
            n.convert(bad, None, None)


def _context(argv):
    ctx = click.Context(cli, info_name="spiketrace")
    cmd, args = cli, list(argv)
    while isinstance(cmd, click.Group):
        name = args.pop(0)
        ctx = click.Context(cmd, info_name=name, parent=ctx)
        cmd = cmd.get_command(ctx, name)
    return cmd.make_context(argv[-1], args, parent=ctx)


def _all_options():
    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                yield from walk(cmd.get_command(ctx, name), path + (name,))
            return
        for param in cmd.params:
            if isinstance(param, click.Option):
                yield path, param
    yield from walk(cli, ())
