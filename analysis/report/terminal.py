"""The terminal summary (rich): counts, percentiles, spikes by cause, accuracy, lost events,
probe backends, warnings and the worst spikes.

Values are never truncated, at any width and whether or not the output is a terminal: a table
is drawn only when every value fits whole on its line (text such as sentences wraps at words);
otherwise each row is printed as `name value` items packed into lines, a value never split.
Every string from the run was made printable by `data.build` (no escape sequence reaches the
terminal) and is escaped for rich markup here."""
from __future__ import annotations

import io
from typing import List, Sequence

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from analysis.report.data import (HISTOGRAM_HEADER, HISTOGRAM_NOTE, TERMINAL_SPIKES, ReportData, histogram_rows,
                                  match_text, source_lines)
from common.vocab import fmt_ms as format_ms

TEXT_MIN = 16  # a wrapping text column narrower than this reads badly: print records instead


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def print_table(console: Console, title: str, header: Sequence[str], rows: List[List[str]],
                text: Sequence[int] = (), left: Sequence[int] = (0,), caption: str = "") -> None:
    """A table of plain cells (`text`: column indexes that may wrap at words; the others are
    values, kept whole), or records when the values do not fit the console's width."""
    text, left = set(text), set(left) | set(text)
    table = Table(title=escape(title), header_style="bold", caption=escape(caption) if caption else None)
    for i, name in enumerate(header):
        values = [len(r[i]) for r in rows] + [len(name)]
        if i in text:
            # "ellipsis" only as a probe: a word that cannot fit makes `fits` fail (records then)
            table.add_column(escape(name), overflow="ellipsis", min_width=min(TEXT_MIN, max(values)))
        else:
            table.add_column(escape(name), justify="left" if i in left else "right", no_wrap=True,
                             min_width=max(values))
    for r in rows:
        table.add_row(*[escape(c) for c in r])
    if fits(table, console.width):
        console.print(table)
        return
    console.print(f"[bold]{escape(title)}[/]")
    for r in rows:  # records: the first cell as a heading, the values packed, then the texts
        head = r[0] if 0 in text else f"{header[0]} {r[0]}"
        console.print(Padding(Text(head, style="bold"), (0, 0, 0, 1), expand=False))
        items = [f"{header[i]} {r[i]}" for i in range(1, len(header)) if i not in text and r[i] != ""]
        for line in pack(items, console.width - 3):
            console.print("   " + escape(line), soft_wrap=True, highlight=False)
        for i in sorted(text - {0}):
            console.print(Padding(Text(f"{header[i]}: {r[i]}"), (0, 0, 0, 3), expand=False))
    if caption:
        console.print(escape(caption), highlight=False)


def fits(table: Table, width: int) -> bool:
    """The table drawn at `width` keeps every cell of its value columns whole, and every word
    of its text columns (they wrap at spaces, never inside a word)."""
    wide = Console(file=io.StringIO(), width=100_000, color_system=None, force_terminal=False)
    if wide.measure(table).minimum > width:  # measured at `width`, it would be clamped to it
        return False
    probe = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    probe.print(table)
    return "…" not in probe.file.getvalue()


def pack(items: Sequence[str], width: int, sep: str = "  ") -> List[str]:
    """Items packed into lines of at most `width` (an item longer than that gets a line of its
    own, whole): values are never split."""
    lines: List[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(sep) + len(item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


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
    if data.t0_wall_ns is not None:
        console.print(f"first transaction at {data.wall(0.0)} UTC", highlight=False)
    if run.get("source") == "connections":
        console.print("(no bench records: the kernel's connections stand in for transactions)")
    for line in source_lines(data):
        console.print(escape(line))

    if data.latency:
        print_table(console, data.latency_title, [n for n, _ in data.latency],
                    [[format_ms(v) for _, v in data.latency]], left=())
    hrows = histogram_rows(data.trace)
    if hrows:
        print_table(console, "Kernel histograms (approximate)", HISTOGRAM_HEADER, hrows, text=(0,),
                    caption=HISTOGRAM_NOTE)

    if data.causes:
        rows = []
        for row in data.causes:
            details = ", ".join(f"{k} {v}" for k, v in row["details"].items())
            if row.get("inferred"):
                details += f" ({row['inferred']} inferred)"
            rows.append([row["cause"], f"{row['spikes']:,}", f"{row['percent']:.0f}",
                         format_ms(row["median_latency_ms"]), format_ms(row["max_latency_ms"]),
                         f"{row['time_s']:.2f} s", details])
        print_table(console, "Spikes by cause", ["cause", "spikes", "%", "median", "max", "time", "details"],
                    rows, text=(6,))
    else:
        for line in data.no_spikes or ["No spikes."]:
            console.print(escape(line), highlight=False)

    if data.accuracy:
        print_table(console, "Attribution vs ground truth",
                    ["cause", "injected", "slow", "named", "both", "precision", "recall"],
                    [[r["cause"], f"{r['injected']:,}", f"{r['truth']:,}", f"{r['predicted']:,}", f"{r['tp']:,}",
                      _pct(r["precision"]), _pct(r["recall"])] for r in data.accuracy])

    if data.spikes:
        shown = data.spikes[:TERMINAL_SPIKES]
        app = data.app_log is not None
        one_day = len({s.wall[:10] for s in shown}) <= 1
        header = ["entry" if app else "txn", "latency"] + (["start (UTC)"] if shown[0].wall else []) \
            + (["match"] if app else []) + ["cause", "why"]
        rows = []
        for s in shown:
            cause = s.cause + (f" ({s.cause_detail})" if s.cause_detail else "")
            row = [s.source if app else str(s.txn_id), format_ms(s.latency_ms)]
            if shown[0].wall:
                row.append(s.wall[11:] if one_day else s.wall)
            if app:
                row.append(match_text(s))
            rows.append(row + [cause, s.sentence])
        day = f", {shown[0].wall[:10]}" if one_day and shown[0].wall else ""
        print_table(console, f"Worst spikes ({len(shown)} of {data.spikes_total:,}{day})", header, rows,
                    text=(len(header) - 1,), left=(0, len(header) - 2) if not app else (0, 2, len(header) - 2))

    if data.probes:
        console.print("Probes: " + ", ".join(f"{escape(k)}={escape(str(v))}" for k, v in data.probes))
    for w in data.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
