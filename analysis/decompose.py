"""Turn candidate cause intervals into each spike's latency decomposition, primary cause and
sentence, and explain the rest as `unexplained` with the nearest evidence."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd

from analysis.context import ALL_CAUSES, CAUSES, PRIORITY, Context
from common.vocab import fmt_ns, fmt_rel
from analysis.join import nearest


def attribute(ti: np.ndarray, prio: np.ndarray, a: np.ndarray, b: np.ndarray, k: int) -> pd.DataFrame:
    """Split each transaction's time among overlapping cause intervals: every instant goes to
    the highest-priority cause active then, so shares never double count and never exceed the
    latency. Vectorised sweep: sort all interval ends per transaction, keep a running count of
    active intervals per priority (cumsum), and give each elementary segment to the first
    priority with a positive count. Returns (ti, prio, ns)."""
    keep = b > a
    ti, prio, a, b = ti[keep], prio[keep], a[keep], b[keep]
    n = len(ti)
    if n == 0:
        return pd.DataFrame({"ti": np.zeros(0, np.int64), "prio": np.zeros(0, np.int64), "ns": np.zeros(0, np.int64)})
    p_ti = np.r_[ti, ti]
    p_t = np.r_[a, b]
    p_prio = np.r_[prio, prio]
    p_d = np.r_[np.ones(n, np.int32), -np.ones(n, np.int32)]
    order = np.lexsort((-p_d, p_t, p_ti))  # at equal times open before close (zero-length anyway)
    p_ti, p_t, p_prio, p_d = p_ti[order], p_t[order], p_prio[order], p_d[order]
    delta = np.zeros((2 * n, k), dtype=np.int32)
    delta[np.arange(2 * n), p_prio] = p_d
    active = np.cumsum(delta, axis=0) > 0
    top = np.where(active.any(axis=1), active.argmax(axis=1), -1)
    seg = np.r_[p_t[1:] - p_t[:-1], 0]
    same = np.r_[p_ti[1:] == p_ti[:-1], False]
    use = same & (top >= 0) & (seg > 0)
    out = pd.DataFrame({"ti": p_ti[use], "prio": top[use], "ns": seg[use]})
    return out.groupby(["ti", "prio"], as_index=False, sort=True)["ns"].sum()


def explain(ctx: Context) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """The explanations (one row per explained transaction) and the evidence table
    (ti, cause, ev_row) they cite."""
    cands = ctx.cands.frame()
    evidence = ctx.cands.evidence_frame()
    spikes = ctx.spikes
    t_start, end = ctx.col("t_start"), ctx.col("end")
    latency = end - t_start
    if len(cands):
        cands["a"] = np.clip(cands["a"].to_numpy(), t_start[cands["ti"].to_numpy()], end[cands["ti"].to_numpy()])
        cands["b"] = np.clip(cands["b"].to_numpy(), t_start[cands["ti"].to_numpy()], end[cands["ti"].to_numpy()])
    prio = cands["cause"].map(PRIORITY).to_numpy(dtype=np.int64)
    shares = attribute(cands["ti"].to_numpy(), prio, cands["a"].to_numpy(), cands["b"].to_numpy(), len(CAUSES))
    pos = np.full(len(t_start), -1, dtype=np.int64)
    pos[spikes] = np.arange(len(spikes))
    share = np.zeros((len(spikes), len(CAUSES)), dtype=np.int64)
    share[pos[shares["ti"].to_numpy()], shares["prio"].to_numpy()] = shares["ns"].to_numpy()

    lat = latency[spikes]
    excess = np.maximum(lat - ctx.median_latency_ns, 1)
    # a cause is named when it accounts for at least min_cause_ms and 2% of the latency (a 5 ms
    # wait inside a 1 s SYN retransmit is not worth a word)
    min_ns = np.maximum(ctx.options.min_cause_ms * 1e6, 0.02 * latency[spikes])
    listed = share >= min_ns[:, None]
    explained = np.where(listed, share, 0).sum(axis=1)
    best = share.argmax(axis=1)
    has_cause = listed[np.arange(len(spikes)), best] & (explained >= ctx.options.min_explained * excess)
    primary = np.where(has_cause, np.array(CAUSES, dtype=object)[best], "unexplained")

    # per (ti, cause): the detail and sentence of the candidate with the longest interval
    cands["len"] = cands["b"] - cands["a"]
    top = cands.sort_values(["ti", "cause", "len"], ascending=[True, True, False]).drop_duplicates(["ti", "cause"])
    top = {(t, c): (d, s, sh, inf) for t, c, d, s, sh, inf in zip(
        top["ti"].tolist(), top["cause"].tolist(), top["detail"].tolist(), top["sentence"].tolist(),
        top["short"].tolist(), top["inferred"].tolist())}

    order = np.argsort(-share, axis=1, kind="stable")
    cause_lists, details, sentences, inferred = [], [], [], []
    unexp_sentence, nearest_rows = _unexplained_sentences(ctx, spikes, lat, explained, primary == "unexplained")
    for r, t in enumerate(spikes.tolist()):
        names = [CAUSES[c] for c in order[r] if listed[r, c]]
        if primary[r] == "unexplained":
            detail = ""
            sentence = unexp_sentence[r]
            others = names
            names = ["unexplained"] + names
        else:
            detail, sentence, _, _ = top[(t, primary[r])]
            others = names[1:]
        if others:
            also = "; ".join(top[(t, c)][2] for c in others)
            sentence = f"{sentence} Also: {also}."
        cause_lists.append(",".join(names))
        details.append(str(detail))
        sentences.append(sentence)
        inferred.append(primary[r] != "unexplained" and bool(top[(t, primary[r])][3]))

    txn = ctx.frames.txn
    out = pd.DataFrame({
        "txn_id": txn["id"].to_numpy()[spikes].astype(np.int64),
        "worker": txn["worker"].to_numpy()[spikes].astype(np.int32) if "worker" in txn else 0,
        "pid": ctx.col("pid")[spikes].astype(np.int32),
        "local_port": ctx.col("local_port")[spikes].astype(np.int32),
        "t_start": t_start[spikes].astype(np.int64),
        "latency_ns": lat.astype(np.int64),
        "outcome": ctx.col("outcome")[spikes].astype(str),
        "cause": primary.astype(object),
        "cause_detail": np.array(details, dtype=object),
        "causes": np.array(cause_lists, dtype=object),
    })
    for c, name in enumerate(CAUSES):
        out[f"{name}_ns"] = share[:, c]
    out["explained_ns"] = explained.astype(np.int64)
    out["rest_ns"] = (lat - explained).astype(np.int64)
    out["inferred"] = np.array(inferred, dtype=bool)
    out["sentence"] = np.array(sentences, dtype=object)
    # cite only the evidence of the causes named (a 5 ms run-queue blip inside a 1 s SYN
    # retransmit is in the timeline of `spiketrace explain`, not in the explanation)
    if len(evidence):
        named = pd.DataFrame({"ti": np.repeat(spikes, [len(c.split(",")) for c in cause_lists]),
                              "cause": [c for cs in cause_lists for c in cs.split(",")]})
        evidence = evidence.merge(named, on=["ti", "cause"], how="inner")
    ev_lists = _evidence_lists(evidence, spikes, primary, nearest_rows)
    if nearest_rows:  # an unexplained spike shows its nearest kernel event as evidence
        near = pd.DataFrame({"ti": list(nearest_rows), "cause": "nearest", "ev_row": list(nearest_rows.values())})
        evidence = pd.concat([evidence, near], ignore_index=True)
    out["evidence_events"] = ev_lists
    for col, default in (("source", ""), ("match", ""), ("match_distance_ns", -1)):
        out[col] = txn[col].to_numpy()[spikes] if col in txn else np.full(len(spikes), default)
    out["match_distance_ns"] = out["match_distance_ns"].astype(np.int64)
    out["server_conn"] = np.where(ctx.txn_srv[spikes] >= 0,
                                  ctx.frames.server["conn_id"].to_numpy()[np.maximum(ctx.txn_srv[spikes], 0)]
                                  if len(ctx.frames.server) else -1, -1).astype(np.int64)
    return out, evidence


def _evidence_lists(evidence: pd.DataFrame, spikes: np.ndarray, primary: np.ndarray, near: dict) -> list:
    """Per spike: the events.parquet rows cited (capped at 50, the rest are in the evidence
    table), plus, for an unexplained spike, its nearest kernel event."""
    per = {}
    if len(evidence):
        ev = evidence.drop_duplicates(["ti", "ev_row"]).sort_values(["ti", "ev_row"])
        tis = ev["ti"].to_numpy()
        rows = ev["ev_row"].to_numpy()
        bounds = np.flatnonzero(np.r_[True, tis[1:] != tis[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            per[int(tis[lo])] = rows[lo:min(hi, lo + 50)].tolist()
    out = []
    for t, p in zip(spikes.tolist(), primary):
        rows = per.get(t, [])
        if p == "unexplained" and t in near and near[t] not in rows:
            rows = rows + [near[t]]
        out.append(rows)
    return out


def _unexplained_sentences(ctx: Context, spikes: np.ndarray, lat: np.ndarray, explained: np.ndarray,
                           need: np.ndarray):
    """"No kernel evidence accounts for ..." with the nearest event in time (any connection)."""
    ev = ctx.frames.events
    t_ev = ev["t_ns"].to_numpy()
    order = np.argsort(t_ev, kind="stable")
    t_start, end = ctx.col("t_start")[spikes], ctx.col("end")[spikes]
    idx, dist = nearest(t_ev[order], t_start, end)
    lost = ctx.meta.lost_events if hasattr(ctx.meta, "lost_events") else 0
    kinds = ev["kind"]
    ev_rows = ev["ev_row"].to_numpy()
    sport, dport = ev["sport"].to_numpy(), ev["dport"].to_numpy()
    overflow = ctx.growth("TcpExt.ListenOverflows", t_start, end)
    txn = ctx.frames.txn
    unmatched = (txn["match"].to_numpy()[spikes] == "none") if "match" in txn else np.zeros(len(spikes), bool)
    nearest_rows = {}
    out = [""] * len(spikes)
    for r in np.flatnonzero(need).tolist():
        missing = fmt_ns(lat[r] - explained[r])
        if idx[r] < 0:
            text = f"No kernel evidence accounts for {missing} of its {fmt_ns(lat[r])}: no kernel event was recorded"
        else:
            e = order[idx[r]]
            nearest_rows[int(spikes[r])] = int(ev_rows[e])
            own = ctx.ev_ti[e] == spikes[r]
            where = ("during it" if dist[r] == 0 else
                     f"{fmt_ns(dist[r])} {'before' if t_ev[e] < t_start[r] else 'after'} it")
            if own:
                conn = "on this connection"
            elif sport[e] == 0 and dport[e] == 0:  # per-thread evidence (run-queue delay): no socket
                conn = f"of thread {ev['pid'].iat[e]} ({ev['comm'].iat[e]})"
            else:
                conn = f"on another connection (ports {sport[e]}->{dport[e]})"
            text = (f"No kernel evidence accounts for {missing} of its {fmt_ns(lat[r])}; the nearest kernel event "
                    f"was a {kinds.iat[e]} {conn}, {where}"
                    + (f" at {fmt_rel(t_ev[e] - t_start[r])}" if dist[r] == 0 else ""))
        if unmatched[r]:
            text = ("No kernel connection matched this entry (none recorded as slow or anomalous at its time: "
                    "the time went outside a connection, or the connection was not traced). " + text)
        if overflow[r] > 0:
            text += f"; ListenOverflows grew by {overflow[r]} meanwhile"
        if lost:
            text += f" ({lost:,} events were lost in this run)"
        out[r] = text + "."
    return out, nearest_rows


def summarise_causes(expl: pd.DataFrame) -> pd.DataFrame:
    """Spikes by primary cause: count, share of spikes, total and median latency, time explained."""
    rows = []
    total = max(len(expl), 1)
    for cause in ALL_CAUSES:
        sel = expl[expl["cause"] == cause]
        if sel.empty:
            continue
        col = f"{cause}_ns"
        rows.append({
            "cause": cause, "spikes": int(len(sel)), "percent": 100.0 * len(sel) / total,
            "median_latency_ms": float(np.median(sel["latency_ns"])) / 1e6,
            "max_latency_ms": float(sel["latency_ns"].max()) / 1e6,
            "time_s": float(sel[col].sum()) / 1e9 if col in sel else float(sel["rest_ns"].sum()) / 1e9,
            "details": {str(k): int(v) for k, v in sel["cause_detail"].value_counts().items() if k},
            "inferred": int(sel["inferred"].sum()),
        })
    return pd.DataFrame(rows)
