"""The data every report shows, computed once from an AnalysisResult (no I/O, no rendering):
tables as lists of rows, plot series as arrays. Renderers only format it."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from analysis.context import ALL_CAUSES, CAUSES
from common.text import printable
from common.vocab import TCP_STATES, errno_name, fmt_ms, fmt_ns

HTML_SPIKES = 1000  # per-spike rows in report.html (all of them are in explanations.parquet)
PLOT_SPIKES = 3000  # spike points in the time plot: the worst of each cause, shared fairly
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
    wall: str = ""  # its start in UTC ("2026-11-26 14:00:03.123"), "" without a clock anchor
    source: str = ""  # application log entry (file:line), --transactions only
    match: str = ""  # how it was matched to a kernel connection (port/unique/ambiguous/order/none)
    match_distance_ms: float = -1.0


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
    spikes_plotted: int = 0
    latency_title: str = "Latency (ok transactions)"
    trace: Optional[Dict[str, Any]] = None  # summary.json "trace": counted vs sent, histograms
    app_log: Optional[Dict[str, Any]] = None  # summary.json "app_log": files, matches
    # wall clock: t0 in UTC ns (meta.json's anchor), None when the run recorded no anchor
    t0_wall_ns: Optional[int] = None
    no_spikes: List[str] = dataclasses.field(default_factory=list)  # what was measured, why none

    def wall(self, t_rel_s: float, date: bool = True) -> str:
        """A time of the plots' axis (seconds after t0) in UTC, '' without a clock anchor."""
        if self.t0_wall_ns is None:
            return ""
        return wall_text(self.t0_wall_ns + int(t_rel_s * 1e9), date=date)


def _plot_spikes(expl: pd.DataFrame) -> pd.DataFrame:
    """At most PLOT_SPIKES spikes for the time plot: the worst of every cause (rank within its
    cause), so a cause with many 1 s spikes does not hide one with 200 ms spikes."""
    if len(expl) <= PLOT_SPIKES:
        return expl
    rank = expl.groupby("cause", sort=False).cumcount()  # expl is sorted worst first
    return expl.iloc[np.argsort(rank.to_numpy(), kind="stable")[:PLOT_SPIKES]]


def wall_text(wall_ns: int, date: bool = True) -> str:
    """UTC wall time: `2026-11-26 14:00:03.123` (`14:00:03.123` without the date)."""
    import datetime as dt

    t = dt.datetime.fromtimestamp(wall_ns / 1e9, tz=dt.timezone.utc)
    text = t.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S") + f".{t.microsecond // 1000:03d}"
    return text


def _t0_wall(meta, t0: int) -> Optional[int]:
    """t0 in UTC ns through meta.json's clock anchor; None when there is none (or it is absurd)."""
    mono, wall = int(getattr(meta, "clock_monotonic_ns", 0) or 0), int(getattr(meta, "clock_wall_ns", 0) or 0)
    if wall <= 0 or mono <= 0:
        return None
    value = wall + (t0 - mono)
    return value if 0 < value < 2 ** 62 else None


def build(result, max_spikes: int = HTML_SPIKES) -> ReportData:
    s = _clean(result.summary)
    expl = result.explanations
    t0 = int(result.t_start.min()) if len(result.t_start) else 0
    # no transaction, no first one: t0 = 0 through the clock anchor would be the boot time
    t0_wall = _t0_wall(result.meta, t0) if len(result.t_start) else None
    lat_ms = result.latency_ns / 1e6
    bins_t, p50, mx = _time_bins(result.t_start, lat_ms, t0)
    worst = expl.head(max_spikes)
    plotted = _plot_spikes(expl)
    spike_t = (plotted["t_start"].to_numpy(dtype=float) - t0) / 1e9  # float: no int64 overflow
    markers = _markers(result, t0)
    edges, hist = _histogram(result, lat_ms)
    return ReportData(
        title=f"spiketrace report: {s['run']['path']}",
        run=s["run"], counts=s["counts"],
        latency=[(k, v) for k, v in s["latency_ms"].items()], options=s["options"],
        causes=s["causes"], accuracy=s["accuracy"],
        probes=sorted(s["probes"].items()), warnings=list(s["warnings"]),
        notes=[printable(n) for n in getattr(result.meta, "notes", []) or []],
        spikes=_spike_rows(result, worst, t0, t0_wall), spikes_total=len(expl),
        t0=t0, bins_t=bins_t, bins_p50=p50, bins_max=mx,
        spike_t=spike_t, spike_ms=plotted["latency_ns"].to_numpy() / 1e6,
        spike_cause=plotted["cause"].to_numpy(dtype=object), spikes_plotted=len(plotted),
        markers=markers, hist_edges=edges, hist=hist, threshold_ms=result.threshold_ns / 1e6,
        latency_title=LATENCY_TITLES.get(s["run"].get("source", ""), "Latency (ok transactions)"),
        trace=s.get("trace"), app_log=s.get("app_log"), t0_wall_ns=t0_wall,
        no_spikes=no_spike_lines(s) if len(expl) == 0 else [])


def no_spike_lines(summary: Dict[str, Any]) -> List[str]:
    """With no spike: what was measured and why nothing counted as a spike."""
    c, lat, opt = summary["counts"], summary.get("latency_ms") or {}, summary["options"]
    what = "entries" if summary["run"].get("source") == "app_log" else "transactions"
    trace = summary.get("trace") or {}
    if not c["transactions"] and trace.get("connections_counted"):
        slow = trace.get("slow_threshold_ms")
        over = f" (slower than {fmt_ms(slow)})" if slow else ""
        return [f"No spikes: the kernel counted {trace['connections_counted']:,} connections and none was "
                f"slow{over} or anomalous (no retransmit, reset or failed connect); their times are in "
                "the histograms above."]
    if not c["transactions"]:
        return [f"No spikes: no {what} were measured."]
    measured = ", ".join(f"{name} {fmt_ms(lat[key])}" for key, name in
                         (("p50", "median"), ("p99.9", "p99.9"), ("max", "slowest")) if lat.get(key) is not None)
    return [f"No spikes: {c['transactions']:,} {what} measured ({measured}); none passed the spike rule "
            f"({opt['spike_rule']}: at least {fmt_ms(opt['effective_threshold_ms'])} here)."]


def _clean(value):
    """Every string of the run (paths, commands, comm names, notes, sentences) without control
    characters: an escape sequence in a run directory never reaches a terminal."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


LATENCY_TITLES = {
    "connections": "Latency of the connections the kernel sent in detail (slow or anomalous only; "
                   "all connections: see the kernel histograms)",
    "app_log": "Latency (the application's entries)",
}


def match_text(row) -> str:
    """`port, 0.1 ms apart` / `order` / `no kernel connection matched`."""
    if not row.match:
        return ""
    if row.match == "none":
        return "no kernel connection matched"
    if row.match_distance_ms >= 0:
        apart = "from its duration" if row.match == "order" else "apart"
        return f"{row.match}, {row.match_distance_ms:.3g} ms {apart}"
    return row.match


def trace_lines(trace: Optional[Dict[str, Any]]) -> List[str]:
    """Plain lines: connections counted vs sent in detail."""
    if not trace:
        return []
    counted, sent = trace.get("connections_counted"), trace.get("connections_sent")
    if counted is None or sent is None:
        return ["connections counted in the kernel: unknown (meta.json has no counts)"]
    thr = trace.get("slow_threshold_ms")
    why = f"slower than {thr:g} ms or with a retransmit" if isinstance(thr, (int, float)) else "slow or anomalous"
    return [f"the kernel tracked {counted:,} connection sockets (client and server sides count separately "
            f"when both are local) and sent {sent:,} in detail ({why}); the other "
            f"{trace.get('connections_only_counted', 0):,} were only counted, in the histograms below"]


def histogram_rows(trace: Optional[Dict[str, Any]]) -> List[List[str]]:
    """Rows of the kernel histograms table (approximate percentiles as ranges)."""
    from analysis.kernel import HIST_PERCENTILES, range_text

    rows = []
    for h in (trace or {}).get("histograms", []) or []:
        rows.append([h["what"], f"{h['count']:,}"] + [range_text(*h[f"p{p:g}_ms"]) for p in HIST_PERCENTILES]
                    + [range_text(*h["max_ms"])])
    return rows


def source_lines(data: "ReportData") -> List[str]:
    """Where the transactions come from, for trace runs and application logs (a bench run's
    transactions are its own records)."""
    if data.run.get("source") not in ("connections", "app_log"):
        return []
    return trace_lines(data.trace) + app_log_lines(data.app_log)


def app_log_lines(app: Optional[Dict[str, Any]]) -> List[str]:
    """Plain lines: the application log and how its entries matched kernel connections."""
    if not app:
        return []
    files = app.get("files", [])
    fmts = sorted(set(app.get("formats", [])))
    by = ", ".join(f"{k} {v:,}" for k, v in sorted(app.get("by_match", {}).items()) if k != "none")
    out = [f"application log: {len(files)} file(s) ({', '.join(fmts)}), {app.get('entries', 0):,} entries, "
           f"{app.get('matched', 0):,} matched to a kernel connection" + (f" ({by})" if by else "")
           + f"; {app.get('kernel_connections', 0):,} kernel connections recorded, "
           f"{app.get('kernel_connections_unmatched', 0):,} of them matched no entry"]
    untimed = int(app.get("entries", 0)) - int(app.get("timed", 0))
    if app.get("timestamps"):
        out.append("timestamps read as: " + "; ".join(app["timestamps"]))
    if untimed:
        out.append(f"{untimed:,} entries have no timestamp: each starts at its kernel connection's open when "
                   "matched, else at a time estimated from its neighbours' durations")
    if "spikes_by_match" in app:
        sb = ", ".join(f"{k} {v:,}" for k, v in sorted(app["spikes_by_match"].items()))
        out.append(f"spikes by match: {sb} (port: by port and time; unique/ambiguous: by time only; "
                   "order: by order and duration, the weakest)")
    return out


HISTOGRAM_HEADER = ["kernel histogram (all connections)", "count", "p50", "p90", "p99", "p99.9", "max"]
HISTOGRAM_NOTE = ("Approximate: the kernel keeps log2 histograms, so each percentile is known only as the "
                  "range of its bucket (a factor of 2).")


def _time_bins(t_start: np.ndarray, lat_ms: np.ndarray, t0: int):
    if len(t_start) == 0:
        z = np.zeros(0)
        return z, z, z
    rel = (t_start.astype(float) - t0) / 1e9
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
    span = max((float(result.t_start.max()) - t0) / 1e9, 1e-9)
    for kind in MARKER_KINDS:
        t = (result.event_t[result.event_kind == kind].astype(float) - t0) / 1e9
        if len(t) == 0:
            continue
        b = np.unique(np.clip(t / span * TIME_BINS * 2, 0, TIME_BINS * 2).astype(np.int64))
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


def _spike_rows(result, worst: pd.DataFrame, t0: int, t0_wall: Optional[int] = None) -> List[SpikeRow]:
    """One SpikeRow per shown spike, with its first EVIDENCE_PER_SPIKE cited events. Columns are
    pulled out as lists once (no per-row DataFrame indexing: 1000 spikes stay fast)."""
    ev = result.evidence
    if len(ev):
        ev = ev[ev["txn_id"].isin(worst["txn_id"])].drop_duplicates(["txn_id", "ev_row"])
    by_txn: Dict[int, List[int]] = {}
    cols: Dict[str, list] = {}
    if len(ev):
        cols = {c: ev[c].tolist() for c in ("txn_id", "ev_row", "t_ns", "kind", "cause", "side", "pid", "comm",
                                             "saddr", "sport", "daddr", "dport", "state", "reason", "value")}
        for i, t in enumerate(cols["txn_id"]):
            by_txn.setdefault(t, []).append(i)
    w = {c: worst[c].tolist() for c in worst.columns}
    names = {"drop": _reason_names(result.meta, "drop"), "reset_sent": _reason_names(result.meta, "reset")}
    share_cols = [(c, f"{c}_ns") for c in CAUSES]
    rows = []
    for k in range(len(worst)):
        named = set(str(w["causes"][k]).split(","))
        shares = sorted(((c, w[col][k] / 1e6) for c, col in share_cols if w[col][k] > 0 and c in named),
                        key=lambda x: -x[1])
        txn_id, t_start = w["txn_id"][k], w["t_start"][k]
        cited = by_txn.get(txn_id, [])
        evidence = []
        for i in cited[:EVIDENCE_PER_SPIKE]:
            sport, dport, state = cols["sport"][i], cols["dport"][i], int(cols["state"][i])
            kind = str(cols["kind"][i])
            evidence.append({
                "row": int(cols["ev_row"][i]), "rel_ms": (cols["t_ns"][i] - t_start) / 1e6,
                "kind": kind, "cause": str(cols["cause"][i]), "side": str(cols["side"][i]),
                "pid": int(cols["pid"][i]), "comm": printable(cols["comm"][i], newlines=False),
                "tuple": printable(f"{cols['saddr'][i]}:{sport} > {cols['daddr'][i]}:{dport}", newlines=False)
                if sport or dport else "",
                "state": TCP_STATES.get(state, str(state)) if state else "",
                "reason": reason_text(kind, int(cols["reason"][i]), names.get(kind, {})),
                "value": _value_text(kind, int(cols["value"][i])),
            })
        rows.append(SpikeRow(
            rank=k + 1, txn_id=int(txn_id), t_rel_s=(float(t_start) - t0) / 1e9, latency_ms=w["latency_ns"][k] / 1e6,
            cause=str(w["cause"][k]), cause_detail=printable(w["cause_detail"][k]), causes=str(w["causes"][k]),
            shares=shares, rest_ms=w["rest_ns"][k] / 1e6, inferred=bool(w["inferred"][k]),
            sentence=printable(w["sentence"][k]), local_port=int(w["local_port"][k]), evidence=evidence,
            evidence_total=len(cited), wall=wall_text(t0_wall + int(t_start - t0)) if t0_wall else "",
            source=printable(w["source"][k]) if "source" in w else "",
            match=str(w["match"][k]) if "match" in w else "",
            match_distance_ms=(w["match_distance_ns"][k] / 1e6 if w["match_distance_ns"][k] >= 0 else -1.0)
            if "match_distance_ns" in w else -1.0))
    return rows


def _reason_names(meta, kind: str) -> Dict[int, str]:
    try:
        return meta.reason_names(kind)
    except AttributeError:  # a meta without reason names (older runs, tests)
        return {}


def reason_text(kind: str, reason: int, names: Dict[int, str]) -> str:
    """An event's `reason` in words: this kernel's drop or reset reason name (meta.json), an
    errno name for connect errors and failed retransmits; '' for 0."""
    if not reason:
        return ""
    if kind in ("drop", "reset_sent"):
        name = names.get(reason)
        return printable(name, newlines=False) if name else f"reason {reason} (no name recorded)"
    if kind in ("connect_error", "retransmit"):
        return errno_name(abs(reason))
    return str(reason)


def _value_text(kind: str, value: int) -> str:
    """An event's `value` in words: durations, a kernel code address in hex (the `location` of a
    drop; read as int64 it is negative), counts."""
    if kind in ("runq_delay", "accept_wait"):
        return fmt_ns(value)
    if kind == "drop":
        return f"0x{value & 0xFFFFFFFFFFFFFFFF:x}" if value else ""
    if kind == "connect_error":
        return f"{value:,} failed attempts" if value else ""
    if kind == "retransmit":
        return f"#{value}" if value else ""
    return str(value) if value else ""
