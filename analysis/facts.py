"""Kernel facts the analysis relies on (docs/kernel-facts.md), in one place.

Each constant says where it comes from; the code that uses one cites it by name. TCP states,
errno values and drop reasons in words are the run directory's vocabulary (common.vocab).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional

from common.vocab import (CLOSE_WAIT, CLOSING_STATES, EADDRNOTAVAIL, ECONNREFUSED, ECONNRESET,  # noqa: F401
                          ESTABLISHED, ETIMEDOUT, HANDSHAKE_STATES, LISTEN, LISTENER_NO_CHILD,
                          NEW_SYN_RECV, SYN_RECV,
                          SYN_SENT, TCP_STATES, describe_drop, drop_base_name)

MS = 1_000_000  # ns
S = 1_000_000_000

# FACT accept-queue: the drop reasons of a segment that reached a listener with no child socket for
# its connection (the handshake's last ACK met a full accept queue); TCP_LISTEN_OVERFLOW (6.15+)
# names the overflow itself
NO_CHILD_DROPS = LISTENER_NO_CHILD + ("TCP_LISTEN_OVERFLOW",)

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


def initial_syn_rto_s(meta) -> float:
    """The initial SYN RTO of the run (FACT syn-rto): 3 s on kernels before 3.1 or when the
    run emulated it (params.scenario.initial_rto_ms, as `legacy-rto` sets), else 1 s."""
    scenario = meta.params.scenario
    if scenario is not None and scenario.initial_rto_ms:
        return float(scenario.initial_rto_ms) / 1000.0
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
    return meta.reason_names("drop")
