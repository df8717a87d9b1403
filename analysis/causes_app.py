"""The application's own time: the server holding a request (its read of the request to its
reply, with its thread's time in it) and the client's thread busy with other connections
(head-of-line blocking inside the client), from the conn_life probe and the connections' threads."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.context import Context
from analysis.join import pid_overlaps
from common.vocab import fmt_ns, fmt_rel


def detect_server_processing(ctx: Context) -> None:
    """The server held the request: from its read of the request to its reply, the longest
    such hold of the connection (`conn_life` probe: sock_recv_length / sock_send_length on the
    server's socket), by the thread that replied. Only where the tracer measured it (trace
    runs, with an application log or not); a run-queue wait of that thread inside the hold
    takes its own share (runq_delay comes first)."""
    if "srv_hold_ns" not in ctx.frames.txn:
        return
    ti = ctx.spikes
    hold, end = ctx.col("srv_hold_ns")[ti], ctx.col("srv_hold_end")[ti]
    t_start, t_end = ctx.col("t_start")[ti], ctx.col("end")[ti]
    a = end - hold
    # inside the transaction (an application entry's clock may be a little off the kernel's)
    ok = (hold > 0) & (end > t_start) & (a < t_end)
    if not ok.any():
        return
    ti, hold, a, b, t0 = ti[ok], hold[ok], a[ok], end[ok], t_start[ok]
    tid = ctx.col("srv_hold_tid")[ti]
    txn = ctx.frames.txn
    ran = ctx.col("srv_hold_ran")[ti] if "srv_hold_ran" in txn else np.full(len(ti), -1)
    waited = ctx.col("srv_hold_wait")[ti] if "srv_hold_wait" in txn else np.full(len(ti), -1)
    sentences, details = [], []
    for h, t, aa, bb, s, r, w in zip(hold, tid, a, b, t0, ran, waited):
        split, detail = _thread_split(int(h), int(r), int(w))
        details.append(detail)
        sentences.append(f"The server held the request {fmt_ns(h)} before replying (thread {int(t)} read it at "
                         f"{fmt_rel(aa - s)} and replied at {fmt_rel(bb - s)}{split}).")
    shorts = [f"the server held the request {fmt_ns(h)}" for h in hold]
    ctx.cands.add(ti, "server_processing", np.array(details, dtype=object), a, b, sentences, shorts)


def _thread_split(hold: int, ran: int, waited: int):
    """The serving thread's own time in a hold, from the scheduler's accounting (CPU time is
    up to a tick stale): "; of that, 198 ms off the CPU, 2.1 ms running" and the detail naming
    the largest part (off_cpu: sleeping, waiting for I/O, a lock or another process; on_cpu: the
    handler computing; runnable: waiting for a CPU). ("", "hold") when not measured."""
    if ran < 0 or waited < 0 or ran + waited > hold * 11 // 10:
        return "", "hold"
    ran, waited = min(ran, hold), min(waited, hold - min(ran, hold))
    off = hold - ran - waited
    parts = {"off_cpu": (off, "off the CPU (sleeping or blocked)"), "on_cpu": (ran, "running"),
             "runnable": (waited, "runnable, waiting for a CPU")}
    order = sorted(parts, key=lambda k: -parts[k][0])
    said = ", ".join(f"{fmt_ns(parts[k][0])} {parts[k][1]}" for k in order if parts[k][0] >= hold // 100 or k == order[0])
    return f"; of that, the thread was {said}", order[0]


def detect_client_blocked(ctx: Context) -> None:
    """Head-of-line blocking inside the client: a client thread that drives several connections
    (pgbench -j, event loops) sets up one at a time, so while it was connecting another one (from
    its SYN to its first reply: a blocking connect and handshake of the protocol) this request
    waited for the thread. From the kernel's connections, joined by the client thread (tid):
    only where the kernel recorded both (trace runs; the other connection slow or anomalous)."""
    k = ctx.frames.kernel
    txn = ctx.frames.txn
    if k is None or k.empty or "tid" not in txn or "tid" not in k:
        return
    ti = ctx.spikes[ctx.col("tid")[ctx.spikes] > 0]
    if len(ti) == 0:
        return
    own = ctx.col("conn_row")[ti] if "conn_row" in txn else (
        ti if ctx.frames.source == "connections" else np.full(len(ti), -1))
    k_tid = k["tid"].to_numpy().astype(np.int64)
    k_a = k["t_open"].to_numpy()
    first = k["cli_first_read"].to_numpy()
    est = k["t_established"].to_numpy()
    k_b = np.where(first > k_a, first, np.where(est > k_a, est, k["t_close"].to_numpy()))
    t_start, end = ctx.col("t_start")[ti], ctx.col("end")[ti]
    i, j = pid_overlaps(ctx.col("tid")[ti].astype(np.int64), t_start, end, k_tid, k_a, k_b)
    # a thread with two of its connections in their handshakes at once connects without
    # blocking (a blocking connect() returns at ESTABLISHED; an event loop: ab, wrk): another
    # connection's setup does not hold it
    hs_end = np.where(est > k_a, est, k["t_close"].to_numpy())
    keep = (j != own[i]) & ~np.isin(k_tid[j], _overlapping(k_tid, k_a, hs_end))
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return
    a = np.maximum(k_a[j], t_start[i])
    b = np.minimum(k_b[j], end[i])
    ok = b > a
    i, j, a, b = i[ok], j[ok], a[ok], b[ok]
    if len(i) == 0:
        return
    per = pd.DataFrame({"i": i, "a": a, "b": b, "syn": k["syn_retrans"].to_numpy()[j] > 0}).groupby("i")
    total, count, syn = per.apply(_union_ns), per.size(), per["syn"].any()
    tids = ctx.col("tid")[ti]
    sentences, shorts = [], []
    for ii in i.tolist():
        why = "; one of them had its SYN retransmitted" if syn[ii] else ""
        sentences.append(f"The client's thread {int(tids[ii])} was busy setting up {int(count[ii])} other "
                         f"connection(s) (connect() and their first reply) for {fmt_ns(total[ii])} while this "
                         f"request waited for it{why}.")
        shorts.append(f"the client's thread was busy with other connections for {fmt_ns(total[ii])}")
    ctx.cands.add(ti[i], "client_blocked", "other_connections", a, b, sentences, shorts)


def _overlapping(tid: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Threads (tid > 0) one of whose intervals [a, b) began before an earlier one of the same
    thread had ended."""
    order = np.lexsort((a, tid))
    t, aa, bb = tid[order], a[order], b[order]
    if len(t) < 2:
        return np.zeros(0, np.int64)
    running_end = pd.Series(bb).groupby(t).cummax().to_numpy()
    same = (t[1:] == t[:-1]) & (t[1:] > 0)
    return np.unique(t[1:][same & (aa[1:] < running_end[:-1])])


def _union_ns(g: pd.DataFrame) -> int:
    """Total length of the union of a group's [a, b) intervals."""
    total, end = 0, None
    for a, b in sorted(zip(g["a"].tolist(), g["b"].tolist())):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return int(total)
