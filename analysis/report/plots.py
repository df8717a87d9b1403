"""The report's plots as inline SVG strings (matplotlib; text stays <text> in the page's font,
which keeps the SVG small and fast to write; no external URL)."""
from __future__ import annotations

import io
import re
from typing import Dict

import numpy as np

from analysis.report.data import CAUSE_COLORS, ReportData

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
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})  # fixed margins: one draw, not two
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE (they are invalid inline)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF boilerplate with URLs
    # ids must be unique in the page: prefix this figure's (defs, clip paths and their uses)
    text = re.sub(r'id="([^"]+)"', rf'id="{salt}-\1"', text)
    text = re.sub(r'(xlink:href|href)="#([^"]+)"', rf'\1="#{salt}-\2"', text)
    text = re.sub(r'url\(#([^)]+)\)', rf'url(#{salt}-\1)', text)
    return text


def latency_over_time(data: ReportData) -> str:
    """Latency over time (binned median and max, spikes coloured by cause) above a strip of
    kernel events, one row per kind, on the same time axis."""
    _, plt = _pyplot()
    kinds = sorted(data.markers)
    fig, (ax, ev_ax) = plt.subplots(2, 1, sharex=True, figsize=(11, 4.2 + 0.18 * len(kinds)),
                                    gridspec_kw={"height_ratios": [4, 0.6 + 0.25 * max(len(kinds), 1)]})
    fig.subplots_adjust(left=0.07, right=0.8, bottom=0.12, top=0.97, hspace=0.08)
    if len(data.bins_t):
        ax.plot(data.bins_t, data.bins_max, color="#aaaaaa", lw=0.8, label="max per time bin")
        ax.plot(data.bins_t, data.bins_p50, color="#333333", lw=1.2, label="median per time bin")
    for cause in dict.fromkeys(data.spike_cause.tolist()):
        sel = data.spike_cause == cause
        ax.scatter(data.spike_t[sel], data.spike_ms[sel], s=12, color=CAUSE_COLORS.get(cause, "#000"),
                   label=f"spike: {cause}", zorder=3, linewidths=0)
    ax.set_yscale("log")
    if data.threshold_ms > 0:
        ax.axhline(data.threshold_ms, color="#d62728", ls="--", lw=0.8, label="spike threshold")
    ax.set_ylabel("latency (ms, log)")
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
    ev_ax.set_xlabel("time since the first transaction (s)")
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
    if data.threshold_ms > 0:
        ax.axvline(data.threshold_ms, color="#d62728", ls="--", lw=0.8)
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("transactions")
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
