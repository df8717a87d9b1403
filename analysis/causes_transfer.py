"""Causes that delay an established connection: data retransmits, waiting in the accept queue,
run-queue delay of the client or server thread, and the Nagle / delayed-ACK stall."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import facts
from analysis.context import Context
from analysis.join import pid_overlaps
from common.vocab import fmt_ns, fmt_rel

EXCHANGES = (("t_connected", "t_reply1"), ("t_reply1", "t_reply2"))
_EXCHANGE = np.array(["set-up", "the first exchange", "the second exchange", "the close"], dtype=object)


def detect_data_retransmit(ctx: Context) -> None:
    """A lost data segment: retransmitted by a tail loss probe or by the retransmission timer.
    FACT rto-min: an RTO never fires earlier than TCP_RTO_MIN (200 ms) after the send, so an
    earlier first retransmit is a tail loss probe."""
    ev = ctx.spike_events(["retransmit"])
    # FACT tlp-after-close: a segment retransmitted once its sender had closed (FIN_WAIT1,
    # CLOSING, LAST_ACK: a tail loss probe of the FIN or of data the peer already has) is
    # close-time noise, not a lost request or reply
    ev = ev[~ev["state"].isin(facts.HANDSHAKE_STATES) & ~ev["state"].isin(facts.CLOSING_STATES)
            & (ev["side"] != "")]
    _infer_data_retransmit(ctx, exclude=ev["ti"].to_numpy())
    if len(ev) == 0:
        return
    ti_ev = ev["ti"].to_numpy()
    phase, start = ctx.phase_start(ti_ev, ev["t_ns"].to_numpy())
    ev = ev.assign(phase=phase, phase_start=start)
    g = ev.sort_values("t_ns", kind="stable").groupby(["ti", "phase"], sort=True)
    first = g.first()
    ti = first.index.get_level_values("ti").to_numpy(dtype=np.int64)
    ph = first.index.get_level_values("phase").to_numpy()
    t_first = first["t_ns"].to_numpy()
    t_last = g["t_ns"].max().to_numpy()
    n = g.size().to_numpy()
    a = first["phase_start"].to_numpy()
    side = first["side"].to_numpy()
    gap = t_first - a
    tlp = gap < facts.TCP_RTO_MIN_MS * 1e6
    detail = np.where(tlp, "tlp", "rto")
    drops = _drop_reasons(ctx, ev)
    t_start = ctx.col("t_start")[ti]
    sentences, shorts = [], []
    for k in range(len(ti)):
        what = "request" if side[k] == "client" else "reply"
        who = "client" if side[k] == "client" else "server"
        lost = f"was {_drop_words(ctx, ti[k], *drops[(ti[k], ph[k])])}" if (ti[k], ph[k]) in drops else "was lost"
        how = ("by a tail loss probe" if tlp[k] else
               "when the retransmission timer fired (RTO, at least 200 ms)")
        times = f" ({n[k]} retransmits, the last at {fmt_rel(t_last[k] - t_start[k])})" if n[k] > 1 else ""
        sentences.append(f"A data segment of the {who}'s {what} in {_EXCHANGE[ph[k]]} {lost}; the {who} "
                         f"retransmitted it {how} {fmt_ns(gap[k])} after sending it{times}.")
        shorts.append(f"a data retransmit ({detail[k].upper()}) cost {fmt_ns(t_last[k] - a[k])}")
    ctx.cands.add(ti, "data_retransmit", detail, a, t_last, sentences, shorts)
    ctx.cands.cite(ev["ti"].to_numpy(), "data_retransmit", ev["ev_row"].to_numpy())


def _infer_data_retransmit(ctx: Context, exclude: np.ndarray) -> None:
    """A data segment of this connection was dropped (a `drop` event in an exchange) and the
    namespace's Tcp.RetransSegs grew before the exchange completed, yet no retransmit event
    was recorded: the segment was retransmitted (tcp:tcp_retransmit_skb does not report every
    tail loss probe). The exchange's time from the drop on is the retransmit's; inferred."""
    drops = ctx.spike_events(["drop"])
    names = facts.drop_reason_names(ctx.meta)
    # a duplicate the receiver already had (TCP_OLD_DATA), or a segment that reached a socket
    # after a close (CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE...), was not lost data
    duplicate = drops["reason"].map(lambda r: names.get(int(r), "").endswith("TCP_OLD_DATA")).to_numpy(dtype=bool)
    after_close = drops["state"].isin(facts.CLOSING_STATES + (facts.CLOSE_WAIT,)).to_numpy()
    drops = drops[~drops["state"].isin(facts.HANDSHAKE_STATES) & (drops["side"] != "")
                  & ~drops["ti"].isin(exclude) & ~duplicate & ~after_close]
    if len(drops) == 0:
        return
    # the first drop of an exchange (a handshake's last ACK dropped at a full accept queue comes
    # before the client's connect() returns: the request's drop after it is the one to explain)
    phase, _ = ctx.phase_start(drops["ti"].to_numpy(dtype=np.int64), drops["t_ns"].to_numpy())
    drops = drops[(phase >= 1) & (phase <= 2)]
    if len(drops) == 0:
        return
    drops = drops.sort_values("t_ns", kind="stable").drop_duplicates("ti")
    ti = drops["ti"].to_numpy(dtype=np.int64)
    t_drop = drops["t_ns"].to_numpy()
    phase, a = ctx.phase_start(ti, t_drop)
    ends = np.column_stack([ctx.col(c)[ti] for c in ("t_connected", "t_reply1", "t_reply2", "end")])
    b = ends[np.arange(len(ti)), phase]
    ok = (phase >= 1) & (phase <= 2) & (b > t_drop)
    retrans = ctx.growth("Tcp.RetransSegs", t_drop, b)
    probes = ctx.growth("TcpExt.TCPLossProbes", t_drop, b)
    ok &= retrans > 0
    if not ok.any():
        return
    ti, a, b, phase, drops = ti[ok], a[ok], b[ok], phase[ok], drops[ok]
    tlp = probes[ok] > 0
    sentences, shorts = [], []
    for k in range(len(ti)):
        client = drops["side"].iat[k] == "server"  # s = the receiver: the server got the request
        who, what = ("client", "request") if client else ("server", "reply")
        name = names.get(int(drops["reason"].iat[k]), str(int(drops["reason"].iat[k])))
        how = "by a tail loss probe (TCPLossProbes grew)" if tlp[k] else "(Tcp.RetransSegs grew)"
        words = _drop_words(ctx, ti[k], name, int(drops["t_ns"].iat[k]), str(drops["side"].iat[k]))
        sentences.append(
            f"A data segment of the {who}'s {what} in {_EXCHANGE[phase[k]]} was {words}; "
            f"the {who} retransmitted it {how}, and the exchange completed {fmt_ns(b[k] - a[k])} after it "
            f"began (inferred from the drop and the counters: no retransmit event was recorded).")
        shorts.append(f"a data retransmit (inferred) cost {fmt_ns(b[k] - a[k])}")
    ctx.cands.add(ti, "data_retransmit", np.where(tlp, "tlp", "rto"), a, b, sentences, shorts, inferred=True)
    ctx.cands.cite(ti, "data_retransmit", drops["ev_row"].to_numpy())


def _drop_reasons(ctx: Context, retrans: pd.DataFrame) -> dict:
    drops = ctx.spike_events(["drop"])
    if len(drops) == 0:
        return {}
    drops = drops[drops["ti"].isin(retrans["ti"])]
    phase, _ = ctx.phase_start(drops["ti"].to_numpy(), drops["t_ns"].to_numpy())
    names = facts.drop_reason_names(ctx.meta)
    ctx.cands.cite(drops["ti"].to_numpy(), "data_retransmit", drops["ev_row"].to_numpy())
    return {(int(t), int(p)): (names.get(int(r), str(int(r))), int(at), str(sd))
            for t, p, r, at, sd in zip(drops["ti"].to_numpy(), phase, drops["reason"].to_numpy(),
                                       drops["t_ns"].to_numpy(), drops["side"].astype(str).to_numpy())}


def _drop_words(ctx: Context, ti: int, name: str, t_drop: int, side: str) -> str:
    """A drop in words. FACT accept-queue: when the handshake's last ACK meets a full accept
    queue the server keeps no socket for the connection, so the client's first data segment
    reaches the listener and is dropped (NO_SOCKET / TCP_FLAGS, TCP_LISTEN_OVERFLOW since 6.15):
    the cause is the overflow, which ListenOverflows counts, not a missing listener."""
    base = facts.drop_base_name(name)
    if side == "server" and base in facts.NO_CHILD_DROPS:
        t_conn = int(ctx.col("t_connected")[ti]) or int(ctx.col("t_start")[ti])
        grew = ctx.growth("TcpExt.ListenOverflows", np.array([t_conn - ctx.period_ns]), np.array([t_drop]))[0]
        if grew > 0:
            port = ctx.col("remote_port")[ti:ti + 1]
            backlog = ctx.backlog(port, np.array([t_conn]))[0]
            bl = f" (backlog {backlog})" if backlog >= 0 else ""
            return (f"dropped because the listener's accept queue{bl} was full when the handshake's last "
                    f"ACK arrived, so the server had no socket for the connection yet (ListenOverflows "
                    f"+{grew}; drop reason {name})")
    return facts.describe_drop(name)


def detect_accept_queue_wait(ctx: Context) -> None:
    """The connection was ESTABLISHED (it sat complete in the accept queue) but the server had
    not accept()ed it yet: from the server's own accept time (a bench server records it) minus
    the handshake's completion (server ESTABLISHED event, else the client's connect time), else
    from `accept_wait` events (accept() returning it, or, with the `sock_recv_length` probe, the
    server's first read: an upper bound)."""
    ti = ctx.spikes[ctx.txn_srv[ctx.spikes] >= 0]
    srv = ctx.frames.server
    t_accept = srv["t_accept"].to_numpy()[ctx.txn_srv[ti]]
    est = ctx.col("t_connected")[ti]
    st = ctx.spike_events(["state_change"], side="server")
    st = st[(st["new_state"] == facts.ESTABLISHED) & st["ti"].isin(ti)]
    if len(st):
        first = st.groupby("ti")["t_ns"].min()
        known = np.isin(ti, first.index.to_numpy())
        est = est.copy()
        est[known] = first.reindex(ti[known]).to_numpy()
    ok = (t_accept > 0) & (est > 0) & (t_accept > est)
    # FACT accept-queue: a listener that dropped the connection's segments for want of a child
    # socket (the handshake's last ACK met a full queue) had nothing to queue until a
    # retransmit made one: the time from the client's ESTABLISHED is that retransmit's
    # (data_retransmit), and the accept wait, which began then, is not known
    ok &= ~np.isin(ti, ctx.no_child_drops(ti, est, t_accept))
    ti_s, a_s, b_s = ti[ok], est[ok], t_accept[ok]
    ev = ctx.spike_events(["accept_wait"])
    ev = ev[~ev["ti"].isin(ti_s)]
    ti_e = ev["ti"].to_numpy(dtype=np.int64)
    b_e = ev["t_ns"].to_numpy()
    a_e = b_e - np.maximum(ev["value"].to_numpy(), 0)
    ti_all = np.r_[ti_e, ti_s].astype(np.int64)
    a, b = np.r_[a_e, a_s].astype(np.int64), np.r_[b_e, b_s].astype(np.int64)
    if len(ti_all) == 0:
        return
    first_read = (ctx.meta.probes or {}).get("accept_wait") == "raw_tracepoint"
    from_event = np.r_[np.ones(len(ti_e), bool), np.zeros(len(ti_s), bool)]
    if first_read and "cli_first_write" in ctx.frames.txn:
        # a wait that ends at the server's first read can only have begun when the request was
        # there: before the client's first write the time is the client's own
        sent = ctx.col("cli_first_write")[ti_all]
        late = from_event & (sent > a) & (sent < b)
        a = np.where(late, sent, a)
    port = ctx.col("remote_port")[ti_all]
    backlog = ctx.backlog(port, a)
    queue = ctx.queue_max(port, a, b)
    # an upper bound (the first read) that the sampled queue depth contradicts: the accept
    # queue stayed empty over more than two samples, so the connection had been accepted and
    # the request waited in the server, unread: the server's own time, not the queue's
    unread = from_event & first_read & (queue == 0) & (b - a > 2 * ctx.period_ns)
    if unread.any():
        tu, au, bu = ti_all[unread], a[unread], b[unread]
        ctx.cands.add(tu, "server_processing", "unread", au, bu,
                      [f"The server had accepted the connection but first read the request {fmt_ns(y - x)} "
                       "after it arrived (its accept queue was empty meanwhile, sampled): the request "
                       "waited in the server, unread." for x, y in zip(au, bu)],
                      [f"the server left the request unread {fmt_ns(y - x)}" for x, y in zip(au, bu)])
        keep = ~unread
        ti_all, a, b, from_event, backlog, queue = (v[keep] for v in (ti_all, a, b, from_event, backlog, queue))
        if len(ti_all) == 0:
            return
    sentences, shorts = [], []
    for k in range(len(ti_all)):
        bl = f" (backlog {backlog[k]})" if backlog[k] >= 0 else ""
        depth = f", up to {queue[k]} connection(s) queued" if queue[k] > 0 else ""
        taken = ("accepted and first read it" if first_read and from_event[k] else "accepted it")
        sentences.append(f"The connection waited {fmt_ns(b[k] - a[k])} complete in the accept queue{bl} "
                         f"before the server {taken} (the server was busy with earlier connections{depth}).")
        shorts.append(f"it waited {fmt_ns(b[k] - a[k])} in the accept queue")
    source = np.where(from_event, "event", "server_record").astype(object)
    ctx.cands.add(ti_all, "accept_queue_wait", source, a, b, sentences, shorts)
    ctx.cands.cite(ti_e, "accept_queue_wait", ev["ev_row"].to_numpy())


def detect_runq_delay(ctx: Context) -> None:
    """The client or server thread was runnable but not running (CPU contention) while the
    transaction waited on it: run-queue delay events joined by thread and overlapping time."""
    ev = ctx.frames.events
    rows = np.flatnonzero((ev["kind"] == "runq_delay").to_numpy())
    if len(rows) == 0:
        return
    e_b = ev["t_ns"].to_numpy()[rows]
    e_a = e_b - np.maximum(ev["value"].to_numpy()[rows], 0)
    e_pid = ev["pid"].to_numpy()[rows]
    ti = ctx.spikes
    t_start, end = ctx.col("t_start"), ctx.col("end")
    # run-queue delays are per thread (the event's pid is the delayed thread): the client's
    # thread is the one that connected where the kernel recorded it, else its process (tid ==
    # pid for a single-threaded client)
    client = ctx.col("pid")[ti].astype(np.int64)
    if "tid" in ctx.frames.txn:
        tid = ctx.col("tid")[ti].astype(np.int64)
        client = np.where(tid > 0, tid, client)
    tgt_ti = [ti]
    tgt_pid = [client]
    side = [np.full(len(ti), "client", dtype=object)]
    srv = ctx.frames.server
    has_srv = ctx.txn_srv[ti] >= 0
    if has_srv.any():
        tgt_ti.append(ti[has_srv])
        tgt_pid.append(srv["pid"].to_numpy()[ctx.txn_srv[ti[has_srv]]])
        side.append(np.full(int(has_srv.sum()), "server", dtype=object))
    # trace runs: the server thread the kernel saw take the connection up or reply on it, else
    # the process that accepted it
    own = ctx.col("server_pid")[ti] if "server_pid" in ctx.frames.txn else np.zeros(len(ti), np.int64)
    if "srv_tid" in ctx.frames.txn:
        stid = ctx.col("srv_tid")[ti].astype(np.int64)
        own = np.where(stid > 0, stid, own)
    by_own = ~has_srv & (own > 0)
    if by_own.any():
        tgt_ti.append(ti[by_own])
        tgt_pid.append(own[by_own].astype(np.int64))
        side.append(np.full(int(by_own.sum()), "server", dtype=object))
    server_pids = np.unique(srv["pid"].to_numpy()).astype(np.int64)
    server_pids = server_pids[server_pids > 0]
    for pid in server_pids:  # transactions without a server record: any server thread
        lacking = ti[~has_srv & ~by_own]
        tgt_ti.append(lacking)
        tgt_pid.append(np.full(len(lacking), pid, dtype=np.int64))
        side.append(np.full(len(lacking), "server", dtype=object))
    tgt_ti = np.concatenate(tgt_ti)
    tgt_pid = np.concatenate(tgt_pid).astype(np.int64)
    side = np.concatenate(side)
    i, j = pid_overlaps(tgt_pid, t_start[tgt_ti], end[tgt_ti], e_pid, e_a, e_b)
    if len(i) == 0:
        return
    tx = tgt_ti[i]
    a = np.maximum(e_a[j], t_start[tx])
    b = np.minimum(e_b[j], end[tx])
    sd = side[i]
    comm = ev["comm"].iloc[rows[j]].astype(str).to_numpy()
    cpu = ev["value2"].to_numpy()[rows[j]]
    holder = ev["reason"].to_numpy()[rows][j]
    names = _thread_names(ctx)
    sentences = runq_sentences(tx, sd, e_pid[j], comm, cpu, e_b[j] - e_a[j], b - t_start[tx],
                               holder=holder, names=names)
    shorts = [f"the {s} thread waited {fmt_ns(bb - aa)} for a CPU" for s, aa, bb in zip(sd, a, b)]
    ctx.cands.add(tx, "runq_delay", sd, a, b, sentences, shorts)
    ctx.cands.cite(tx, "runq_delay", ev["ev_row"].to_numpy()[rows[j]])


def _thread_names(ctx: Context) -> dict:
    """tid -> name, from what the run recorded: delayed threads' events and connections' owners."""
    ev = ctx.frames.events
    names = {}
    for t, c in zip(ev["pid"].to_numpy().tolist(), ev["comm"].astype(str).tolist()):
        if t and c.strip():
            names.setdefault(int(t), c.strip())
    return names


def runq_sentences(tx, sd, tid, comm, cpu, waited, end_rel, holder=None, names=None) -> list:
    """One sentence per run-queue candidate: the thread by its id and name (the name the kernel
    gave at its switch-out), how long, the CPU it then ran on (value2; where it waited unless the
    scheduler moved it), the task that had the CPU when the wait ended (`holder`, the event's
    reason: the one switched out for it; named when the run recorded its name), and the other
    side's thread when it waited in the same transaction too (its longest wait)."""
    names = names or {}

    def who(k: int) -> str:
        name = str(comm[k]).strip()
        return f"the {sd[k]} thread {int(tid[k])}" + (f" ({name})" if name else "")

    def had_cpu(k: int) -> str:
        h = int(holder[k]) if holder is not None else 0
        if h <= 0:
            return "another task had the CPU"
        name = names.get(h, "")
        return f"thread {h}{f' ({name})' if name else ''} had the CPU when it got it"

    longest: dict = {}  # tx -> side -> the candidate with the longest wait
    for k in range(len(tx)):
        sides = longest.setdefault(int(tx[k]), {})
        if sd[k] not in sides or waited[k] > waited[sides[sd[k]]]:
            sides[sd[k]] = k
    out = []
    for k in range(len(tx)):
        text = (f"{who(k)[0].upper()}{who(k)[1:]} waited {fmt_ns(waited[k])} runnable but not running "
                f"until {fmt_rel(end_rel[k])} ({had_cpu(k)}; it then ran on CPU {int(cpu[k])}).")
        other = [o for side, o in longest[int(tx[k])].items() if side != sd[k]]
        if other:
            o = other[0]
            text += (f" The other side was delayed too: {who(o)} waited {fmt_ns(waited[o])} "
                     f"until {fmt_rel(end_rel[o])}.")
        out.append(text)
    return out


def detect_delayed_ack(ctx: Context) -> None:
    """FACT delack: a request written in two parts stalls when Nagle's algorithm holds the second
    part until the first is ACKed and the receiver delays that ACK (at least 40 ms). No event
    records it; it shows as an exchange ~40-200 ms slower than usual with no retransmit in it.
    Only when the client may split writes with Nagle on (params split_writes / nodelay)."""
    client = ctx.meta.params.client
    if client is not None and (not client.split_writes or client.nodelay):
        return
    ti = ctx.spikes
    txn = ctx.frames.txn
    ok = ctx.col("outcome") == "ok"
    retrans = ctx.spike_events(["retransmit"])
    r_phase, _ = ctx.phase_start(retrans["ti"].to_numpy(), retrans["t_ns"].to_numpy())
    stalled = set(zip(retrans["ti"].to_numpy().tolist(), r_phase.tolist()))
    lo = (facts.DELACK_MIN_MS - 8) * 1e6
    hi = (facts.DELACK_MAX_MS + 20) * 1e6
    base = normal_exchange_ns(txn, ok)
    for phase, (c0, c1) in enumerate(EXCHANGES, start=1):
        start, stop = txn[c0].to_numpy(), txn[c1].to_numpy()
        reached = (start > 0) & (stop >= start)
        dur = (stop - start)[ti]
        excess = dur - base
        cand = reached[ti] & (excess >= lo) & (excess <= hi)
        cand &= np.array([(t, phase) not in stalled for t in ti.tolist()], dtype=bool) if stalled else True
        sel = ti[cand]
        if len(sel) == 0:
            continue
        ex = excess[cand].astype(np.int64)
        b = stop[sel]
        which = "first" if phase == 1 else "second"
        sentences = [f"The {which} request was written in two parts: Nagle's algorithm held the second part "
                     f"until the server's delayed ACK (at least 40 ms) acknowledged the first, a {fmt_ns(e)} "
                     f"stall before the {which} reply (no retransmit; inferred from timing)." for e in ex]
        shorts = [f"a Nagle/delayed-ACK stall of {fmt_ns(e)}" for e in ex]
        ctx.cands.add(sel, "delayed_ack", f"exchange{phase}", b - ex, b, sentences, shorts, inferred=True)


def normal_exchange_ns(txn, ok: np.ndarray) -> float:
    """The time of an exchange without a stall: the faster of the two exchanges' medians. Both
    send the same request, and a fresh connection ACKs its first segments at once (quickack),
    so when *every* transaction stalls in its second exchange the first still shows the normal
    time."""
    medians = []
    for c0, c1 in EXCHANGES:
        start, stop = txn[c0].to_numpy(), txn[c1].to_numpy()
        sel = (start > 0) & (stop >= start) & ok
        if sel.any():
            medians.append(float(np.median((stop - start)[sel])))
    return min(medians) if medians else 0.0


def systematic_stall(txn, ok: np.ndarray, client) -> str:
    """A warning when the typical transaction itself stalls like a delayed ACK (so few or no
    transactions stand out as spikes), with the options that explain each one."""
    if client is not None and client.nodelay:
        return ""
    base = normal_exchange_ns(txn, ok)
    for phase, (c0, c1) in enumerate(EXCHANGES, start=1):
        start, stop = txn[c0].to_numpy(), txn[c1].to_numpy()
        sel = (start > 0) & (stop >= start) & ok
        if not sel.any():
            continue
        excess = float(np.median((stop - start)[sel])) - base
        if (facts.DELACK_MIN_MS - 8) * 1e6 <= excess <= (facts.DELACK_MAX_MS + 20) * 1e6:
            split = client is not None and client.split_writes
            why = "split writes with Nagle on" if split else "a Nagle/delayed-ACK stall, if requests are split"
            return (f"the typical transaction stalls {excess / 1e6:.0f} ms in exchange {phase} ({why}): it is "
                    "the median, so it is not a spike; use --relative 0 --threshold 30ms to explain each one")
    return ""
