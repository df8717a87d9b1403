"""`spiketrace report`: analyse a run directory and write its reports (no root, no BPF)."""
from __future__ import annotations

from pathlib import Path

import click

from common.errors import SpikeTraceError
from common.text import printable
from common.vocab import LOG_FORMATS
from spiketrace.commands.params import Duration, Formats, Percentile, Relative

REPORT_FORMATS = ("terminal", "md", "html", "json", "parquet")


def analysis_options(f):
    """--threshold / --relative / --percentile, shared with `spiketrace run` and `explain`
    (values already checked: floats in ms, times the median, a percentile or None)."""
    f = click.option("--percentile", type=Percentile(), default=None,
                     help="Also require latency above this percentile (e.g. 99.9). Off by default.")(f)
    f = click.option("--relative", type=Relative(), default="10x", show_default=True,
                     help="Spike = more than N times the median latency (0 disables).")(f)
    f = click.option("--threshold", type=Duration("ms", lo=0), default="100ms", show_default=True,
                     help="Spike = latency at least this (e.g. 100ms, 1s, 250us; a bare number is "
                          "ms; 0 disables).")(f)
    return f


def make_options(threshold: float, relative: float, percentile):
    from analysis.options import AnalysisOptions

    return AnalysisOptions(threshold_ms=float(threshold), relative=float(relative),
                           percentile=None if percentile is None else float(percentile))


@click.command(name="report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@analysis_options
@click.option("--format", "formats", type=Formats(REPORT_FORMATS), default=",".join(REPORT_FORMATS),
              show_default=True, help="Comma-separated outputs: terminal, md, html, json, parquet.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the report files here instead of into the run directory.")
@click.option("--force", is_flag=True, help="Overwrite report files written before.")
@click.option("-t", "--transactions", "app_logs", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The application's own latency log (repeatable, one file per process): its "
                   "entries become the transactions, each matched to a kernel connection. CSV, "
                   "whitespace or tab separated with a header, JSON lines, or one duration in "
                   "seconds per line. See docs/your-application.md.")
@click.option("--ts-kind", type=click.Choice(["start", "end"]), default=None,
              help="Whether a `timestamp`/`ts`/`time` column marks the start (default) or the end "
                   "of an entry (`start`/`end` columns say it themselves).")
@click.option("--clock", type=click.Choice(["auto", "wall", "monotonic"]), default="auto",
              show_default=True,
              help="The application log's timestamps: wall clock (epoch or ISO 8601) or "
                   "CLOCK_MONOTONIC ns; auto picks the one that falls within the trace.")
@click.option("--match-window", type=Duration("ms", lo=0, lo_open=True, hi=3_600_000), default="100ms",
              show_default=True, help="How far an entry's start may be from its kernel connection's open.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
              help="Read every --transactions file in this format instead of telling it from its "
                   "first line (ab-g: ApacheBench -g; pgbench-l: pgbench -l; nginx-access / "
                   "apache-access: an access log with $request_time / %D last; see "
                   "docs/your-application.md).")
@click.option("--clock-offset", type=Duration("ms", lo=-3_600_000, hi=3_600_000), default=None,
              help="How far the log's clock is ahead of the kernel's (e.g. 6.5ms, -2ms), instead of "
                   "the offset estimated from its slow entries.")
@click.option("--idle", "include_idle", is_flag=True,
              help="Count connections that carried no request (connects the client abandoned, idle "
                   "spare connections) as spikes too; by default they are left out and counted.")
def command(run_dir: Path, threshold: float, relative: float, percentile, formats, out_dir, force: bool,
            app_logs, ts_kind, clock: str, match_window: float, log_format, clock_offset, include_idle: bool):
    """Analyse RUN_DIR and write its reports: report.html, report.md, summary.json and
    explanations.parquet (one row per slow transaction) into the run directory.

    A transaction is a spike when its latency passes every enabled test (--threshold,
    --relative, --percentile). Existing report files are kept unless --force is given.

    Transactions are the bench's records (`spiketrace run`), else, for `spiketrace trace`
    runs, every TCP connection the kernel recorded; with --transactions they are the
    application's own log entries, each matched to the kernel connection it used (by port and
    time, by time, or by order and duration) and explained from its kernel evidence.

    \b
    Examples:
      spiketrace report runs/20261126T140000Z-seed
      spiketrace report runs/X --threshold 50ms --relative 0 --force
      spiketrace report runs/X --format terminal           # print only, write nothing
      spiketrace report runs/X --percentile 99.9 --out /tmp/x-report
      spiketrace report runs/trace -t client.log           # one duration per line
      spiketrace report runs/trace -t app.csv --ts-kind end
      spiketrace report runs/trace -t ab.tsv --log-format ab-g --clock-offset 6.5ms
    """
    from rich.console import Console

    from analysis import analyse
    from analysis.report import (ReportWriteError, check_formats, output_paths, print_summary, report_exists,
                                 write_reports)
    from common.rundir import RunDir

    import dataclasses

    chosen = check_formats(formats)
    options = make_options(threshold, relative, percentile)
    options = dataclasses.replace(options, match_window_ms=match_window, include_idle=include_idle)
    if (log_format or clock_offset is not None) and not app_logs:
        raise SpikeTraceError("--log-format and --clock-offset apply to an application log: give it "
                              "with --transactions FILE")
    run = RunDir.open(run_dir)
    app_log = None
    if app_logs:
        from analysis.applog import read_app_log

        app_log = read_app_log(list(app_logs), ts_kind=ts_kind, clock=clock, log_format=log_format)
        if clock_offset is not None:
            app_log.clock_offset_ns = -int(round(clock_offset * 1e6))
    target = out_dir if out_dir is not None else run.path
    if not force:
        for path in output_paths(target, chosen).values():
            if report_exists(path):
                raise SpikeTraceError(f"{path} already exists (use --force to overwrite)")
    err = Console(stderr=True)
    with err.status(f"Analysing {printable(run.path)} ..."):
        result = analyse(run, options, app_log=app_log)
    out = Console()
    if "terminal" in chosen:
        print_summary(result, out)
    files = [f for f in chosen if f != "terminal"]
    if files:
        try:
            with err.status("Writing reports ..."):
                written = write_reports(run, result, formats=files, force=force, out_dir=out_dir)
        except ReportWriteError as exc:
            for path in exc.written:
                click.echo(f"Wrote {printable(path)}")
            if "terminal" not in chosen:
                raise
            raise SpikeTraceError(f"{exc}; the report above was printed only (write the files "
                                  "elsewhere with --out DIR, or print only with --format terminal)") from None
        for path in written:
            click.echo(f"Wrote {printable(path)}")
    if "terminal" in chosen or files:
        print_next_steps(run, result, app_log=app_log is not None)


def print_next_steps(run, result, app_log: bool = False) -> None:
    """The command to type next: the worst spike's timeline, or, with no spike, why none and
    the command that shows spikes explained (never a placeholder id)."""
    from spiketrace.scenarios import advice_without_spikes

    if len(result.explanations):
        if not app_log:
            worst = int(result.explanations["txn_id"].iloc[0])
            click.echo(f"Next: spiketrace explain {printable(run.path)} {worst}   # the worst spike's timeline")
        return
    for line in advice_without_spikes(run.meta):
        click.echo(line)  # not wrapped: a command stays one line to copy
