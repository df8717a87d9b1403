"""The report's plots as inline SVG strings (matplotlib; text stays <text> in the page's font,
which keeps the SVG small and fast to write; no external URL).

Readable as drawn: the time axis is UTC wall-clock time (meta.json's clock anchor), log axes
read `1 ms`, `100 ms`, `1 s` (never `10^2` or `3x10^1`), the median per time bin stays visible
when the load is bursty (a bin between two empty ones is a marker, not a vanished segment), and
the figure is cropped to what it draws, so no label is clipped. The median and max lines carry
SVG ids (`fig-time-median`, `fig-time-max`) that tests/unit/test_report_browser.py looks up."""
from __future__ import annotations

import io
import re
from typing import Dict

import numpy as np

from analysis.report.data import CAUSE_COLORS, ReportData

MEDIAN_COLOR = "#1f4e8c"  # distinct from every cause colour: the browser test finds it by colour
MARKER_COLORS = {"retransmit": "#d62728", "synack_retransmit": "#ff7f0e", "drop": "#000000",
                 "reset_sent": "#e377c2", "reset_received": "#e377c2", "connect_error": "#8c564b",
                 "accept_wait": "#1f77b4", "runq_delay": "#2ca02c"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return matplotlib, plt


def _svg(fig, salt: str) -> str:
    matplotlib, plt = _pyplot()
    buf = io.StringIO()
    import warnings

    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}), warnings.catch_warnings():
        # an empty plot (a healthy trace: nothing slow) warns of flat limits: nothing to say
        warnings.simplefilter("ignore", UserWarning)
        # cropped to what is drawn (a second layout pass): long tick labels and legends fit
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE (they are invalid inline)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate with URLs
    # ids must be unique in the page: prefix this figure's (defs, clip paths and their uses)
    text = re.sub(r'id="([^"]+)"', rf'id="{salt}-\1"', text)
    text = re.sub(r'(xlink:href|href)="#([^"]+)"', rf'\1="#{salt}-\2"', text)
    text = re.sub(r'url\(#([^)]+)\)', rf'url(#{salt}-\1)', text)
    return text


def ms_text(ms: float) -> str:
    """A latency tick: `50 us`, `0.5 ms`, `1 ms`, `200 ms`, `1 s`, `10 s`."""
    if ms <= 0:
        return "0"
    if ms >= 1000:
        return f"{ms / 1000:g} s"
    if ms >= 0.1:
        return f"{ms:g} ms"
    return f"{ms * 1000:g} us"


def count_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 or value == 0 else f"{value:g}"


def _log_axis(axis, text) -> None:
    """Decade ticks labelled in plain words, minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, pos: text(v)))
    axis.set_minor_formatter(NullFormatter())


def _time_axis(ax, data: ReportData) -> None:
    """x in seconds after t0, labelled as UTC wall-clock time (with the date in the label)."""
    from matplotlib.ticker import FuncFormatter

    if data.t0_wall_ns is None:
        ax.set_xlabel("time since the first transaction (s)")
        return

    def label(x, pos):
        ticks = ax.get_xticks()
        step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
        text = data.wall(x, date=False)  # HH:MM:SS.mmm
        return text[:-4] if step >= 1 else text[:-2] if step >= 0.1 else text

    ax.xaxis.set_major_formatter(FuncFormatter(label))
    days = sorted({data.wall(t)[:10] for t in ax.get_xlim()})
    ax.set_xlabel(f"time (UTC, {' to '.join(days)})")


def latency_over_time(data: ReportData) -> str:
    """Latency over time (binned median and max, spikes coloured by cause) above a strip of
    kernel events, one row per kind, on the same time axis."""
    _, plt = _pyplot()
    kinds = sorted(data.markers)
    fig, (ax, ev_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 4.2 + 0.18 * len(kinds)),
                                    gridspec_kw={"height_ratios": [4, 0.6 + 0.25 * max(len(kinds), 1)]})
    fig.subplots_adjust(left=0.07, right=0.8, bottom=0.12, top=0.97, hspace=0.08)
    if len(data.bins_t):
        # markers as well as lines: a bin between two empty ones (bursty load) draws no segment
        ax.plot(data.bins_t, data.bins_max, color="#aaaaaa", lw=0.8, marker="o", ms=1.6,
                label="max per time bin", gid="max")
        ax.plot(data.bins_t, data.bins_p50, color=MEDIAN_COLOR, lw=1.4, marker="o", ms=2.2,
                label="median per time bin", gid="median", zorder=2.5)
    for cause in dict.fromkeys(data.spike_cause.tolist()):
        sel = data.spike_cause == cause
        ax.scatter(data.spike_t[sel], data.spike_ms[sel], s=12, color=CAUSE_COLORS.get(cause, "#000"),
                   label=f"spike: {cause}", zorder=3, linewidths=0)
    ax.set_yscale("log")
    _log_axis(ax.yaxis, ms_text)
    if data.threshold_ms > 0:
        ax.axhline(data.threshold_ms, color="#d62728", ls="--", lw=0.8, label="spike threshold")
    ax.set_ylabel("latency (log scale)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    for row, kind in enumerate(kinds):
        times = data.markers[kind]
        ev_ax.scatter(times, np.full(len(times), row), marker="|", s=40,
                      color=MARKER_COLORS.get(kind, "#333333"), linewidths=1)
    ev_ax.set_yticks(range(len(kinds)))
    ev_ax.set_yticklabels(kinds, fontsize=7)
    ev_ax.set_ylim(-0.7, max(len(kinds), 1) - 0.3)
    if not kinds:
        ev_ax.text(0.5, 0.5, "no kernel events", transform=ev_ax.transAxes, ha="center", va="center", fontsize=8)
    _time_axis(ev_ax, data)
    return _svg(fig, "fig-time")


def histogram(data: ReportData) -> str:
    _, plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.4))
    fig.subplots_adjust(left=0.07, right=0.8, bottom=0.16, top=0.96)
    edges = data.hist_edges
    bottom = np.zeros(len(edges) - 1)
    for name, counts in data.hist.items():
        if counts.sum() == 0:
            continue
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", bottom=bottom,
               color=CAUSE_COLORS.get(name, "#000"), label=name, edgecolor="none")
        bottom += counts
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1)
    _log_axis(ax.xaxis, ms_text)
    _log_axis(ax.yaxis, count_text)
    if data.threshold_ms > 0:
        ax.axvline(data.threshold_ms, color="#d62728", ls="--", lw=0.8)
    ax.set_xlabel("latency (log scale)")
    ax.set_ylabel("transactions")
    if ax.get_legend_handles_labels()[0]:  # nothing drawn (no transaction): no legend
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig, "fig-hist")


def cause_breakdown(data: ReportData) -> str:
    _, plt = _pyplot()
    causes = [c["cause"] for c in data.causes] or ["(no spikes)"]
    height = 1.1 + 0.3 * len(causes)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, height))
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.7 / height, top=1 - 0.15 / height, wspace=0.08)
    counts = [c["spikes"] for c in data.causes] or [0]
    times = [c["time_s"] for c in data.causes] or [0]
    colors = [CAUSE_COLORS.get(c, "#000") for c in causes]
    y = np.arange(len(causes))
    ax1.barh(y, counts, color=colors)
    ax1.set_yticks(y, causes)
    ax1.invert_yaxis()
    ax1.set_xlabel("spikes (primary cause)")
    ax2.barh(y, times, color=colors)
    ax2.set_yticks(y, [""] * len(causes))
    ax2.invert_yaxis()
    ax2.set_xlabel("latency it accounts for (s)")
    return _svg(fig, "fig-causes")


def all_plots(data: ReportData) -> Dict[str, str]:
    return {"time": latency_over_time(data), "hist": histogram(data), "causes": cause_breakdown(data)}
