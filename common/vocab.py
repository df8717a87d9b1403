"""The shared words of a run directory, defined once: TCP states, event kinds, connection roles
and flags, histogram names, outcomes, errno names; and the one function that puts a kernel
event into words (`describe_event`), used by the live trace line and by `spiketrace explain`.

The kernel side (tracer/bpf/spiketrace.h) defines the same numbers for the BPF programs;
tests/unit/test_contract.py checks that the header, tracer/events.py and these names agree.
"""
from __future__ import annotations

import errno as _errno
from typing import Any, Dict, Mapping, Optional

# ---- application logs `report --log` reads (analysis/applog_read.py; docs/your-application.md) --
LOG_FORMATS = ("ab-g", "pgbench-l", "nginx-access", "apache-access", "plain", "csv", "tsv",
               "columns", "jsonl")

# ---- TCP states (include/net/tcp_states.h) ----------------------------------------------------
TCP_STATES: Dict[int, str] = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV",
}
ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE = 1, 2, 3, 4, 5, 6, 7
CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING, NEW_SYN_RECV = 8, 9, 10, 11, 12
HANDSHAKE_STATES = (SYN_SENT, SYN_RECV, NEW_SYN_RECV)
# a socket whose owner has closed it (or is closing it)
CLOSING_STATES = (FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, LAST_ACK, CLOSING)


def state_name(state: int) -> str:
    return TCP_STATES.get(int(state), str(int(state)))


# ---- kernel event kinds (events.parquet `kind`; KIND_* in spiketrace.h) ------------------------
EVENT_KINDS: Dict[int, str] = {
    1: "retransmit",         # data or SYN retransmit; state tells which; reason = err
    2: "synack_retransmit",  # a listener retransmitted a SYN-ACK
    3: "state_change",       # every TCP state change of traced sockets (--all-events only)
    4: "reset_sent",         # reason = enum sk_rst_reason (6.10+), else 0
    5: "reset_received",
    6: "drop",               # reason = enum skb_drop_reason, value = kernel code address
    7: "connect_error",      # reason = errno, value = failures in the streak, value2 = its start
    8: "accept_wait",        # value = ns from server-side ESTABLISHED to accept()
    9: "runq_delay",         # value = ns runnable but not running, value2 = cpu, reason = tid that had the CPU
    10: "time_wait",         # the socket entered TIME_WAIT
    11: "listen_overflow",   # a SYN or final ACK met a full accept queue (kprobe); value = queue, value2 = backlog
}
KIND_CODES: Dict[str, int] = {name: code for code, name in EVENT_KINDS.items()}

# ---- connections (connections.parquet `role`, `flags`; ROLE_*, CONN_* in spiketrace.h) -------
ROLES: Dict[int, str] = {1: "client", 2: "server"}
CONN_SLOW_CONNECT = 0x01   # handshake took longer than the slow threshold
CONN_SLOW_LIFETIME = 0x02  # open -> close took longer than the slow threshold
CONN_RETRANS = 0x04        # had a SYN or data retransmit
CONN_RESET = 0x08          # sent or received a reset
CONN_TIME_WAIT = 0x10      # closed into TIME_WAIT
CONN_ACCEPTED = 0x20       # a traced process accept()ed it (or first read it)
CONN_PARTIAL = 0x40        # first seen after its open (tracing started late)
CONN_REFUSED = 0x80        # closed from SYN_SENT by a reset
CONN_GAP = 0x100           # a state change not seen (a probe run the kernel skipped): incomplete
CONN_FLAGS: Dict[int, str] = {
    CONN_SLOW_CONNECT: "slow_connect", CONN_SLOW_LIFETIME: "slow_lifetime",
    CONN_RETRANS: "retrans", CONN_RESET: "reset", CONN_TIME_WAIT: "time_wait",
    CONN_ACCEPTED: "accepted", CONN_PARTIAL: "partial", CONN_REFUSED: "refused", CONN_GAP: "gap",
}


def flag_names(flags: int) -> str:
    """`slow_connect,retrans`: the names of the bits set."""
    return ",".join(name for bit, name in CONN_FLAGS.items() if int(flags) & bit)


# ---- kernel histograms (histograms.parquet `name`; HIST_* in spiketrace.h, in that order) -----
HISTOGRAMS: Dict[str, str] = {
    "connect_ns": "connect (SYN sent -> ESTABLISHED, client side)",
    "lifetime_ns": "connection lifetime (open -> close, both sides)",
    "accept_wait_ns": "accept-queue wait (ESTABLISHED -> accept() or first read)",
    # the scheduler's own account (sched_info): a wakeup that preempts at once counts 0 ns
    "runq_delay_ns": "run-queue delay of traced threads (0 = too short for the scheduler's clock)",
}
HIST_NAMES = tuple(HISTOGRAMS)

# ---- outcomes ---------------------------------------------------------------------------------
TXN_OUTCOMES = ("ok", "connect_failed", "reset", "short_reply", "error")   # transactions.parquet
SERVER_OUTCOMES = ("ok", "reset", "short_request", "error")                # server.parquet

# ---- errno names (Linux) ---------------------------------------------------------------------
EADDRNOTAVAIL, ECONNRESET, ETIMEDOUT, ECONNREFUSED = 99, 104, 110, 111


def errno_name(code: int) -> str:
    return _errno.errorcode.get(int(code), str(int(code)))


# ---- durations ---------------------------------------------------------------------------------
def fmt_ns(ns: float) -> str:
    """A duration as a person would say it: `1.00 s`, `212 ms`, `1.5 ms`, `850 us`."""
    ns = float(ns)
    if abs(ns) >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if abs(ns) >= 1e7:
        return f"{ns / 1e6:.0f} ms"
    if abs(ns) >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e3:.0f} us"


def fmt_rel(ns: float) -> str:
    """A signed offset from the start of a transaction: `+1.00 s`."""
    return ("+" if ns >= 0 else "-") + fmt_ns(abs(ns))


def fmt_ms(ms: float) -> str:
    """`1.5 s`, `100 ms`, `250 us`: a threshold in the unit a person would say."""
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms >= 1:
        return f"{ms:.3g} ms"
    return f"{ms * 1000:.3g} us"


# ---- an event in words ------------------------------------------------------------------------
# Plain words for the skb drop reasons a connection-per-transaction workload meets; any other
# reason is shown by its kernel name alone.
DROP_WORDS = {
    "TCP_LISTEN_OVERFLOW": "because the listener's accept queue was full",
    "NO_SOCKET": "because no socket was there to take it (nothing listening, or already closed)",
    "TC_INGRESS": "by a tc ingress filter",
    "TC_EGRESS": "by a tc egress filter",
    "NETFILTER_DROP": "by a netfilter (iptables/nftables) rule",
    "SOCKET_BACKLOG": "because the socket's backlog was full",
    "SOCKET_RCVBUFF": "because the socket's receive buffer was full",
    "PROTO_MEM": "because TCP memory was exhausted (tcp_mem)",
    "TCP_CSUM": "for a bad TCP checksum",
    "QDISC_DROP": "by a full queueing discipline",
    "TCP_OLD_DATA": "as a duplicate of data already received",
}


# reasons a listener gives a segment of a connection it has no child socket for
LISTENER_NO_CHILD = ("NO_SOCKET", "TCP_FLAGS")


def drop_base_name(name) -> str:
    """A drop reason's name without its enum prefix ('SKB_DROP_REASON_NO_SOCKET' -> 'NO_SOCKET')."""
    return str(name).replace("SKB_DROP_REASON_", "")


def describe_drop(name: str) -> str:
    """'dropped <words> (drop reason NAME)': what a network engineer would say of a drop."""
    words = DROP_WORDS.get(drop_base_name(name))
    return f"dropped {words} (drop reason {name})" if words else f"dropped by the kernel (drop reason {name})"


def _get(ev: Mapping[str, Any], key: str, default: Any = 0) -> Any:
    v = ev.get(key, default)
    return default if v is None else v


def describe_event(ev: Mapping[str, Any], drop_names: Optional[Mapping[int, str]] = None,
                   reset_names: Optional[Mapping[int, str]] = None) -> str:
    """One kernel event (a row of events.parquet, as a mapping) in words, with the fields its
    kind gives meaning to; drop and reset reasons by this kernel's names (meta.json) where
    given. The live trace line and `spiketrace explain` both print this."""
    kind = str(_get(ev, "kind", ""))
    state = int(_get(ev, "state"))
    value = int(_get(ev, "value"))
    reason = int(_get(ev, "reason"))
    side = f" ({ev['side']} side)" if ev.get("side") else ""
    if kind == "retransmit":
        what = "SYN retransmit" if state == SYN_SENT else f"data retransmit in {state_name(state)}"
        return f"{what}{side}" + (f", #{value}" if value else "")
    if kind == "synack_retransmit":
        return "SYN-ACK retransmit (server side)"
    if kind == "state_change":
        return f"{state_name(state)} -> {state_name(int(_get(ev, 'new_state')))}{side}"
    if kind == "drop":
        name = (drop_names or {}).get(reason, str(reason))
        if state == LISTEN and drop_base_name(name) in LISTENER_NO_CHILD:
            # FACT accept-queue: a segment of a connection the listener keeps no socket for (its
            # last ACK met a full accept queue) reaches the listener and is dropped there
            return (f"packet dropped at the listener: no socket for its connection (the accept "
                    f"queue was full when its handshake completed, or it was already closed; drop "
                    f"reason {name}){side}")
        where = f" in {state_name(state)}" if state else ""
        return f"packet {describe_drop(name)}{where}{side}"
    if kind in ("reset_sent", "reset_received"):
        why = f", {(reset_names or {}).get(reason, reason)}" if reason else ""
        return f"{kind.replace('_', ' ')} in {state_name(state)}{why}{side}"
    if kind == "connect_error":
        return f"connect() failed with {errno_name(reason)} x{value}"
    if kind == "accept_wait":
        return f"waited {fmt_ns(value)} in the accept queue"
    if kind == "runq_delay":
        comm = _get(ev, "comm", "")
        holder = int(_get(ev, "reason", 0) or 0)
        had = f"; thread {holder} had the CPU" if holder > 0 else ""
        return f"thread {int(_get(ev, 'pid'))} ({comm}) runnable but not running for {fmt_ns(value)}{had}"
    if kind == "time_wait":
        return f"entered TIME_WAIT{side}"
    if kind == "listen_overflow":
        return f"accept queue full ({value} queued, backlog {int(_get(ev, 'value2'))}): packet dropped"
    return f"{kind}{side}"


def describe_connection(conn: Mapping[str, Any]) -> str:
    """A slow or anomalous connection record (connections.parquet row) in words."""
    parts = [str(_get(conn, "role", ""))]
    t_open, t_est = int(_get(conn, "t_open")), int(_get(conn, "t_established"))
    if t_open and t_est:
        parts.append(f"connect {fmt_ns(t_est - t_open)}")
    t_close = int(_get(conn, "t_close"))
    if t_open and t_close:
        parts.append(f"open {fmt_ns(t_close - t_open)}")
    for key, label in (("syn_retrans", "SYN retransmits"), ("retrans", "retransmits"),
                       ("resets", "resets")):
        if _get(conn, key):
            parts.append(f"{label} {conn[key]}")
    flags = flag_names(int(_get(conn, "flags")))
    return ", ".join(p for p in parts + ([flags] if flags else []) if p)
