"""The terminal summary (rich): counts, percentiles, spikes by cause, accuracy, lost events,
probe backends, warnings and the worst spikes."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.vocab import fmt_ms as format_ms
from analysis.report.data import (HISTOGRAM_HEADER, HISTOGRAM_NOTE, TERMINAL_SPIKES, ReportData, source_lines,
                                  histogram_rows, match_text)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render(data: ReportData, console: Console) -> None:
    c = data.counts
    run = data.run
    console.print(f"[bold]{escape(run['path'])}[/]  scenario {escape(str(run['scenario']))}, "
                  f"recorded by `spiketrace {escape(str(run['kind']))}`, status {escape(str(run['status']))}, "
                  f"kernel {escape(str(run['kernel']))}")
    lost = c["lost_events"]
    lost_text = f"[red]{lost:,} lost[/]" if lost else ("0 lost" if c["counts_recorded"] else "lost: unknown")
    console.print(f"{c['transactions']:,} transactions ({c['ok']:,} ok), {c['spikes']:,} spikes "
                  f"({escape(data.options['spike_rule'])}), {c['events']:,} kernel events ({lost_text}), "
                  f"{c['events_matched']:,} joined to a transaction")
    if run.get("source") == "connections":
        console.print("(no bench records: the kernel's connections stand in for transactions)")
    for line in source_lines(data):
        console.print(escape(line))

    lat = Table(title=escape(data.latency_title), show_header=True, header_style="bold")
    for name, _ in data.latency:
        lat.add_column(name, justify="right")
    lat.add_row(*[format_ms(v) for _, v in data.latency])
    console.print(lat)
    hrows = histogram_rows(data.trace)
    if hrows:
        t = Table(title="Kernel histograms (approximate)", header_style="bold", caption=HISTOGRAM_NOTE)
        for i, col in enumerate(HISTOGRAM_HEADER):
            t.add_column(col, justify="left" if i == 0 else "right")
        for row in hrows:
            t.add_row(*[escape(c) for c in row])
        console.print(t)

    if data.causes:
        t = Table(title="Spikes by cause", header_style="bold")
        for col in ("cause", "spikes", "%", "median", "max", "time", "details"):
            t.add_column(col, justify="left" if col in ("cause", "details") else "right")
        for row in data.causes:
            details = ", ".join(f"{k} {v}" for k, v in row["details"].items())
            if row.get("inferred"):
                details += f" ({row['inferred']} inferred)"
            t.add_row(row["cause"], f"{row['spikes']:,}", f"{row['percent']:.0f}",
                      format_ms(row["median_latency_ms"]), format_ms(row["max_latency_ms"]),
                      f"{row['time_s']:.2f} s", escape(details))
        console.print(t)
    else:
        console.print("No spikes.")

    if data.accuracy:
        t = Table(title="Attribution vs ground truth", header_style="bold")
        for col in ("cause", "injected", "slow", "named", "both", "precision", "recall"):
            t.add_column(col, justify="left" if col == "cause" else "right")
        for row in data.accuracy:
            t.add_row(row["cause"], f"{row['injected']:,}", f"{row['truth']:,}", f"{row['predicted']:,}",
                      f"{row['tp']:,}", _pct(row["precision"]), _pct(row["recall"]))
        console.print(t)

    if data.spikes:
        t = Table(title=f"Worst spikes ({min(TERMINAL_SPIKES, len(data.spikes))} of {data.spikes_total:,})",
                  header_style="bold", show_lines=False)
        app = data.app_log is not None
        t.add_column("entry" if app else "txn", justify="left" if app else "right")
        t.add_column("latency", justify="right")
        if app:
            t.add_column("match")
        t.add_column("cause")
        t.add_column("why")
        for s in data.spikes[:TERMINAL_SPIKES]:
            cause = s.cause + (f" ({s.cause_detail})" if s.cause_detail else "")
            cells = [escape(s.source) if app else str(s.txn_id), format_ms(s.latency_ms)]
            if app:
                cells.append(escape(match_text(s)))
            t.add_row(*cells, escape(cause), escape(s.sentence))
        console.print(t)

    if data.probes:
        console.print("Probes: " + ", ".join(f"{escape(k)}={escape(str(v))}" for k, v in data.probes))
    for w in data.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
