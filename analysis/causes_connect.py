"""Causes that delay connection set-up: SYN and SYN-ACK retransmits, port exhaustion, refused
and reset connections. Each detector adds candidate intervals, a sentence and evidence rows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import facts
from analysis.context import Context, group_first
from common.vocab import CONN_GAP, CONN_PARTIAL, CONN_REFUSED, CONN_RESET, fmt_ns, fmt_rel
from analysis.join import pid_overlaps


def _backlog_text(backlog: int) -> str:
    return f" (backlog {backlog})" if backlog >= 0 else ""


def _rto_phrase(first_gap_ns: float, n: int, times_ns: list, ctx: Context) -> str:
    """How the client's retransmits were timed, in the words of FACT syn-rto / syn-backoff."""
    gap_s = first_gap_ns / 1e9
    if abs(gap_s - facts.SYN_RTO_LEGACY_S) <= 0.3:
        first = "the 3 s initial RTO (the pre-3.1 default, as on CentOS 5)"
    elif abs(gap_s - facts.SYN_RTO_MODERN_S) <= 0.15:
        first = "the 1 s initial RTO"
    else:
        first = fmt_ns(first_gap_ns)
    if n <= 1:
        return f"the client retransmitted it after {first}"
    at = ", ".join(fmt_rel(t) for t in times_ns[:6])
    linear = facts.syn_linear_timeouts(ctx.meta)
    how = (f"the first retransmits stay 1 s apart with tcp_syn_linear_timeouts={linear}" if linear
           else "the RTO doubles after each retransmit")
    return f"the client retransmitted it {n} times (at {at}; {how}), the first after {first}"


def detect_syn_retransmit(ctx: Context) -> None:
    """FACT syn-rto: a SYN that gets no answer is retransmitted after the initial RTO; the time
    from the first SYN to the retransmit that was answered is lost (t_retransmit - t_start)."""
    syn = ctx.spike_events(["retransmit"], side="client")
    syn = syn[syn["state"].isin([facts.SYN_SENT])]
    t_start = ctx.col("t_start")
    found_ti = np.zeros(0, dtype=np.int64)
    if len(syn):
        g = group_first(syn)
        ti, n, t_first, t_last = g["ti"], g["n"], g["t_first"], g["t_last"]
        srt = syn.sort_values(["ti", "t_ns"], kind="stable")
        times = dict(zip(ti.tolist(), np.split(srt["t_ns"].to_numpy(), np.cumsum(n)[:-1])))
        detail, why = _syn_why(ctx, ti, t_start[ti], t_last)
        sentences, shorts = [], []
        for k in range(len(ti)):
            rel = (times[ti[k]] - t_start[ti[k]]).tolist()
            phrase = _rto_phrase(t_first[k] - t_start[ti[k]], int(n[k]), rel, ctx)
            sentences.append(f"{why[k]}; {phrase}.")
            shorts.append(f"a SYN retransmit ({detail[k]}) cost {fmt_ns(t_last[k] - t_start[ti[k]])}")
        ctx.cands.add(ti, "syn_retransmit", detail, t_start[ti], t_last, sentences, shorts)
        ctx.cands.cite(syn["ti"].to_numpy(), "syn_retransmit", syn["ev_row"].to_numpy())
        found_ti = ti
    synack = ctx.spike_events(["synack_retransmit"])["ti"].to_numpy(dtype=np.int64)
    _infer_syn_from_timing(ctx, exclude=np.union1d(found_ti, synack))


def _listener_full(ctx: Context, ti: np.ndarray, b: np.ndarray, final_ack: int, cause: str) -> dict:
    """k -> "the accept queue of the listener on port P (backlog B) was full: Q waiting", from
    the first listen_overflow event (kprobes.c: a SYN, reason 0, or a final ACK, reason 1, that
    met the full queue, with the listener and the client) joined to transaction ti[k] before
    b[k]; its rows are cited for `cause`."""
    ev = ctx.spike_events(["listen_overflow"])
    ev = ev[(ev["reason"].to_numpy() == final_ack) & ev["ti"].isin(ti).to_numpy()]
    if len(ev) == 0:
        return {}
    pos = pd.Series(np.arange(len(ti)), index=ti)
    k = pos.loc[ev["ti"].to_numpy()].to_numpy()
    keep = ev["t_ns"].to_numpy() < b[k]
    ev, k = ev[keep], k[keep]
    ctx.cands.cite(ev["ti"].to_numpy(), cause, ev["ev_row"].to_numpy())
    out = {}
    for kk, port, queue, backlog in zip(k, ev["sport"].to_numpy(), ev["value"].to_numpy(),
                                        ev["value2"].to_numpy()):
        out.setdefault(int(kk), f"the accept queue of the listener on port {int(port)} (backlog "
                                f"{int(backlog)}) was full: {int(queue)} waiting")
    return out


def _syn_why(ctx: Context, ti: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Why the SYN went unanswered: a drop event with its reason (drop:<REASON>), a full accept
    queue (listen_overflow: FACT accept-queue, the SYN is dropped silently and only
    ListenOverflows counts it), else no_answer."""
    detail = np.full(len(ti), "no_answer", dtype=object)
    why = np.full(len(ti), "The SYN got no answer (no drop and no listen overflow was recorded)",
                  dtype=object)
    port = ctx.col("remote_port")[ti]
    overflow = ctx.growth("TcpExt.ListenOverflows", a, b - 1)
    backlog = ctx.backlog(port, a)
    queue = ctx.queue_max(port, a - ctx.period_ns, a + ctx.period_ns)
    full = (queue >= 0) & (backlog >= 0) & (queue > backlog)  # FACT accept-queue: holds backlog+1
    for k in np.flatnonzero((overflow > 0) | full):
        detail[k] = "listen_overflow"
        evidence = f"ListenOverflows +{overflow[k]}" if overflow[k] > 0 else f"queue {queue[k]} > backlog {backlog[k]}"
        why[k] = (f"The SYN was dropped because the accept queue{_backlog_text(backlog[k])} was full "
                  f"({evidence})")
    # the listener itself, where a function probe saw the SYN meet its full queue
    for k, text in _listener_full(ctx, ti, b, 0, "syn_retransmit").items():
        detail[k] = "listen_overflow"
        counted = f" (ListenOverflows +{overflow[k]})" if overflow[k] > 0 else ""
        why[k] = f"The SYN was dropped because {text}{counted}"
    drops = ctx.spike_events(["drop"])
    if len(drops):
        names = facts.drop_reason_names(ctx.meta)
        pos = pd.Series(np.arange(len(ti)), index=ti)
        drops = drops[drops["ti"].isin(ti)]
        k = pos.loc[drops["ti"].to_numpy()].to_numpy()
        inside = drops["t_ns"].to_numpy() < b[k]
        for kk, reason, row, tid in zip(k[inside], drops["reason"].to_numpy()[inside],
                                        drops["ev_row"].to_numpy()[inside], drops["ti"].to_numpy()[inside]):
            name = names.get(int(reason), str(int(reason)))
            detail[kk] = f"drop:{name}"
            why[kk] = f"The SYN was {facts.describe_drop(name)}"
        ctx.cands.cite(drops["ti"].to_numpy()[inside], "syn_retransmit", drops["ev_row"].to_numpy()[inside])
    return detail, why


def _infer_syn_from_timing(ctx: Context, exclude: np.ndarray) -> None:
    """No retransmit event (lost, or no probe), yet connect() took exactly a SYN backoff step:
    name the SYN retransmit from timing alone (FACT syn-backoff) and say it was inferred."""
    ti = ctx.spikes[~np.isin(ctx.spikes, exclude)]
    t_start, t_conn = ctx.col("t_start")[ti], ctx.col("t_connected")[ti]
    attempts = ctx.col("connect_attempts")[ti]
    dur = np.where(t_conn > 0, t_conn - t_start, 0)
    times = np.array(facts.syn_retransmit_times_s(facts.initial_syn_rto_s(ctx.meta),
                                                  facts.syn_linear_timeouts(ctx.meta))) * 1e9
    if len(ti) == 0:
        return
    diff = np.abs(dur[:, None] - times[None, :])
    step = diff.argmin(axis=1)
    ok = (diff[np.arange(len(ti)), step] <= 0.05 * times[step] + 30e6) & (attempts <= 1) & (dur > 0)
    if not ok.any():
        return
    ti, step = ti[ok], step[ok]
    b = t_start[ok] + times[step].astype(np.int64)
    b = np.minimum(b, t_conn[ok])
    detail, why = _syn_why(ctx, ti, t_start[ok], b)
    # a record the tracer knows is incomplete (CONN_GAP) says so
    gap = ((ctx.col("conn_flags")[ti] & CONN_GAP) > 0 if "conn_flags" in ctx.frames.txn
           else np.zeros(len(ti), bool))
    missed = "; the tracer missed a state change of this connection, a probe run the kernel skipped"
    sentences = [f"{w}; connect() took {fmt_ns(d)}, the time of {s + 1} SYN retransmit(s) "
                 f"(inferred from timing: no retransmit event was recorded{missed if g else ''})."
                 for w, d, s, g in zip(why, dur[ok], step, gap)]
    shorts = [f"a SYN retransmit (inferred) cost {fmt_ns(d)}" for d in b - t_start[ok]]
    ctx.cands.add(ti, "syn_retransmit", detail, t_start[ok], b, sentences, shorts, inferred=True)


def detect_synack_retransmit(ctx: Context) -> None:
    """FACT accept-queue: a final ACK that arrives while the accept queue is full is dropped and
    the server retransmits its SYN-ACK; the client's request waits until then."""
    ev = ctx.spike_events(["synack_retransmit"])
    if len(ev) == 0:
        return
    g = group_first(ev)
    ti, n, t_last = g["ti"], g["n"], g["t_last"]
    t_start, t_conn = ctx.col("t_start")[ti], ctx.col("t_connected")[ti]
    a = np.where((t_conn > 0) & (t_conn <= t_last), t_conn, t_start)
    port = ctx.col("remote_port")[ti]
    overflow = ctx.growth("TcpExt.ListenOverflows", a - ctx.period_ns, t_last)
    backlog = ctx.backlog(port, a)
    queue = ctx.queue_max(port, a - ctx.period_ns, t_last)
    full = (overflow > 0) | ((queue >= 0) & (backlog >= 0) & (queue > backlog))
    listener = _listener_full(ctx, ti, t_last, 1, "synack_retransmit")
    sentences, shorts, details = [], [], []
    for k in range(len(ti)):
        when = fmt_rel(t_last[k] - t_start[k])
        times = f"{n[k]} times, the last at {when}" if n[k] > 1 else f"at {when}"
        if k in listener:
            counted = f" (ListenOverflows +{overflow[k]})" if overflow[k] > 0 else ""
            sentences.append(
                f"The server retransmitted its SYN-ACK ({times}) because the client's final ACK was dropped "
                f"while {listener[k]}{counted}; the request waited {fmt_ns(t_last[k] - a[k])} for the "
                f"handshake to complete.")
            details.append("listen_overflow")
        elif full[k]:
            ev_text = f"ListenOverflows +{overflow[k]}" if overflow[k] > 0 else f"queue {queue[k]} > backlog {backlog[k]}"
            sentences.append(
                f"The server retransmitted its SYN-ACK ({times}) because the client's final ACK was dropped "
                f"while the accept queue{_backlog_text(backlog[k])} was full ({ev_text}); the request waited "
                f"{fmt_ns(t_last[k] - a[k])} for the handshake to complete.")
            details.append("listen_overflow")
        else:
            sentences.append(
                f"The server retransmitted its SYN-ACK ({times}): the handshake's last ACK or the SYN-ACK was "
                f"lost; the request waited {fmt_ns(t_last[k] - a[k])} for the handshake to complete.")
            details.append("lost_ack")
        shorts.append(f"a SYN-ACK retransmit cost {fmt_ns(t_last[k] - a[k])}")
    ctx.cands.add(ti, "synack_retransmit", np.array(details, dtype=object), a, t_last, sentences, shorts)
    ctx.cands.cite(ev["ti"].to_numpy(), "synack_retransmit", ev["ev_row"].to_numpy())


def _connect_errors(ctx: Context, errno: int) -> pd.DataFrame:
    """connect() error streaks with this errno, joined to spike transactions by 4-tuple or, when
    the failed socket had no port yet, by thread and time (value2 = streak start)."""
    ev = ctx.frames.events
    mask = (ev["kind"] == "connect_error").to_numpy() & (ev["reason"].to_numpy() == errno)
    if not mask.any():
        return pd.DataFrame(columns=["ti", "t_ns", "value", "value2", "ev_row"])
    errs = ev[mask]
    by_tuple = errs[(ctx.ev_ti[mask] >= 0)].copy()
    by_tuple["ti"] = ctx.ev_ti[mask][ctx.ev_ti[mask] >= 0]
    by_tuple = by_tuple[ctx.in_spikes[by_tuple["ti"].to_numpy()]]
    loose = errs[ctx.ev_ti[mask] < 0]
    ti = ctx.spikes
    t_ns = loose["t_ns"].to_numpy()
    v2 = loose["value2"].to_numpy()
    ev_a = np.where((v2 > 0) & (v2 <= t_ns), v2, t_ns)
    # thread-joined evidence is timed by the same clock as the transaction: no slack (a streak
    # that ended just before t_start belongs to the previous transaction of that thread)
    i, j = pid_overlaps(ctx.col("pid")[ti], ctx.col("t_start")[ti], ctx.col("end")[ti],
                        loose["pid"].to_numpy(), ev_a, t_ns)
    by_pid = loose.iloc[j].copy()
    by_pid["ti"] = ti[i]
    return pd.concat([by_tuple, by_pid], ignore_index=True)


def detect_port_exhaustion(ctx: Context) -> None:
    """connect() failing with EADDRNOTAVAIL: no free local port, typically because the range is
    full of TIME_WAIT sockets (FACT time-wait: each stays 60 s)."""
    ti_all = ctx.spikes
    attempts, errno = ctx.col("connect_attempts"), ctx.col("last_errno")
    errs = _connect_errors(ctx, facts.EADDRNOTAVAIL)
    from_txn = ti_all[(errno[ti_all] == facts.EADDRNOTAVAIL) &
                      ((attempts[ti_all] > 1) | (ctx.col("outcome")[ti_all] == "connect_failed"))]
    ti = np.union1d(from_txn, errs["ti"].to_numpy(dtype=np.int64)).astype(np.int64)
    if len(ti) == 0:
        return
    t_start, t_conn, end = ctx.col("t_start")[ti], ctx.col("t_connected")[ti], ctx.col("end")[ti]
    last_err = errs.groupby("ti")["t_ns"].max() if len(errs) else pd.Series(dtype=np.int64)
    ev_count = errs.groupby("ti")["value"].max() if len(errs) else pd.Series(dtype=np.int64)
    b_event = last_err.reindex(ti).fillna(0).to_numpy(dtype=np.int64)
    b = np.where(b_event > 0, b_event, np.where(t_conn > 0, t_conn, end))
    failures = np.maximum(attempts[ti] - 1, ev_count.reindex(ti).fillna(0).to_numpy(dtype=np.int64))
    # the census at its fullest while connect() failed (sampled every period: the value at the
    # start can predate the sockets that filled the range)
    tw = ctx.frames.counters.window_max("sockstat.tw", t_start, b + ctx.period_ns)
    prange = facts.local_port_range(ctx.meta)
    reuse = _tw_reuse_text(ctx.meta)
    range_text = f", local port range {prange[0]}-{prange[1]} = {prange[1] - prange[0] + 1:,} ports" if prange else ""
    failed = ctx.col("outcome")[ti] == "connect_failed"
    sentences, shorts = [], []
    for k in range(len(ti)):
        census = f"{tw[k]:,} sockets in TIME_WAIT" if tw is not None else "TIME_WAIT census not sampled"
        times = f"{failures[k]:,} times " if failures[k] > 0 else ""
        end_text = ("the transaction gave up" if failed[k] else
                    f"a port was free after {fmt_ns(b[k] - t_start[k])}{reuse}")
        sentences.append(f"connect() failed {times}with EADDRNOTAVAIL: no local port was free "
                         f"({census}{range_text}); {end_text}.")
        shorts.append(f"port exhaustion (EADDRNOTAVAIL) cost {fmt_ns(b[k] - t_start[k])}")
    ctx.cands.add(ti, "port_exhaustion", "eaddrnotavail", t_start, b, sentences, shorts)
    ctx.cands.cite(errs["ti"].to_numpy(), "port_exhaustion", errs["ev_row"].to_numpy())


def _tw_reuse_text(meta) -> str:
    """Which rule frees a port in TIME_WAIT for a new connect() (net.ipv4.tcp_tw_reuse: 1
    always, 2 loopback only; tcp_tw_reuse_delay, 6.13+, else 1 s), or nothing if none does."""
    sysctls = meta.sysctls or {}
    mode = str(sysctls.get("net.ipv4.tcp_tw_reuse", "")).strip()
    if mode not in ("1", "2"):
        return ""
    delay = str(sysctls.get("net.ipv4.tcp_tw_reuse_delay", "1000")).strip() or "1000"
    scope = "" if mode == "1" else " on loopback"
    return (f" (tcp_tw_reuse={mode} lets connect() reuse a TIME_WAIT port{scope} once it has been "
            f"idle {int(delay) / 1000:g} s)")


def detect_reset(ctx: Context) -> None:
    """Refused connects (ECONNREFUSED: a RST answered the SYN) retried until one succeeded, and
    connections reset before the last reply. A RST after the last reply of a successful
    transaction is the server's SO_LINGER {1, 0} close, not a delay, and is ignored."""
    _detect_refused(ctx)
    _detect_reset_midway(ctx)


def _detect_refused(ctx: Context) -> None:
    ti_all = ctx.spikes
    attempts, errno, outcome = ctx.col("connect_attempts"), ctx.col("last_errno"), ctx.col("outcome")
    errs = _connect_errors(ctx, facts.ECONNREFUSED)
    rst = ctx.spike_events(["reset_received"], side="client")
    rst = rst[rst["state"] == facts.SYN_SENT]
    from_txn = ti_all[(errno[ti_all] == facts.ECONNREFUSED) & ((attempts[ti_all] > 1) | (outcome[ti_all] != "ok"))]
    ev = pd.concat([errs, rst], ignore_index=True)
    ti = np.union1d(from_txn, ev["ti"].to_numpy(dtype=np.int64)).astype(np.int64)
    if len(ti) == 0:
        return
    t_start, t_conn, end = ctx.col("t_start")[ti], ctx.col("t_connected")[ti], ctx.col("end")[ti]
    last = ev.groupby("ti")["t_ns"].max().reindex(ti).fillna(0).to_numpy(dtype=np.int64) if len(ev) else np.zeros(len(ti), np.int64)
    b = np.where(t_conn > 0, t_conn, np.where(last > 0, last, end))
    port = ctx.col("remote_port")[ti]
    tries = np.maximum(attempts[ti] - 1, 1)
    sentences = [f"connect() was refused (ECONNREFUSED: nothing listened on port {p}) {n:,} time(s) over "
                 f"{fmt_ns(bb - a)}" + (" before it succeeded." if c > 0 else "; the transaction failed.")
                 for p, n, a, bb, c in zip(port, tries, t_start, b, t_conn)]
    shorts = [f"refused connects cost {fmt_ns(bb - a)}" for a, bb in zip(t_start, b)]
    ctx.cands.add(ti, "reset", "refused", t_start, b, sentences, shorts)
    ctx.cands.cite(ev["ti"].to_numpy(), "reset", ev["ev_row"].to_numpy())


def _detect_reset_midway(ctx: Context) -> None:
    rst = ctx.spike_events(["reset_received", "reset_sent"])
    rst = rst[rst["state"] != facts.SYN_SENT]
    # a RST that reaches a socket its owner has already closed (FIN_WAIT1/2, CLOSING, LAST_ACK,
    # TIME_WAIT) or is sent by an abortive close (SO_LINGER {1, 0}, as the original server) ends
    # a finished connection: nothing waited for it
    rst = rst[~rst["state"].isin(facts.CLOSING_STATES)]
    reply2 = ctx.col("t_reply2")
    if len(rst):
        r2 = reply2[rst["ti"].to_numpy()]
        rst = rst[(r2 == 0) | (rst["t_ns"].to_numpy() < r2)]  # before the last reply only
    outcome, errno = ctx.col("outcome"), ctx.col("last_errno")
    ti_all = ctx.spikes
    failed = ti_all[np.isin(outcome[ti_all], ["reset", "short_reply"]) & (errno[ti_all] != facts.ECONNREFUSED)]
    ti = np.union1d(failed, rst["ti"].to_numpy(dtype=np.int64)).astype(np.int64)
    if len(ti) == 0:
        return
    first = rst.sort_values("t_ns").groupby("ti").first() if len(rst) else pd.DataFrame(columns=["t_ns", "kind"])
    t_rst = first["t_ns"].reindex(ti).fillna(0).to_numpy(dtype=np.int64)
    kind = first["kind"].reindex(ti).fillna("").to_numpy(dtype=object)
    end = ctx.col("end")[ti]
    b = np.where(t_rst > 0, t_rst, end)
    phase, a = ctx.phase_start(ti, b)
    waiting = np.array(["connection set-up", "the first reply", "the second reply", "the close"])[phase]
    who = np.where(kind == "reset_sent", "sent by the server", np.where(kind == "reset_received", "received by the client", "reported by the client"))
    t_start = ctx.col("t_start")[ti]
    sentences = [f"The connection was reset (RST {w} at {fmt_rel(bb - s)}, while the client waited for {wt})"
                 + ("; the transaction failed." if o != "ok" else ".")
                 for w, bb, s, wt, o in zip(who, b, t_start, waiting, outcome[ti])]
    shorts = [f"a reset at {fmt_rel(bb - s)}" for bb, s in zip(b, t_start)]
    ctx.cands.add(ti, "reset", "reset", a, b, sentences, shorts)
    ctx.cands.cite(rst["ti"].to_numpy(), "reset", rst["ev_row"].to_numpy())


# ---- connections that carried no request ---------------------------------------------------
def idle_connections(txn: pd.DataFrame, meta) -> np.ndarray:
    """Per transaction: "" or why it carried no request (only transactions that are kernel
    connections: a trace run without an application log).

    `abandoned`: the client closed its socket in SYN_SENT, the handshake never answered and
    nothing refused it (a load generator closing its spare connects at exit, a client timeout);
    `no_request`: the connection was established but the client never sent a byte (the
    conn_life probe saw no write of the client, or no read of the server). Either way no
    request of the application waited on it: not a spike of the server's."""
    out = np.full(len(txn), "", dtype=object)
    if len(txn) == 0 or "seen" not in txn:
        return out
    flags = txn["conn_flags"].to_numpy().astype(np.int64)
    est, close = txn["t_connected"].to_numpy(), txn["t_end"].to_numpy()
    seen = txn["seen"].astype(str).to_numpy()
    whole = (flags & CONN_PARTIAL) == 0
    client = seen != "server"
    abandoned = client & whole & (est == 0) & (close > 0) & ((flags & (CONN_REFUSED | CONN_RESET)) == 0)
    out[abandoned] = "abandoned"
    probes = getattr(meta, "probes", None) or {}
    if str(probes.get("conn_life", "")) in ("raw_tracepoint", "tracepoint", "kprobe"):
        wrote = txn["cli_first_write"].to_numpy() > 0
        read = txn["srv_first_read"].to_numpy() > 0
        silent = np.where(seen == "server", ~read, np.where(seen == "both", ~wrote & ~read, ~wrote))
        out[whole & (est > 0) & (close > 0) & silent & (out == "")] = "no_request"
    return out


def detect_idle_connection(ctx: Context) -> None:
    """A connection that carried no request (`idle_connections`): it is explained as such, so
    that its time is not put on the server. Such connections are spikes only when asked for
    (`--idle`); this names them then."""
    txn = ctx.frames.txn
    why = idle_connections(txn, ctx.meta)[ctx.spikes]
    ti = ctx.spikes[why != ""]
    if len(ti) == 0:
        return
    why = why[why != ""]
    t_start, end = ctx.col("t_start")[ti], ctx.col("end")[ti]
    overflow = ctx.growth("TcpExt.ListenOverflows", t_start, end)
    sentences, shorts = [], []
    for w, a, b, g in zip(why, t_start, end, overflow):
        if w == "abandoned":
            full = (f" (ListenOverflows +{int(g)} meanwhile: a full accept queue drops a SYN "
                    "without a word)") if g > 0 else ""
            sentences.append(f"The client gave up connecting after {fmt_ns(b - a)}: it closed the socket while "
                             f"its SYN was unanswered{full}, before sending any request; no request waited "
                             "on this connection.")
            shorts.append(f"a connect abandoned after {fmt_ns(b - a)}")
        else:
            sentences.append(f"The client sent nothing on this connection in its {fmt_ns(b - a)} (an idle "
                             "connection: a spare one of a load generator, or one left open until exit); no "
                             "request waited on it.")
            shorts.append(f"an idle connection ({fmt_ns(b - a)}, no request)")
    ctx.cands.add(ti, "idle_connection", why, t_start, end, sentences, shorts)
