"""`spiketrace report`: analyse a run directory and write its reports (no root, no BPF)."""
from __future__ import annotations

from pathlib import Path

import click

from common.errors import SpikeTraceError


def analysis_options(f):
    """--threshold / --relative / --percentile, shared with `spiketrace explain`."""
    f = click.option("--percentile", default=None, metavar="P",
                     help="Also require latency above this percentile (e.g. 99.9). Off by default.")(f)
    f = click.option("--relative", default="10x", show_default=True, metavar="Nx",
                     help="Spike = more than N times the median latency (0 disables).")(f)
    f = click.option("--threshold", default="100ms", show_default=True, metavar="DURATION",
                     help="Spike = latency at least this (e.g. 100ms, 1s; 0 disables).")(f)
    return f


def make_options(threshold: str, relative: str, percentile):
    from analysis.options import AnalysisOptions, parse_duration_ms, parse_percentile, parse_relative

    return AnalysisOptions(threshold_ms=parse_duration_ms(threshold), relative=parse_relative(relative),
                           percentile=parse_percentile(percentile) if percentile is not None else None)


@click.command(name="report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@analysis_options
@click.option("--format", "formats", default="terminal,md,html,json,parquet", show_default=True,
              help="Comma-separated outputs: terminal, md, html, json, parquet.")
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
@click.option("--match-window", default="100ms", show_default=True, metavar="DURATION",
              help="How far an entry's start may be from its kernel connection's open.")
def command(run_dir: Path, threshold: str, relative: str, percentile, formats: str, out_dir, force: bool,
            app_logs, ts_kind, clock: str, match_window: str):
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
    """
    from rich.console import Console

    from analysis import analyse
    from analysis.report import check_formats, output_paths, print_summary, report_exists, write_reports
    from common.rundir import RunDir

    import dataclasses

    from analysis.options import parse_duration_ms

    chosen = check_formats(formats.split(","))
    options = make_options(threshold, relative, percentile)
    options = dataclasses.replace(options, match_window_ms=parse_duration_ms(match_window))
    run = RunDir.open(run_dir)
    app_log = None
    if app_logs:
        from analysis.applog import read_app_log

        app_log = read_app_log(list(app_logs), ts_kind=ts_kind, clock=clock)
    target = out_dir if out_dir is not None else run.path
    if not force:
        for path in output_paths(target, chosen).values():
            if report_exists(path):
                raise SpikeTraceError(f"{path} already exists (use --force to overwrite)")
    err = Console(stderr=True)
    with err.status(f"Analysing {run.path} ..."):
        result = analyse(run, options, app_log=app_log)
    if "terminal" in chosen:
        print_summary(result, Console())
    files = [f for f in chosen if f != "terminal"]
    if files:
        with err.status("Writing reports ..."):
            written = write_reports(run, result, formats=files, force=force, out_dir=out_dir)
        for path in written:
            click.echo(f"Wrote {path}")
    if len(result.explanations) and app_log is None:
        worst = int(result.explanations["txn_id"].iloc[0])
        click.echo(f"Next: spiketrace explain {run.path} {worst}   # the worst spike's timeline")
