"""The full timeline of one transaction: client and server phases, the kernel events joined to it
(by 4-tuple and time, or by thread), and counter changes meanwhile. Data only; the
`spiketrace explain` command renders it."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from analysis.core import AnalysisResult, analyse
from analysis.options import AnalysisOptions
from common.errors import SpikeTraceError
from common.vocab import describe_event, errno_name, fmt_ns

CLIENT_PHASES = (("t_start", "transaction starts (socket created)"), ("t_connected", "connect() returned"),
                 ("t_reply1", "first echo received"), ("t_reply2", "second echo received"),
                 ("t_end", "socket closed"))
SERVER_PHASES = (("t_accept", "accept() returned"), ("t_request1", "request 1 read"),
                 ("t_reply1", "echo 1 sent"), ("t_request2", "request 2 read"), ("t_reply2", "echo 2 sent"),
                 ("t_eof", "client's EOF read"), ("t_close", "close() returned"))
COUNTERS = ("TcpExt.ListenOverflows", "TcpExt.ListenDrops", "TcpExt.TCPSynRetrans", "TcpExt.TCPTimeouts",
            "TcpExt.TCPLossProbes", "TcpExt.DelayedACKs", "Tcp.RetransSegs", "Tcp.AttemptFails")


@dataclasses.dataclass
class Timeline:
    txn: Dict[str, Any]
    explanation: Optional[Dict[str, Any]]  # the explanations row, None if nothing to explain
    rows: List[Dict[str, Any]]  # t_rel_ns, column (client/server/kernel/counter), text
    slow: bool  # a spike under the run's thresholds
    warnings: List[str]
    threshold_ns: float = 0.0
    phases: List[Tuple[str, int, str]] = dataclasses.field(default_factory=list)  # (name, ns, note): they add up


def explain_transaction(run, txn_id: int, options: AnalysisOptions = AnalysisOptions(), app_log=None) -> Timeline:
    result = analyse(run, dataclasses.replace(options, only_ids=[int(txn_id)]), app_log=app_log)
    ids = result.context.frames.txn["id"].to_numpy()
    if not np.isin(txn_id, ids):
        hint = f" (ids go from {ids.min()} to {ids.max()})" if len(ids) else ""
        raise SpikeTraceError(f"{run.path}: no transaction with id {txn_id}{hint}")
    return build_timeline(result, int(txn_id))


# what the phases are when the transactions are kernel connections or application log entries
PHASE_TEXT = {
    "connections": {"t_start": "SYN sent (connection opened)", "t_connected": "ESTABLISHED",
                    "t_reply1": "first data", "t_end": "connection closed"},
    "app_log": {"t_start": "entry starts (application log)", "t_connected": "ESTABLISHED (kernel)",
                "t_reply1": "first data (kernel)", "t_end": "entry ends (application log)"},
}


def build_timeline(result: AnalysisResult, txn_id: int) -> Timeline:
    ctx = result.context
    txn = ctx.frames.txn
    ti = int(np.flatnonzero(txn["id"].to_numpy() == txn_id)[0])
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in txn.iloc[ti].items()}
    t0 = int(row["t_start"])
    rows: List[Dict[str, Any]] = []

    def add(t: int, column: str, text: str, ev_row: int = -1) -> None:
        rows.append({"t_ns": int(t), "t_rel_ns": int(t) - t0, "column": column, "text": text, "ev_row": ev_row})

    texts = PHASE_TEXT.get(ctx.frames.source, {})
    for col, text in CLIENT_PHASES:
        text = texts.get(col, text)
        if row[col]:
            extra = ""
            if col == "t_connected" and row["connect_attempts"] > 1:
                err = errno_name(row["last_errno"])
                extra = f" after {row['connect_attempts']} attempts (last error {err})"
            add(row[col], "client", text + extra)
    # the server's side of the conversation, where the kernel measured it (conn_life probe)
    hold, hold_end = int(row.get("srv_hold_ns", 0) or 0), int(row.get("srv_hold_end", 0) or 0)
    if hold > 0 and hold_end > 0:
        tid = int(row.get("srv_hold_tid", 0) or 0)
        add(hold_end - hold, "server", f"read the request (kernel; thread {tid})")
        add(hold_end, "server", f"replied after holding it {fmt_ns(hold)} (kernel; thread {tid})")
    srv = ctx.txn_srv[ti]
    if srv >= 0:
        s = ctx.frames.server.iloc[int(srv)]
        for col, text in SERVER_PHASES:
            if s[col]:
                add(int(s[col]), "server", text)
    ev = ctx.frames.events
    own = np.flatnonzero(ctx.ev_ti == ti)
    mine = result.evidence[result.evidence["txn_id"] == txn_id] if len(result.evidence) else None
    cited = mine["ev_row"].to_numpy() if mine is not None else []
    # cited only as the nearest evidence of an unexplained time: another transaction's or thread's
    as_cause = set(mine[mine["cause"] != "nearest"]["ev_row"].tolist()) if mine is not None else set()
    drops, resets = ctx.meta.reason_names("drop"), ctx.meta.reason_names("reset")
    end = int(row["end"])
    for e in np.union1d(own, cited).astype(np.int64):
        text = describe_event(ev.iloc[e], drops, resets)
        if ctx.ev_ti[e] != ti and int(e) not in as_cause:
            text += " " + outside_note(ev.iloc[e], t0, end, ctx.frames.txn, int(ctx.ev_ti[e]))
        add(int(ev["t_ns"].iat[e]), "kernel", text, int(e))
    for name in COUNTERS + tuple(n for n in ctx.frames.counters.names() if n.startswith("listen.")):
        for t, before, after in counter_changes(ctx.frames.counters, name, t0 - ctx.period_ns, end + ctx.period_ns):
            add(t, "counter", f"{name} {before} -> {after}")
    rows.sort(key=lambda r: (r["t_ns"], r["column"]))
    expl = None
    if len(result.explanations):
        expl = result.explanations.iloc[0].to_dict()
    slow = bool(row["latency_ns"] >= result.threshold_ns) if result.threshold_ns else True
    return Timeline(txn=row, explanation=expl, rows=rows, slow=slow, warnings=list(result.warnings),
                    threshold_ns=result.threshold_ns, phases=phases_of(row))


def phases_of(row: Dict[str, Any]) -> List[Tuple[str, int, str]]:
    """A transaction's latency as consecutive phases that add up to it, from the times the
    kernel and the bench recorded: the handshake (SYN sent -> ESTABLISHED), then, where the
    server's conversation was traced, until the server read the request (accept-queue wait and
    request in flight), the server's processing (its hold, with its thread's time), and the
    reply in flight, the client's own time and the close; with the bench's records, its two
    exchanges and the close; else connected -> end."""
    def t(name):
        v = row.get(name, 0)
        return int(v) if v is not None and v == v and int(v) > 0 else 0

    start, end = t("t_start"), int(row.get("end", 0) or 0) or t("t_end")
    if not start or end <= start:
        return []
    marks = [("handshake", t("t_connected"), "")]
    hold, hold_end = t("srv_hold_ns"), t("srv_hold_end")
    if hold and start < hold_end - hold and hold_end <= end:
        ran, waited = (int(row[c]) if row.get(c) is not None else -1 for c in ("srv_hold_ran", "srv_hold_wait"))
        split = ""
        if 0 <= ran and 0 <= waited and ran + waited <= hold * 11 // 10:
            off = max(hold - ran - waited, 0)
            split = (f" (its thread off the CPU {fmt_ns(off)}, running {fmt_ns(min(ran, hold))}, "
                     f"runnable {fmt_ns(min(waited, hold))})")
        marks += [("until the server read the request", hold_end - hold, ""),
                  ("server processing", hold_end, split), ("reply, client and close", end, "")]
    elif t("t_reply1"):  # the bench's own records: its two exchanges, then the close
        marks += [("request and first reply", t("t_reply1"), ""), ("second exchange", t("t_reply2"), ""),
                  ("close", end, "")]
    else:
        marks.append(("connected to end" if t("t_connected") else "to end", end, ""))
    out, prev = [], start
    for name, at, note in marks:
        if at <= 0 or at < prev:
            continue
        out.append((name, min(at, end) - prev, note))
        prev = min(at, end)
    return out


# events whose `value` is a wait that ended at t_ns (the wait began value ns earlier)
WAIT_KINDS = ("runq_delay", "accept_wait")


def outside_note(event, t0: int, end: int, txn, other_ti: int) -> str:
    """Why an event shown in a transaction's timeline is not part of it: shown as the nearest
    kernel evidence, it happened before, after, or beside it (another connection's, or a thread
    that is not this transaction's)."""
    t_b = int(event["t_ns"])
    t_a = t_b - max(int(event["value"]), 0) if event["kind"] in WAIT_KINDS else t_b
    if t_b < t0:
        when = f"it ended {fmt_ns(t0 - t_b)} before this transaction started"
    elif t_a > end:
        when = f"it began {fmt_ns(t_a - end)} after this transaction ended"
    elif event["kind"] == "runq_delay":
        when = "during it, but the delayed thread is not this transaction's client or server thread"
    else:
        when = "during it, on another connection"
    owner = f"; it belongs to transaction {int(txn['id'].iat[other_ti])}" if other_ti >= 0 else ""
    return f"[outside this transaction: {when}{owner}; shown as the nearest kernel evidence]"


def counter_changes(counters, name: str, a: int, b: int):
    if name not in counters.series:
        return []
    ts, vs = counters.series[name]
    lo, hi = np.searchsorted(ts, a, side="left"), np.searchsorted(ts, b, side="right")
    out = []
    for i in range(max(lo, 1), hi):
        if vs[i] != vs[i - 1]:
            out.append((int(ts[i]), int(vs[i - 1]), int(vs[i])))
    return out
