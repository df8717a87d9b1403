"""report.html: one self-contained page (inline CSS and SVG, no script, no external URL).
Every string that comes from the run (paths, commands, process names, sentences) is escaped."""
from __future__ import annotations

import html
from typing import Dict, Iterable, List

from common.vocab import fmt_ms as format_ms
from analysis.report.data import (CAUSE_COLORS, HISTOGRAM_HEADER, HISTOGRAM_NOTE, ReportData, source_lines,
                                  histogram_rows, match_text)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.4em;word-break:break-all}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff6e0;border-left:4px solid #f0a000;padding:.4em .8em;margin:.3em 0}
.lost{font-weight:bold;color:#b00}.ok{color:#070}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.3em;vertical-align:middle}
figure{margin:.8em 0}figure svg{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}
details summary{cursor:pointer;color:#0645ad}details table{font-size:.95em}
.sentence{max-width:46em}.muted{color:#777}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], numeric: Iterable[int] = ()) -> str:
    """A table of already-escaped cells."""
    num = set(numeric)
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cause(name: str, detail: str = "") -> str:
    color = CAUSE_COLORS.get(name, "#000")
    text = esc(name) + (f" <span class=muted>({esc(detail)})</span>" if detail else "")
    return f'<span class="swatch" style="background:{color}"></span>{text}'


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render(data: ReportData, plots: Dict[str, str]) -> str:
    c, run = data.counts, data.run
    lost = c["lost_events"]
    lost_html = (f'<span class="lost">{lost:,} lost</span>' if lost else
                 ('<span class="ok">0 lost</span>' if c["counts_recorded"] else
                  '<span class="lost">unknown (meta.json has no counts)</span>'))
    parts: List[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(data.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(data.title)}</h1>",
        _table(["", ""], [
            ["scenario", esc(run["scenario"])],
            ["recorded by", esc(f"spiketrace {run['kind']}, status {run['status']}")],
            ["command", f"<code>{esc(run['command'])}</code>"],
            ["kernel", esc(f"{run['kernel']} ({run['distro']}), BCC {run['bcc_version'] or '?'}")],
            ["started / ended", esc(f"{run['started']} / {run['ended']}")],
            ["first transaction", esc(f"{data.wall(0.0)} UTC" if data.t0_wall_ns else
                                      "none" if not c["transactions"] else "unknown (no clock anchor)")],
            ["transactions", esc(f"{c['transactions']:,} ({c['ok']:,} ok; outcomes: "
                                 + ", ".join(f"{k} {v:,}" for k, v in c["outcomes"].items()) + ")")],
            ["spikes", esc(f"{c['spikes']:,} ({data.options['spike_rule']}; effective threshold "
                           f"{format_ms(data.options['effective_threshold_ms'])})")],
            ["kernel events", esc(f"{c['events']:,}, {c['events_matched']:,} joined to a transaction")],
            ["lost events", lost_html],
        ]),
    ]
    extra = source_lines(data)
    if extra:
        parts.append('<h2 id="source">Where the transactions come from</h2><ul>'
                     + "".join(f"<li>{esc(x)}</li>" for x in extra) + "</ul>")
    if data.warnings:
        parts.append('<h2 id="warnings">Warnings</h2>')
        parts += [f'<div class="warn">{esc(w)}</div>' for w in data.warnings]
    parts.append('<h2 id="plots">Latency</h2>')
    parts.append(f'<figure id="plot-time">{plots["time"]}<figcaption>Latency of every transaction over time '
                 f"(median and max per time bin), spikes coloured by cause ({data.spikes_plotted:,} of "
                 f"{data.spikes_total:,}: the worst of each cause), and kernel events below, one row per kind."
                 "</figcaption></figure>")
    parts.append(f'<figure id="plot-hist">{plots["hist"]}<figcaption>Latency histogram (log scale), spikes '
                 "coloured by their primary cause.</figcaption></figure>")
    parts.append(f"<p>{esc(data.latency_title)}</p>")
    parts.append(_table([n for n, _ in data.latency], [[esc(format_ms(v)) for _, v in data.latency]],
                        numeric=range(len(data.latency))))
    hrows = histogram_rows(data.trace)
    if hrows:
        parts.append('<h2 id="histograms">Kernel histograms (all connections, approximate)</h2>')
        parts.append(f"<p>{esc(HISTOGRAM_NOTE)}</p>")
        parts.append(_table(HISTOGRAM_HEADER, [[esc(c) for c in r] for r in hrows], numeric=range(1, 7)))
    parts.append('<h2 id="causes">Spikes by cause</h2>')
    if data.causes:
        parts.append(f'<figure id="plot-causes">{plots["causes"]}</figure>')
        parts.append(_table(["cause", "spikes", "%", "median", "max", "time", "details"], [
            [_cause(r["cause"]), f"{r['spikes']:,}", f"{r['percent']:.1f}", esc(format_ms(r["median_latency_ms"])),
             esc(format_ms(r["max_latency_ms"])), f"{r['time_s']:.3f} s",
             esc(", ".join(f"{k} {v}" for k, v in r["details"].items())
                 + (f" ({r['inferred']} inferred from timing)" if r.get("inferred") else ""))]
            for r in data.causes], numeric=(1, 2, 3, 4, 5)))
    else:
        parts += [f'<p class="nospikes">{esc(x)}</p>' for x in data.no_spikes or ["No spikes."]]
    if data.accuracy:
        parts.append('<h2 id="accuracy">Attribution vs ground truth</h2>')
        parts.append("<p>Over the spikes: <i>injected</i> counts every transaction the scenario marked, "
                     "<i>slow</i> those of them that were spikes, <i>named</i> the spikes given that cause.</p>")
        parts.append(_table(["cause", "injected", "slow", "named", "both", "precision", "recall"], [
            [_cause(r["cause"]), f"{r['injected']:,}", f"{r['truth']:,}", f"{r['predicted']:,}", f"{r['tp']:,}",
             _pct(r["precision"]), _pct(r["recall"])] for r in data.accuracy], numeric=(1, 2, 3, 4, 5, 6)))
    parts.append(_spikes(data))
    parts.append('<h2 id="probes">Probes</h2>')
    parts.append(_table(["evidence", "backend"], [[esc(k), esc(v)] for k, v in data.probes])
                 if data.probes else "<p>No probe backends recorded.</p>")
    if data.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in data.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _spikes(data: ReportData) -> str:
    if not data.spikes:
        return ""
    head = (f'<h2 id="spikes">Spikes ({len(data.spikes):,} worst of {data.spikes_total:,}'
            + ("; all are in explanations.parquet" if data.spikes_total > len(data.spikes) else "") + ")</h2>")
    rows = []
    for s in data.spikes:
        shares = "<br>".join(f"{_cause(n)} {esc(format_ms(ms))}" for n, ms in s.shares)
        if s.rest_ms > 0:
            shares += f"<br><span class=muted>rest {esc(format_ms(s.rest_ms))}</span>"
        if s.evidence:
            ev_rows = [[esc(f"{e['rel_ms']:+.3f}"), esc(e["kind"]), esc(e["side"]), esc(e["tuple"]), esc(e["state"]),
                        esc(e["reason"] or ""), esc(e["value"]), esc(f"{e['comm']} ({e['pid']})" if e["pid"] else e["comm"]),
                        esc(e["cause"]), esc(e["row"])] for e in s.evidence]
            more = (f"<p class=muted>{s.evidence_total - len(s.evidence)} more in the evidence table</p>"
                    if s.evidence_total > len(s.evidence) else "")
            evidence = (f"<details><summary>{s.evidence_total} event(s)</summary>"
                        + _table(["ms", "kind", "side", "4-tuple", "state", "reason", "value", "task", "cause",
                                  "events row"], ev_rows, numeric=(0,)) + more + "</details>")
        else:
            evidence = '<span class="muted">no event (records, counters or timing)</span>'
        cause = _cause(s.cause, s.cause_detail) + (' <span class="muted">inferred</span>' if s.inferred else "")
        if s.source:
            cause += f'<br><span class="muted">{esc(s.source)}; {esc(match_text(s))}</span>'
        rows.append(f'<tr id="txn-{s.txn_id}"><td class="num">{s.rank}</td>'
                    f'<td class="num"><a href="#txn-{s.txn_id}">{s.txn_id}</a></td>'
                    f'<td class="num">{esc(s.wall or f"+{s.t_rel_s:.3f} s")}</td>'
                    f'<td class="num">{esc(format_ms(s.latency_ms))}</td>'
                    f"<td>{cause}</td><td>{shares}</td><td class=sentence>{esc(s.sentence)}</td>"
                    f"<td>{evidence}</td></tr>")
    table = ("<table><thead><tr><th>#</th><th>txn</th><th>start (UTC)</th><th>latency</th><th>cause</th>"
             "<th>shares</th><th>why</th><th>evidence</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return head + table
