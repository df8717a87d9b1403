"""`spiketrace run`: bench + tracing + analysis + report in one command."""
from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from spiketrace.commands.params import Duration, Number
from spiketrace.commands.report import analysis_options, make_options

# CLI option -> (which side of the bench it configures, its field name)
BENCH_FIELDS = {
    "n": ("client", "n"), "concurrency": ("client", "concurrency"), "payload": ("client", "payload"),
    "rate": ("client", "rate"), "connect_retry": ("client", "connect_retry"),
    "nodelay": ("client", "nodelay"), "split_writes": ("client", "split_writes"),
    "port": ("server", "port"), "backlog": ("server", "backlog"), "linger": ("server", "linger"),
    "model": ("server", "model"), "think_ms": ("server", "think_ms"),
}


@click.command(name="run")
@click.option("-n", "n", type=click.IntRange(min=1, max=1_000_000_000), default=None,
              help="Transactions to make (default: the scenario's, see `spiketrace scenarios`; "
                   "1,000,000 for seed, as the original).")
@click.option("-s", "--scenario", default="seed", show_default=True,
              help="Fault scenario (see `spiketrace scenarios`).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Client worker processes.")
@click.option("--payload", type=click.IntRange(min=1, max=16 * 1024 * 1024), default=3000,
              show_default=True, help="Request size in bytes.")
@click.option("--rate", type=Number(lo=0, lo_open=True, hi=1e6, unit="/s"), default=None,
              help="Open loop: start this many transactions per second (latency from the scheduled start).")
@click.option("--connect-retry", type=click.Choice(["busy", "backoff"]), default="busy", show_default=True,
              help="On a failed connect: retry at once (as the original) or back off.")
@click.option("--nodelay", is_flag=True, help="Set TCP_NODELAY on the client.")
@click.option("--split-writes", is_flag=True, help="Send each request as two writes (Nagle/delayed ACK).")
@click.option("--port", type=click.IntRange(1, 65535), default=9999, show_default=True,
              help="Server port (inside the run's own network namespace).")
@click.option("--backlog", type=click.IntRange(min=0, max=65535), default=1, show_default=True,
              help="listen() backlog of the server.")
@click.option("--linger/--no-linger", default=True, show_default=True,
              help="SO_LINGER {1,0} on the server's listening socket, as the original.")
@click.option("--model", type=click.Choice(["blocking", "threaded", "epoll"]), default="blocking",
              show_default=True, help="Server model.")
@click.option("--think-ms", type=Duration("ms", lo=0, hi=60_000), default="0", show_default=True,
              help="Server delay before each accept() (ms, or e.g. 5ms, 0.2s).")
@analysis_options
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/<UTC time>-<scenario>).")
@click.option("--force", is_flag=True, help="Reuse a non-empty --out directory.")
@click.option("--no-report", is_flag=True, help="Record only; analyse later with `spiketrace report`.")
@click.pass_context
def command(ctx, scenario, out, force, threshold, relative, percentile, no_report, **bench):
    """Run the echo bench in its own network namespace under the tracer, then explain every
    spike (slower than --threshold and --relative) and write the reports.

    Defaults reproduce the original question: a serial client making connect / send 3,000 bytes /
    echo / send / echo / close transactions against a single-threaded server with listen(1) and
    SO_LINGER {1,0}. A scenario sets its own defaults (transactions, bench options, the spike
    rule it needs); options you give win. Durations take 100ms, 1.5s, 250us or a bare number.

    \b
    Examples:
      sudo spiketrace run --scenario listen-overflow -n 20000   # the original's spikes, ~15 s
      sudo spiketrace run -n 1000000                 # the original workload (no spike here)
      sudo spiketrace run --scenario syn-loss        # its own -n (see `spiketrace scenarios`)
      sudo spiketrace run -n 10000 --no-report -o runs/mine
      sudo spiketrace run -n 500 --scenario nagle-delack --threshold 45ms
    """
    from rich.console import Console

    from spiketrace import orchestrate
    from spiketrace.commands.progress import transaction_progress
    from spiketrace.commands.report import print_next_steps
    from spiketrace.scenarios import get_scenario

    sc = get_scenario(scenario)  # an unknown name fails before anything is set up
    given = {name for name in ("threshold", "relative") if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    if "threshold" not in given:
        threshold = sc.analysis.get("threshold_ms", threshold)
    if "relative" not in given:
        relative = sc.analysis.get("relative", relative)
    analysis_opts = make_options(threshold, relative, percentile)
    explicit = {name: value for name, value in bench.items()
                if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    opts = orchestrate.RunOptions(scenario=scenario, out=out, force=force, threshold_ms=analysis_opts.threshold_ms,
                                  analyse=not no_report)
    for name, value in explicit.items():
        side, field = BENCH_FIELDS[name]
        getattr(opts, side)[field] = value
    if "n" not in explicit:
        opts.client["n"] = sc.n
    orchestrate.check_options(opts)  # bad values fail before the namespace and the BPF programs

    console = Console(stderr=True)
    with transaction_progress(console) as progress:
        outcome = orchestrate.run(opts, on_progress=progress.update, on_stage=progress.stage)

    console.print(f"{outcome.status}: {outcome.transactions:,} transactions in {outcome.elapsed_s:.1f} s "
                  f"(bench {outcome.bench_elapsed_s:.1f} s), lost events: {outcome.lost_events}")
    if no_report:
        click.echo(f"Wrote {outcome.run_dir}")
        click.echo(f"Next: spiketrace report {outcome.run_dir}")
        if outcome.status != "complete":
            ctx.exit(130)
        return
    from analysis import analyse
    from analysis.report import print_summary, write_reports
    from common.rundir import RunDir

    run = RunDir.open(outcome.run_dir)
    with console.status("analysing"):
        result = analyse(run, analysis_opts)
    out_console = Console()
    print_summary(result, out_console)
    for path in write_reports(run, result, force=True):
        click.echo(f"Wrote {path}")
    print_next_steps(run, result)
    if outcome.status != "complete":
        ctx.exit(130)
