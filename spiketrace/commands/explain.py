"""`spiketrace explain`: the full timeline of one transaction (no root, no BPF)."""
from __future__ import annotations

from pathlib import Path

import click

from spiketrace.commands.report import analysis_options, make_options

COLUMNS = ("client", "server", "kernel", "counter")


@click.command(name="explain")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("txn_id", type=int)
@analysis_options
def command(run_dir: Path, txn_id: int, threshold: str, relative: str, percentile):
    """Show the timeline of transaction TXN_ID of RUN_DIR: the client's and the server's phases
    and the kernel events and counter changes joined to it, side by side in milliseconds from
    its start, then its explanation.

    \b
    Examples:
      spiketrace explain runs/20261126T140000Z-seed 4711
      spiketrace report runs/X --format terminal   # find the slow ones first
    """
    from rich.console import Console
    from rich.markup import escape as rich_escape
    from rich.table import Table

    from common.text import printable

    def escape(text) -> str:  # rich markup escaped, and no control character from the run
        return rich_escape(printable(text))

    from common.vocab import fmt_ns
    from analysis.report.terminal import fits
    from analysis.timeline import explain_transaction
    from common.rundir import RunDir

    run = RunDir.open(run_dir)
    console = Console()
    with Console(stderr=True).status(f"Joining the evidence of transaction {txn_id} ..."):
        tl = explain_transaction(run, txn_id, make_options(threshold, relative, percentile))
    t = tl.txn
    started = ""
    if run.meta.clock_wall_ns > 0 and run.meta.clock_monotonic_ns > 0:  # the clock anchor: UTC
        from analysis.report.data import wall_text

        started = f" started {wall_text(run.meta.clock_wall_ns + int(t['t_start']) - run.meta.clock_monotonic_ns)} UTC,"
    console.print(f"[bold]Transaction {t['id']}[/] of {escape(str(run.path))}: {fmt_ns(t['latency_ns'])},{started} "
                  f"outcome {escape(t['outcome'])}, client {escape(t['local_addr'])}:{t['local_port']} "
                  f"-> {escape(t['remote_addr'])}:{t['remote_port']}, pid {t['pid']}, worker {t['worker']}")
    table = Table(header_style="bold", show_lines=False)
    table.add_column("+ms", justify="right", no_wrap=True)
    for col in COLUMNS:
        table.add_column(col)  # wraps at words; a word too long for it makes `fits` fail
    for row in tl.rows:
        cells = ["" for _ in COLUMNS]
        cells[COLUMNS.index(row["column"])] = escape(row["text"])  # wraps at words
        table.add_row(f"{row['t_rel_ns'] / 1e6:.3f}", *cells)
    if not fits(table, console.width):  # too narrow to go side by side: one column, named
        table = Table(header_style="bold", show_lines=False)
        table.add_column("+ms", justify="right", no_wrap=True)
        table.add_column("side", no_wrap=True)
        table.add_column("event", overflow="fold")
        for row in tl.rows:
            table.add_row(f"{row['t_rel_ns'] / 1e6:.3f}", row["column"], escape(row["text"]))
    console.print(table)
    if tl.phases:
        console.print("[bold]Phases:[/] " + ", ".join(f"{escape(n)} {fmt_ns(v)}{escape(x)}" for n, v, x in tl.phases))
    e = tl.explanation
    if not tl.slow:
        console.print(f"Not a spike: {fmt_ns(t['latency_ns'])} is under the spike threshold "
                      f"({fmt_ns(tl.threshold_ns)}; see --threshold, --relative).")
    if e is not None and (tl.slow or e["cause"] != "unexplained"):
        label = "Why it was slow" if tl.slow else "Its delays"
        cause = e["cause"] + (f" ({e['cause_detail']})" if e["cause_detail"] else "")
        console.print(f"[bold]{label}:[/] {escape(cause)}")
        console.print(escape(str(e["sentence"])))
        shares = [(c[:-3], e[c]) for c in e if c.endswith("_ns") and c not in
                  ("latency_ns", "explained_ns", "rest_ns") and e[c] > 0]
        if shares:
            console.print("Shares: " + ", ".join(f"{escape(n)} {fmt_ns(v)}" for n, v in sorted(shares, key=lambda x: -x[1]))
                          + f", rest {fmt_ns(e['rest_ns'])}")
    for w in tl.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
