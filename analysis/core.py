"""`analyse(run)`: spikes, the evidence joined to them, causes, decomposition, accuracy. Pure:
tables in, an `AnalysisResult` out; the reporters render it (analysis.report)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from analysis import accuracy, facts
from analysis.causes_connect import (detect_idle_connection, detect_port_exhaustion, detect_reset,
                                     detect_syn_retransmit, detect_synack_retransmit, idle_connections)
from analysis.causes_app import detect_client_blocked, detect_server_processing
from analysis.causes_transfer import (detect_accept_queue_wait, detect_data_retransmit, detect_delayed_ack,
                                      detect_runq_delay, systematic_stall)
from analysis.context import ALL_CAUSES, CAUSES, build_context
from analysis.decompose import explain, summarise_causes
from analysis.load import Frames, load
from analysis.options import AnalysisOptions

DETECTORS = (detect_syn_retransmit, detect_synack_retransmit, detect_port_exhaustion, detect_reset,
             detect_data_retransmit, detect_accept_queue_wait, detect_runq_delay, detect_server_processing,
             detect_client_blocked, detect_delayed_ack, detect_idle_connection)

PERCENTILES = (50, 90, 99, 99.9, 99.99)


@dataclasses.dataclass
class AnalysisResult:
    """Everything the reports show, computed once."""

    run_path: Path
    meta: Any  # common.meta.Meta
    options: AnalysisOptions
    summary: Dict[str, Any]  # JSON-ready (summary.json)
    explanations: pd.DataFrame  # one row per spike (explanations.parquet)
    evidence: pd.DataFrame  # cited events: txn_id, cause + the events.parquet row and columns
    causes: pd.DataFrame  # spikes by primary cause
    accuracy: Optional[pd.DataFrame]  # per cause precision/recall, None without ground truth
    warnings: List[str]
    # for the plots: every transaction's start and latency, every event's time and kind
    t_start: np.ndarray
    latency_ns: np.ndarray
    event_t: np.ndarray
    event_kind: Any  # pandas Categorical (compare with ==)
    threshold_ns: float = 0.0
    # the joined data, for `spiketrace explain` (analysis.timeline); not part of any report
    context: Any = dataclasses.field(default=None, repr=False)

    @property
    def spikes(self) -> int:
        return len(self.explanations)


def spike_mask(latency: np.ndarray, ok: np.ndarray, options: AnalysisOptions,
               population: Optional[np.ndarray] = None):
    """Spikes pass every enabled test (see AnalysisOptions); returns (mask, median, threshold).

    `population`: a log2 histogram (ns) of *every* transaction when `latency` holds only some of
    them (trace runs: the kernel sends only the slow connections); the median and percentile
    then come from it (approximately: see analysis.kernel)."""
    base = latency[ok] if ok.any() else latency
    median = float(np.median(base)) if len(base) else 0.0
    if population is not None and population.sum():
        from analysis.kernel import hist_median_ns, hist_percentile

        median = hist_median_ns(population)
        if options.percentile is not None:
            mask = latency >= (options.threshold_ms * 1e6 if options.threshold_ms > 0 else 0)
            threshold = options.threshold_ms * 1e6 if options.threshold_ms > 0 else 0.0
            if options.relative > 0:
                mask &= latency > options.relative * median
                threshold = max(threshold, options.relative * median)
            pct = hist_percentile(population, options.percentile)[1]  # the bucket's upper bound
            mask &= latency > pct
            return mask, median, max(threshold, pct)
    threshold = 0.0
    if options.threshold_ms > 0:
        threshold = max(threshold, options.threshold_ms * 1e6)
    mask = latency >= threshold if options.threshold_ms > 0 else np.ones(len(latency), bool)
    if options.relative > 0:
        mask &= latency > options.relative * median
        threshold = max(threshold, options.relative * median)
    if options.percentile is not None and len(base):
        pct = float(np.percentile(base, options.percentile))
        mask &= latency > pct
        threshold = max(threshold, pct)
    return mask, median, threshold


def analyse(run, options: AnalysisOptions = AnalysisOptions(), app_log=None) -> AnalysisResult:
    """Analyse an opened `common.rundir.RunDir`; with `app_log` (analysis.applog.AppLog,
    `spiketrace report --transactions`) the application's entries are the transactions."""
    started = time.monotonic()
    frames = load(run, app_log=app_log, match_window_ms=options.match_window_ms)
    warnings = list(run.warnings)
    warnings += [w for w in _meta_warnings(run.meta, frames) if w not in warnings]
    txn = frames.txn
    latency = txn["latency_ns"].to_numpy()
    ok = (txn["outcome"] == "ok").to_numpy()
    population = frames.histograms.get("lifetime_ns") if frames.source == "connections" else None
    mask, median, threshold = spike_mask(latency, ok, options, population)
    stall = systematic_stall(txn, ok, run.meta.params.client)
    # its advice (a threshold under the stall) is moot where the rule already makes the median
    # transaction a spike (the nagle-delack scenario sets it)
    if stall and not (ok.any() and threshold and np.median(latency[ok]) >= threshold):
        warnings.append(stall)
    idle = idle_connections(txn, run.meta) != ""
    idle_excluded = int((mask & idle).sum()) if not options.include_idle else 0
    if idle_excluded:
        mask &= ~idle
        warnings.append(f"{idle_excluded:,} slow connection(s) carried no request (connects the client "
                        "abandoned, or idle connections): not counted as spikes; --idle lists them")
    if options.only_ids is not None:
        mask = np.isin(txn["id"].to_numpy(), np.asarray(list(options.only_ids), dtype=np.int64))
    spikes = np.flatnonzero(mask)
    ctx = build_context(frames, run.meta, options, spikes, median)
    for detect in DETECTORS:
        detect(ctx)
    expl, evidence = explain(ctx)
    expl = expl.sort_values("latency_ns", ascending=False, kind="stable").reset_index(drop=True)
    acc, acc_warnings = accuracy.evaluate(frames.ground_truth, txn, frames.server_ports, spikes,
                                          _causes_by_ti(expl, txn, spikes),
                                          int(options.match_slack_ms * 1e6))
    warnings += acc_warnings
    evidence_table = _evidence_table(frames, evidence, txn)
    causes = summarise_causes(expl)
    summary = _plain(_summary(run, frames, options, latency, ok, median, threshold, expl, causes, acc,
                              warnings, ctx, time.monotonic() - started))
    return AnalysisResult(
        run_path=Path(run.path), meta=run.meta, options=options, summary=summary, explanations=expl,
        evidence=evidence_table, causes=causes, accuracy=acc, warnings=warnings,
        t_start=txn["t_start"].to_numpy(), latency_ns=latency,
        event_t=frames.events["t_ns"].to_numpy(), event_kind=frames.events["kind"].array,
        threshold_ns=threshold, context=ctx)


def _causes_by_ti(expl: pd.DataFrame, txn: pd.DataFrame, spikes: np.ndarray) -> List[str]:
    by_id = dict(zip(expl["txn_id"].tolist(), expl["causes"].tolist()))
    ids = txn["id"].to_numpy()[spikes]
    return [by_id.get(i, "") for i in ids.tolist()]


def _evidence_table(frames: Frames, evidence: pd.DataFrame, txn: pd.DataFrame) -> pd.DataFrame:
    """Cited events with their columns, for the per-spike evidence in the reports."""
    ev = frames.events
    cols = ["t_ns", "kind", "side", "pid", "comm", "saddr", "sport", "daddr", "dport", "state",
            "new_state", "reason", "value", "value2"]
    if evidence.empty:
        return pd.DataFrame(columns=["txn_id", "cause", "ev_row"] + cols)
    evidence = evidence.drop_duplicates(["ti", "cause", "ev_row"])
    rows = ev.iloc[evidence["ev_row"].to_numpy()][cols].reset_index(drop=True)
    out = pd.concat([pd.DataFrame({"txn_id": txn["id"].to_numpy()[evidence["ti"].to_numpy()],
                                   "cause": evidence["cause"].to_numpy(),
                                   "ev_row": evidence["ev_row"].to_numpy()}), rows], axis=1)
    return out.sort_values(["txn_id", "t_ns"], kind="stable").reset_index(drop=True)


def _meta_warnings(meta, frames: Frames) -> List[str]:
    out = []
    if not meta.counts:
        out.append("meta.json has no counts (the run did not record its totals): lost events are unknown")
    if meta.lost_events:
        out.append(f"{meta.lost_events:,} kernel events were lost: some spikes may lack their evidence "
                   "and show as unexplained or inferred")
    missing = sorted(k for k, v in (meta.probes or {}).items() if v == "unavailable")
    if missing:
        out.append(f"probes unavailable on the traced kernel: {', '.join(missing)} (their causes are "
                   "inferred from timing and counters, or not seen)")
    if frames.source == "connections":
        out.append("no bench records and no application log: every TCP connection the kernel recorded in "
                   "connections.parquet (slow or anomalous) is a transaction, open to close; give the application's own log with "
                   "--transactions to explain its slow requests")
        if "lifetime_ns" not in frames.histograms:
            out.append("no lifetime histogram in histograms.parquet: the median (--relative) is that of the "
                       "slow connections only; consider --relative 0")
        counted, sent = meta.counts.get("connections_counted"), meta.counts.get("connections_sent")
        if counted is not None and sent is not None:
            out.append(f"the kernel counted {int(counted):,} connection sockets and sent {int(sent):,} in detail; "
                       f"the other {max(int(counted) - int(sent), 0):,} are only in the histograms "
                       "(the median and percentiles of all connections come from them: approximate, log2 buckets)")
    if frames.source == "app_log":
        if frames.app_stats.get("kernel_connections", 0) == 0:
            out.append("no kernel connection recorded: the application's entries cannot be matched "
                       "(was the trace running, on the right --port?)")
    if frames.events.empty and frames.source == "transactions" and not frames.events_file_missing:
        out.append("no kernel events recorded: causes come from timing, counters and records only")
    if not frames.counters.series:
        out.append("no counters.parquet: listen overflows and the TIME_WAIT census are unknown")
    out += [n for n in frames.notes if n not in out]
    return out


def _trace_summary(meta, frames: Frames) -> Optional[Dict[str, Any]]:
    """What the kernel saw of all connections: counted vs sent in detail, and the histograms'
    approximate percentiles (log2 buckets: each value is known within a factor of 2)."""
    from analysis.kernel import hist_summary

    if frames.kernel is None and not frames.histograms and meta.kind != "trace":
        return None
    counts = meta.counts or {}
    counted = counts.get("connections_counted")
    sent = counts.get("connections_sent")
    k = frames.kernel
    return {
        "connections_counted": None if counted is None else int(counted),
        "connections_sent": None if sent is None else int(sent),
        "connections_only_counted": None if counted is None or sent is None else max(int(counted) - int(sent), 0),
        "connections_recorded": 0 if k is None else int(len(k)),
        "seen": {} if k is None or k.empty else {str(a): int(b) for a, b in k["seen"].value_counts().items()},
        "slow_threshold_ms": meta.params.tracer.slow_conn_ms if meta.params.tracer else None,
        "histograms": hist_summary(frames.histograms),
        "approximate": "percentiles from log2 histograms: the value lies in the range given (a factor of 2)",
    }


def _app_log_summary(frames: Frames, expl: pd.DataFrame) -> Optional[Dict[str, Any]]:
    if frames.source != "app_log":
        return None
    out = dict(frames.app_stats)
    if len(expl) and "match" in expl:
        out["spikes_by_match"] = {str(a): int(b) for a, b in expl["match"].value_counts().items()}
        out["spikes_unmatched"] = int((expl["match"] == "none").sum())
    return out


def _plain(value):
    """JSON-ready: numpy scalars to Python, NaN to None (summary.json must be valid JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value


def _percentiles(values: np.ndarray) -> Dict[str, float]:
    if len(values) == 0:
        return {}
    out = {f"p{p:g}": float(np.percentile(values, p)) / 1e6 for p in PERCENTILES}
    out.update({"min": float(values.min()) / 1e6, "mean": float(values.mean()) / 1e6,
                "max": float(values.max()) / 1e6})
    return out


def _summary(run, frames, options, latency, ok, median, threshold, expl, causes, acc, warnings,
             ctx, elapsed) -> Dict[str, Any]:
    meta = run.meta
    txn = frames.txn
    outcomes = txn["outcome"].value_counts()
    outcomes = outcomes[outcomes > 0]
    kinds = frames.events["kind"].value_counts()
    kinds = kinds[kinds > 0]
    cited = ctx.cands.evidence_frame()["ev_row"].to_numpy()
    matched = len(np.union1d(np.flatnonzero(ctx.ev_ti >= 0), cited))
    return {
        "run": {"path": str(run.path), "kind": meta.kind, "status": meta.status, "scenario": meta.scenario,
                "command": " ".join(str(c) for c in meta.command), "kernel": meta.kernel,
                "distro": meta.distro, "bcc_version": meta.bcc_version, "started": meta.started_wall,
                "ended": meta.ended_wall, "tool_version": meta.tool_version, "source": frames.source},
        "options": {"threshold_ms": options.threshold_ms, "relative": options.relative,
                    "percentile": options.percentile, "effective_threshold_ms": threshold / 1e6,
                    "spike_rule": options.describe(), "match_slack_ms": options.match_slack_ms,
                    "min_cause_ms": options.min_cause_ms},
        "counts": {"transactions": int(len(txn)), "ok": int(ok.sum()),
                   "outcomes": {str(k): int(v) for k, v in outcomes.items()},
                   "spikes": int(len(expl)), "server_connections": int(len(frames.server)),
                   "events": int(len(frames.events)), "events_matched": matched,
                   "lost_events": int(meta.lost_events), "counts_recorded": bool(meta.counts),
                   "events_by_kind": {str(k): int(v) for k, v in kinds.items()}},
        "latency_ms": _percentiles(latency[ok] if ok.any() else latency),
        "median_ms": median / 1e6,
        "causes": [] if causes.empty else causes.to_dict(orient="records"),
        "accuracy": None if acc is None else acc.to_dict(orient="records"),
        "probes": dict(meta.probes or {}),
        "sysctls": dict(meta.sysctls or {}),
        "syn_rto": {"initial_s": facts.initial_syn_rto_s(meta), "linear_timeouts": facts.syn_linear_timeouts(meta),
                    "schedule_s": facts.syn_retransmit_times_s(facts.initial_syn_rto_s(meta),
                                                               facts.syn_linear_timeouts(meta), 5)},
        "warnings": list(warnings),
        "worst": [
            {"txn_id": int(r.txn_id), "latency_ms": r.latency_ns / 1e6, "cause": r.cause,
             "cause_detail": r.cause_detail, "sentence": r.sentence}
            for r in expl.head(20).itertuples()],
        "trace": _trace_summary(meta, frames),
        "app_log": _app_log_summary(frames, expl),
        "latency_population": {"transactions": "every transaction (bench records)",
                               "connections": "the connections the kernel sent in detail (slow or anomalous) only",
                               "app_log": "every entry of the application's log"}.get(frames.source, ""),
        "analysis_seconds": round(elapsed, 3),
        "cause_names": list(ALL_CAUSES),
        "share_columns": [f"{c}_ns" for c in CAUSES],
    }
