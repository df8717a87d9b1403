"""report.md: the same data as the HTML report, as Markdown tables (the worst MD_SPIKES)."""
from __future__ import annotations

from typing import List

from common.vocab import fmt_ms as format_ms
from analysis.report.data import (HISTOGRAM_HEADER, HISTOGRAM_NOTE, MD_SPIKES, ReportData, source_lines,
                                  histogram_rows, match_text)


def _cell(text) -> str:
    """Markdown-safe table cell: no pipes, no newlines, no raw HTML."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


def _table(header: List[str], rows: List[List]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render(data: ReportData) -> str:
    c, run = data.counts, data.run
    lines = [f"# spiketrace report: {_cell(run['path'])}", ""]
    lines += _table(["", ""], [
        ["scenario", run["scenario"]], ["recorded by", f"spiketrace {run['kind']}, status {run['status']}"],
        ["command", run["command"]], ["kernel", f"{run['kernel']} ({run['distro']})"],
        ["started", run["started"]]] + ([["first transaction (UTC)", data.wall(0.0)]] if data.t0_wall_ns else []) + [
        ["transactions", f"{c['transactions']:,} ({c['ok']:,} ok)"],
        ["spikes", f"{c['spikes']:,} ({data.options['spike_rule']})"],
        ["kernel events", f"{c['events']:,}, {c['events_matched']:,} joined to a transaction"],
        ["lost events", f"{c['lost_events']:,}" if c["counts_recorded"] else "unknown (no counts in meta.json)"],
    ])
    if data.warnings:
        lines += ["## Warnings", ""] + [f"- {_cell(w)}" for w in data.warnings] + [""]
    extra = source_lines(data)
    if extra:
        lines += ["## Where the transactions come from", ""] + [f"- {_cell(x)}" for x in extra] + [""]
    lines += [f"## {_cell(data.latency_title)}", ""]
    lines += _table([n for n, _ in data.latency], [[format_ms(v) for _, v in data.latency]])
    hrows = histogram_rows(data.trace)
    if hrows:
        lines += ["## Kernel histograms (all connections, approximate)", "", HISTOGRAM_NOTE, ""]
        lines += _table(HISTOGRAM_HEADER, hrows)
    lines += ["## Spikes by cause", ""]
    if data.causes:
        lines += _table(["cause", "spikes", "%", "median", "max", "time", "details"], [
            [r["cause"], f"{r['spikes']:,}", f"{r['percent']:.0f}", format_ms(r["median_latency_ms"]),
             format_ms(r["max_latency_ms"]), f"{r['time_s']:.2f} s",
             ", ".join(f"{k} {v}" for k, v in r["details"].items())] for r in data.causes])
    else:
        lines += [_cell(x) for x in data.no_spikes or ["No spikes."]] + [""]
    if data.accuracy:
        lines += ["## Attribution vs ground truth", ""]
        lines += _table(["cause", "injected", "slow", "named", "both", "precision", "recall"], [
            [r["cause"], r["injected"], r["truth"], r["predicted"], r["tp"], _pct(r["precision"]), _pct(r["recall"])]
            for r in data.accuracy])
    if data.spikes:
        shown = min(MD_SPIKES, len(data.spikes))
        lines += [f"## Worst spikes ({shown} of {data.spikes_total:,}; all in explanations.parquet)", ""]
        app = data.app_log is not None
        lines += _table(["#", "entry" if app else "txn", "start (UTC)", "latency"] + (["match"] if app else [])
                        + ["cause", "shares", "why"], [
            [s.rank, s.source if app else s.txn_id, s.wall or f"+{s.t_rel_s:.3f} s", format_ms(s.latency_ms)]
            + ([match_text(s)] if app else [])
            + [s.cause + (f" ({s.cause_detail})" if s.cause_detail else ""),
               ", ".join(f"{n} {format_ms(ms)}" for n, ms in s.shares), s.sentence]
            for s in data.spikes[:shown]])
    lines += ["## Probes", ""]
    lines += _table(["evidence", "backend"], [[k, v] for k, v in data.probes]) if data.probes else ["none recorded", ""]
    return "\n".join(lines) + "\n"
