"""The data every report shows, computed once from an AnalysisResult (no I/O, no rendering):
tables as lists of rows, plot series as arrays. Renderers only format it."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from analysis.context import ALL_CAUSES, CAUSES, fmt_ns
from analysis.facts import TCP_STATES

HTML_SPIKES = 1000  # per-spike rows in report.html (all of them are in explanations.parquet)
MD_SPIKES = 100
TERMINAL_SPIKES = 10
EVIDENCE_PER_SPIKE = 20
TIME_BINS = 400
MARKER_KINDS = ("retransmit", "synack_retransmit", "drop", "reset_sent", "reset_received",
                "connect_error", "accept_wait", "runq_delay")

CAUSE_COLORS = {
    "syn_retransmit": "#d62728", "synack_retransmit": "#ff7f0e", "data_retransmit": "#9467bd",
    "port_exhaustion": "#8c564b", "reset": "#e377c2", "runq_delay": "#2ca02c",
    "accept_queue_wait": "#1f77b4", "delayed_ack": "#bcbd22", "unexplained": "#7f7f7f",
    "normal": "#c7c7c7",
}


@dataclasses.dataclass
class SpikeRow:
    rank: int
    txn_id: int
    t_rel_s: float
    latency_ms: float
    cause: str
    cause_detail: str
    causes: str
    shares: List[tuple]  # (cause, ms) with ms > 0, largest first
    rest_ms: float
    inferred: bool
    sentence: str
    local_port: int
    evidence: List[Dict[str, Any]]  # event rows (relative ms, kind, ...)
    evidence_total: int


@dataclasses.dataclass
class ReportData:
    title: str
    run: Dict[str, Any]
    counts: Dict[str, Any]
    latency: List[tuple]  # (name, ms)
    options: Dict[str, Any]
    causes: List[Dict[str, Any]]
    accuracy: Optional[List[Dict[str, Any]]]
    probes: List[tuple]
    warnings: List[str]
    notes: List[str]
    spikes: List[SpikeRow]
    spikes_total: int
    # plot series
    t0: int
    bins_t: np.ndarray  # seconds
    bins_p50: np.ndarray  # ms
    bins_max: np.ndarray
    spike_t: np.ndarray
    spike_ms: np.ndarray
    spike_cause: np.ndarray
    markers: Dict[str, np.ndarray]  # kind -> event times (s), binned
    hist_edges: np.ndarray  # ms, log spaced
    hist: Dict[str, np.ndarray]  # "normal" or cause -> counts
    threshold_ms: float


def build(result, max_spikes: int = HTML_SPIKES) -> ReportData:
    s = result.summary
    expl = result.explanations
    t0 = int(result.t_start.min()) if len(result.t_start) else 0
    lat_ms = result.latency_ns / 1e6
    bins_t, p50, mx = _time_bins(result.t_start, lat_ms, t0)
    worst = expl.head(max_spikes)
    spike_t = (worst["t_start"].to_numpy() - t0) / 1e9
    markers = _markers(result, t0)
    edges, hist = _histogram(result, lat_ms)
    return ReportData(
        title=f"spiketrace report: {s['run']['path']}",
        run=s["run"], counts=s["counts"],
        latency=[(k, v) for k, v in s["latency_ms"].items()], options=s["options"],
        causes=s["causes"], accuracy=s["accuracy"],
        probes=sorted(s["probes"].items()), warnings=list(s["warnings"]),
        notes=list(getattr(result.meta, "notes", []) or []),
        spikes=_spike_rows(result, worst, t0), spikes_total=len(expl),
        t0=t0, bins_t=bins_t, bins_p50=p50, bins_max=mx,
        spike_t=spike_t, spike_ms=worst["latency_ns"].to_numpy() / 1e6,
        spike_cause=worst["cause"].to_numpy(dtype=object),
        markers=markers, hist_edges=edges, hist=hist, threshold_ms=result.threshold_ns / 1e6)


def _time_bins(t_start: np.ndarray, lat_ms: np.ndarray, t0: int):
    if len(t_start) == 0:
        z = np.zeros(0)
        return z, z, z
    rel = (t_start - t0) / 1e9
    span = max(float(rel.max()), 1e-9)
    idx = np.minimum((rel / span * TIME_BINS).astype(np.int64), TIME_BINS - 1)
    df = pd.DataFrame({"b": idx, "ms": lat_ms}).groupby("b")["ms"]
    full = pd.RangeIndex(TIME_BINS)
    p50, mx = df.median().reindex(full), df.max().reindex(full)  # NaN = no transaction: a gap
    centers = (np.arange(TIME_BINS) + 0.5) * span / TIME_BINS
    return centers, p50.to_numpy(dtype=float), mx.to_numpy(dtype=float)


def _markers(result, t0: int) -> Dict[str, np.ndarray]:
    """Event times per kind, thinned to one per time bin so the plot stays small."""
    out = {}
    if len(result.event_t) == 0 or len(result.t_start) == 0:
        return out
    span = max((result.t_start.max() - t0) / 1e9, 1e-9)
    for kind in MARKER_KINDS:
        t = (result.event_t[result.event_kind == kind] - t0) / 1e9
        if len(t) == 0:
            continue
        b = np.unique(np.clip((t / span * TIME_BINS * 2).astype(np.int64), 0, TIME_BINS * 2))
        out[kind] = (b + 0.5) * span / (TIME_BINS * 2)
    return out


def _histogram(result, lat_ms: np.ndarray):
    if len(lat_ms) == 0:
        return np.array([0.001, 1.0]), {}
    lo = max(float(lat_ms[lat_ms > 0].min()) if (lat_ms > 0).any() else 0.001, 0.001)
    hi = max(float(lat_ms.max()), lo * 10)
    edges = np.logspace(np.log10(lo), np.log10(hi * 1.0001), 60)
    expl = result.explanations
    spike_ms = expl["latency_ns"].to_numpy() / 1e6
    all_counts, _ = np.histogram(lat_ms, bins=edges)
    hist = {}
    total_spikes = np.zeros(len(edges) - 1, dtype=np.int64)
    for cause in ALL_CAUSES:
        sel = spike_ms[expl["cause"].to_numpy() == cause]
        if len(sel):
            hist[cause], _ = np.histogram(sel, bins=edges)
            total_spikes += hist[cause]
    hist = {"normal": np.maximum(all_counts - total_spikes, 0), **hist}
    return edges, hist


def _spike_rows(result, worst: pd.DataFrame, t0: int) -> List[SpikeRow]:
    ev = result.evidence
    ev = ev[ev["txn_id"].isin(worst["txn_id"])] if len(ev) else ev
    groups = {k: g for k, g in ev.groupby("txn_id", sort=False)} if len(ev) else {}
    rows = []
    share_cols = [(c, f"{c}_ns") for c in CAUSES]
    for rank, r in enumerate(worst.itertuples(index=False), start=1):
        named = set(str(r.causes).split(","))
        shares = sorted(((c, getattr(r, col) / 1e6) for c, col in share_cols
                         if getattr(r, col) > 0 and c in named), key=lambda x: -x[1])
        g = groups.get(r.txn_id)
        evidence = []
        if g is not None:
            g = g.drop_duplicates("ev_row")
            for e in g.head(EVIDENCE_PER_SPIKE).itertuples(index=False):
                evidence.append({
                    "row": int(e.ev_row), "rel_ms": (e.t_ns - r.t_start) / 1e6, "kind": str(e.kind),
                    "cause": str(e.cause), "side": str(e.side), "pid": int(e.pid), "comm": str(e.comm),
                    "tuple": f"{e.saddr}:{e.sport} > {e.daddr}:{e.dport}" if e.sport or e.dport else "",
                    "state": TCP_STATES.get(int(e.state), str(int(e.state)) if e.state else ""),
                    "reason": int(e.reason), "value": _value_text(str(e.kind), int(e.value)),
                })
        rows.append(SpikeRow(
            rank=rank, txn_id=int(r.txn_id), t_rel_s=(r.t_start - t0) / 1e9, latency_ms=r.latency_ns / 1e6,
            cause=str(r.cause), cause_detail=str(r.cause_detail), causes=str(r.causes), shares=shares,
            rest_ms=r.rest_ns / 1e6, inferred=bool(r.inferred), sentence=str(r.sentence),
            local_port=int(r.local_port), evidence=evidence,
            evidence_total=0 if g is None else len(g)))
    return rows


def _value_text(kind: str, value: int) -> str:
    if kind in ("runq_delay", "accept_wait"):
        return fmt_ns(value)
    return str(value) if value else ""
