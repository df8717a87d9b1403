"""Kernel facts the analysis relies on (DESIGN.md, "Kernel facts"), in one place.

Each constant says where it comes from; the code that uses one cites it by name.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional

MS = 1_000_000  # ns
S = 1_000_000_000

# Linux TCP states (include/net/tcp_states.h).
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
    12: "NEW_SYN_RECV",
}
ESTABLISHED, SYN_SENT, SYN_RECV, NEW_SYN_RECV = 1, 2, 3, 12
HANDSHAKE_STATES = (SYN_SENT, SYN_RECV, NEW_SYN_RECV)
# states of a socket whose owner has closed it (or is closing it): FIN_WAIT1, FIN_WAIT2,
# TIME_WAIT, CLOSE, LAST_ACK, CLOSING
CLOSING_STATES = (4, 5, 6, 7, 9, 11)

# errno values (Linux, asm-generic/errno.h)
EADDRNOTAVAIL = 99  # connect(): no free local port (port exhaustion)
ECONNRESET = 104
ETIMEDOUT = 110
ECONNREFUSED = 111  # connect(): a RST answered the SYN (nothing listens)
ERRNO_NAMES = {EADDRNOTAVAIL: "EADDRNOTAVAIL", ECONNRESET: "ECONNRESET", ETIMEDOUT: "ETIMEDOUT",
               ECONNREFUSED: "ECONNREFUSED", 11: "EAGAIN", 115: "EINPROGRESS", 114: "EALREADY",
               32: "EPIPE", 4: "EINTR"}

# FACT syn-rto: the initial SYN RTO is 1 s since Linux 3.1 (RFC 6298), 3 s before (CentOS 5's
# 2.6.18); the `legacy-rto` scenario emulates 3 s with a sock_ops program.
SYN_RTO_MODERN_S = 1.0
SYN_RTO_LEGACY_S = 3.0
# FACT rto-min: TCP_RTO_MIN is 200 ms, so a data retransmit earlier than that after the send
# cannot be an RTO: it is a tail loss probe (or a fast retransmit).
TCP_RTO_MIN_MS = 200.0
# FACT delack: the delayed-ACK timer waits at least 40 ms (TCP_DELACK_MIN), at most 200 ms.
DELACK_MIN_MS = 40.0
DELACK_MAX_MS = 200.0
# FACT time-wait: a closed connection's 4-tuple stays in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN).
TIME_WAIT_S = 60.0


def kernel_version(release: str) -> Optional[tuple]:
    """`6.18.0-1-amd64` -> (6, 18); None if unreadable."""
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def find_param(params: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A value from meta.params at any depth (`params["server"]["backlog"]` or `params["backlog"]`)."""
    if not isinstance(params, Mapping):
        return default
    if name in params:
        return params[name]
    for value in params.values():
        if isinstance(value, Mapping):
            found = find_param(value, name, None)
            if found is not None:
                return found
    return default


def initial_syn_rto_s(meta) -> float:
    """The initial SYN RTO of the run (FACT syn-rto): 3 s on kernels before 3.1 or when the
    run emulated it (scenario `legacy-rto`, or params `initial_rto_ms`), else 1 s."""
    explicit = find_param(meta.params, "initial_rto_ms")
    if explicit:
        try:
            return float(explicit) / 1000.0
        except (TypeError, ValueError):
            pass
    if meta.scenario == "legacy-rto":
        return SYN_RTO_LEGACY_S
    version = kernel_version(meta.kernel)
    if version is not None and version < (3, 1):
        return SYN_RTO_LEGACY_S
    return SYN_RTO_MODERN_S


def syn_linear_timeouts(meta) -> int:
    """net.ipv4.tcp_syn_linear_timeouts (6.5+; 0 = plain exponential backoff)."""
    version = kernel_version(meta.kernel)
    raw = (meta.sysctls or {}).get("net.ipv4.tcp_syn_linear_timeouts")
    if raw is None:
        return 4 if version is not None and version >= (6, 5) else 0
    try:
        return int(str(raw).split()[0])
    except ValueError:
        return 0


def syn_retransmit_times_s(initial_rto_s: float, linear: int, count: int = 7) -> List[float]:
    """When the SYN retransmits go out, in seconds after the first SYN (FACT syn-backoff).

    Exponential: the RTO doubles after each retransmit (1, 3, 7, 15 s; 3, 9, 21, 45 s on 2.6).
    Since 6.5, while a SYN_SENT socket has retransmitted at most `tcp_syn_linear_timeouts`
    times, the kernel resets the backoff and re-arms the base RTO (1 s): arrivals at
    1, 2, 3, 4, 5, 7, 11 s with the default 4, so a twice-dropped SYN costs 2 s, not 3 s.
    """
    times, t, rto = [], 0.0, initial_rto_s
    for k in range(1, count + 1):
        t += rto
        times.append(round(t, 6))
        if k <= linear:
            rto = SYN_RTO_MODERN_S  # tcp_retransmit_timer: backoff reset, base RTO re-armed
        else:
            rto = rto * 2
    return times


def local_port_range(meta) -> Optional[tuple]:
    raw = (meta.sysctls or {}).get("net.ipv4.ip_local_port_range")
    if not raw:
        return None
    try:
        lo, hi = (int(x) for x in str(raw).split()[:2])
        return lo, hi
    except ValueError:
        return None


def drop_reason_names(meta) -> Dict[int, str]:
    """skb drop reason code -> name, as recorded by the tracer for the traced kernel (the enum
    changes between kernel versions, so the analysis never guesses)."""
    for source in ({"drop_reasons": getattr(meta, "drop_reasons", None) or None}, meta.extra, meta.params):
        table = find_param(source, "drop_reasons")
        if isinstance(table, Mapping):
            out = {}
            for key, value in table.items():
                try:
                    out[int(key)] = str(value)
                except (TypeError, ValueError):
                    continue
            return out
    return {}


# Plain words for the skb drop reasons a connection-per-transaction workload meets; any other
# reason is shown by its kernel name alone.
_DROP_WORDS = {
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
}


def describe_drop(name: str) -> str:
    """'dropped <words> (drop reason NAME)': what a network engineer would say of a drop."""
    words = _DROP_WORDS.get(str(name).replace("SKB_DROP_REASON_", ""))
    return f"dropped {words} (drop reason {name})" if words else f"dropped by the kernel (drop reason {name})"
