"""Upkeep of a long-running tracer (`spiketrace trace` for days): what the BPF maps learned
about processes that are gone is forgotten, and the connections being tracked are read in one
batch (map fill, and slow connections still open, for the live explanations).

The maps are arrays (tracer/bpf/common.h): `pids` (bitmaps by tgid: user-given and learned
bits), `task_slots` (run-queue baselines by tid), `streaks` (connect-error streaks by tgid) and
`conns` (one slot per tracked socket). Nothing here runs in the kernel's hot path; each sweep
reads a map with one BPF_MAP_LOOKUP_BATCH call and writes only the slots it frees.
"""
from __future__ import annotations

import ctypes as ct
import errno
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np

from tracer import events
from tracer.session import _streak_event


def read_array(tracer, name: bytes, count: Optional[int] = None) -> bytes:
    """The values of the first `count` slots of a BPF array, in one BPF_MAP_LOOKUP_BATCH
    (a Python lookup per slot costs ~5 us: 0.3 s for the 65,536 slots of `conns`)."""
    from bcc.libbcc import lib

    table = tracer._bpf[name]
    count = int(count or table.max_entries)
    size = ct.sizeof(table.Leaf)
    keys = (ct.c_uint32 * count)()
    values = ct.create_string_buffer(size * count)
    batch, n, total = ct.c_uint32(0), ct.c_uint32(0), 0
    while total < count:
        n.value = count - total
        res = lib.bpf_lookup_batch(table.map_fd, ct.byref(batch) if total else None,
                                   ct.byref(batch), ct.byref(keys, 4 * total),
                                   ct.byref(values, size * total), ct.byref(n))
        err = ct.get_errno()
        total += n.value
        if res != 0:
            if err != errno.ENOENT:
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH on {name.decode()}: {os.strerror(err)}")
            break
        if n.value == 0:
            break
    return values.raw[:size * total]


def expire_learned(tracer) -> Dict[str, int]:
    """Forget processes that are gone, so a trace of many short-lived clients stays bounded
    and a reused pid is not traced by mistake: clear their learned bits in `pids` (the
    user's own --pid bits stay), free the run-queue slots of threads that exited, and send
    the connect-error streaks of processes that exited (else they would wait for the
    stop). Needs the host's /proc (hostPID in a container). A bit learned between the read
    and the write of its word is lost (microseconds; that process is then not traced until
    its next connect or accept)."""
    out = {"pids_cleared": 0, "pids_learned": 0, "task_slots_cleared": 0,
           "task_slots_used": 0, "streaks_ended": 0}
    with tracer._lock:
        if tracer._bpf is None:
            return out
        alive = {int(d) for d in os.listdir("/proc") if d.isdigit()}
        try:
            with open("/proc/sys/kernel/pid_max") as fh:
                pid_max = int(fh.read())
        except (OSError, ValueError):
            pid_max = 1 << 22
        table = tracer._bpf[b"pids"]
        words = np.frombuffer(read_array(tracer, b"pids", min(table.max_entries, (pid_max >> 6) + 1)),
                              dtype=[("user", "<u8"), ("learned", "<u8")])
        for i in np.flatnonzero(words["learned"]).tolist():
            learned = int(words["learned"][i])
            dead = 0
            for b in range(64):
                if learned >> b & 1 and (i << 6 | b) not in alive:
                    dead |= 1 << b
            out["pids_learned"] += bin(learned & ~dead).count("1")
            if dead:
                word = table[ct.c_int(i)]  # re-read: keep a bit the kernel set meanwhile
                word.learned &= ~dead
                table[ct.c_int(i)] = word
                out["pids_cleared"] += bin(dead).count("1")
        slots = tracer._bpf[b"task_slots"]
        tids = np.frombuffer(read_array(tracer, b"task_slots"), dtype=np.uint32)
        tids = tids[::ct.sizeof(slots.Leaf) // 4]
        used = np.flatnonzero(tids)
        out["task_slots_used"] = len(used)
        for idx in used.tolist():
            tid = int(tids[idx])
            if tid not in alive and not os.path.exists(f"/proc/{tid}"):
                slots[ct.c_int(idx)] = slots.Leaf()
                out["task_slots_cleared"] += 1
        out["task_slots_used"] -= out["task_slots_cleared"]
        streaks = tracer._bpf[b"streaks"]
        size = ct.sizeof(streaks.Leaf)
        raw = read_array(tracer, b"streaks")
        ended = []
        for idx in range(len(raw) // size):
            s = streaks.Leaf.from_buffer_copy(raw, idx * size)
            if s.count and s.tgid not in alive:
                ended.append(_streak_event(s))
                streaks[ct.c_int(idx)] = streaks.Leaf()
        if ended:
            tracer._deliver_events(events.decode_events(b"".join(ended)))
        out["streaks_ended"] = len(ended)
    return out


def scan_connections(tracer, open_longer_than_ns: int) -> Tuple[Dict[str, list], int]:
    """The connections being tracked now: (columns of those still open after
    `open_longer_than_ns` that look slow, i.e. still in the handshake or retransmitting,
    with t_close 0; slots in use). One batch read of the `conns` array."""
    with tracer._lock:
        if tracer._bpf is None:
            return events.decode_conns(b""), 0
        table = tracer._bpf[b"conns"]
        size = ct.sizeof(table.Leaf)
        raw = read_array(tracer, b"conns")
    n = len(raw) // size
    slots = np.frombuffer(raw, dtype=np.uint8).reshape(n, size)
    sk = slots[:, events.CONN_SIZE:events.CONN_SIZE + 8].copy().view("<u8").ravel()
    used = np.flatnonzero(sk)
    conns = np.frombuffer(np.ascontiguousarray(slots[used, :events.CONN_SIZE]).tobytes(),
                          dtype=events.CONN_DTYPE)
    now = time.monotonic_ns()
    slow = ((conns["t_open"] > 0) & (conns["t_close"] == 0)
            & (conns["t_open"] < now - open_longer_than_ns)
            & ((conns["t_established"] == 0) | (conns["syn_retrans"] > 0) | (conns["retrans"] > 0)))
    return events.decode_conns(conns[slow].tobytes()), len(used)


def program_stats(tracer) -> Dict[str, Tuple[int, int]]:
    """BPF function name -> (run_time_ns, run_cnt) from the program's fdinfo: the kernel's own
    account of the CPU time each program took, kept while BPF statistics are enabled
    (`enable_bpf_stats`, or sysctl kernel.bpf_stats_enabled=1); zeros otherwise."""
    out = {}
    for fn, prog in list(tracer._progs.items()):
        vals = {}
        try:
            with open(f"/proc/self/fdinfo/{prog.fd}") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    if key in ("run_time_ns", "run_cnt"):
                        vals[key] = int(value)
        except (OSError, ValueError):
            continue
        out[fn] = (vals.get("run_time_ns", 0), vals.get("run_cnt", 0))
    return out


def enable_bpf_stats() -> Optional[int]:
    """Turn on the kernel's BPF run-time statistics for as long as the returned fd is open
    (bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME), 5.8+); None if the kernel refuses. They cost
    two clock reads per program run (~20-40 ns here), so they are off unless asked for."""
    import platform

    nr = {"x86_64": 321, "aarch64": 280}.get(platform.machine())  # __NR_bpf
    if nr is None:
        return None
    libc = ct.CDLL(None, use_errno=True)
    attr = (ct.c_uint32 * 32)()  # union bpf_attr, only enable_stats.type (0: BPF_STATS_RUN_TIME)
    fd = libc.syscall(nr, 32, ct.byref(attr), ct.sizeof(attr))  # 32: BPF_ENABLE_STATS
    return fd if fd >= 0 else None
