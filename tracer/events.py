"""The one Python mirror of tracer/bpf/spiketrace.h, and the batch decoders of its records.

`Event` and `Conn` are ctypes mirrors of `struct st_event` and `struct st_conn`;
tests/unit/test_event_layout.py compiles the C header with gcc and checks every size and
offset. Records are decoded in batches through numpy structured dtypes derived from them
(one `np.frombuffer` per batch, no per-record ctypes objects).
"""
from __future__ import annotations

import ctypes as ct
import socket
from typing import Dict, List

import numpy as np

from common.vocab import EVENT_KINDS, HIST_NAMES, ROLES  # noqa: F401  (HIST_NAMES: the header's order)

# Kinds, roles, flags and histograms are the run directory's vocabulary (common.vocab); the
# numbers here are the C header's (spiketrace.h), checked by tests/unit/test_contract.py.
KIND_MAX = max(EVENT_KINDS) + 1

# Counter slots (CTR_* in spiketrace.h).
CTR_CONN_COUNTED, CTR_CONN_SENT, CTR_CONN_LOST, CTR_TIME_WAIT, CTR_CONN_UNTRACKED, CTR_STATE_GAP = 0, 1, 2, 3, 4, 5
CTR_SENT_BASE, CTR_LOST_BASE, CTR_MAX = 16, 32, 48
HIST_BUCKETS = 64


class Event(ct.Structure):
    """struct st_event"""

    _fields_ = [
        ("t_ns", ct.c_uint64),
        ("value", ct.c_int64),
        ("value2", ct.c_int64),
        ("netns", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("reason", ct.c_int32),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("kind", ct.c_uint8),
        ("family", ct.c_uint8),
        ("state", ct.c_uint8),
        ("new_state", ct.c_uint8),
        ("comm", ct.c_char * 16),
    ]


class Conn(ct.Structure):
    """struct st_conn"""

    _fields_ = [
        ("t_open", ct.c_uint64),
        ("t_established", ct.c_uint64),
        ("t_first_read", ct.c_uint64),
        ("t_first_write", ct.c_uint64),
        ("t_last_read", ct.c_uint64),
        ("t_last_write", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("role", ct.c_uint8),
        ("state", ct.c_uint8),
        ("family", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("tid", ct.c_uint32),
        ("read_ran", ct.c_uint64),
        ("read_waited", ct.c_uint64),
        ("hold_ns", ct.c_uint64),
        ("hold_end", ct.c_uint64),
        ("hold_ran", ct.c_uint64),
        ("hold_waited", ct.c_uint64),
        ("read_tid", ct.c_uint32),
        ("hold_tid", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("netns", ct.c_uint32),
        ("t_first_data", ct.c_uint64),
        ("t_close", ct.c_uint64),
        ("syn_retrans", ct.c_uint32),
        ("retrans", ct.c_uint32),
        ("resets", ct.c_uint32),
        ("pad2", ct.c_uint32),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("comm", ct.c_char * 16),
    ]


def _dtype(cls) -> np.dtype:
    """numpy dtype with the ctypes struct's offsets; char arrays become one bytes field."""
    d = np.dtype(cls)
    formats = []
    for name, _ in cls._fields_:
        f = d.fields[name][0]
        if f.subdtype is not None and f.subdtype[0].kind == "S":
            f = np.dtype(f"S{f.itemsize}")
        formats.append(f)
    return np.dtype({"names": d.names, "formats": formats,
                     "offsets": [d.fields[n][1] for n in d.names], "itemsize": d.itemsize})


EVENT_DTYPE = _dtype(Event)
CONN_DTYPE = _dtype(Conn)
EVENT_SIZE = ct.sizeof(Event)
CONN_SIZE = ct.sizeof(Conn)
assert EVENT_SIZE != CONN_SIZE, "records are told apart by their size"


class _Names:
    """Caches of address and comm strings: a run has few distinct ones."""

    def __init__(self) -> None:
        self.addrs: Dict[bytes, str] = {}
        self.comms: Dict[bytes, str] = {}

    def addr(self, family: int, raw: bytes) -> str:
        key = bytes((family,)) + raw
        s = self.addrs.get(key)
        if s is None:
            if family == socket.AF_INET:
                s = socket.inet_ntop(socket.AF_INET, raw[:4])
            elif family == socket.AF_INET6:
                s = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                s = ""
            self.addrs[key] = s
        return s

    def addr_column(self, families: np.ndarray, addrs: np.ndarray) -> List[str]:
        raw = np.ascontiguousarray(addrs).tobytes()
        return [self.addr(int(f), raw[16 * i:16 * i + 16]) for i, f in enumerate(families.tolist())]

    def comm_column(self, comms: np.ndarray) -> List[str]:
        out = []
        cache = self.comms
        for c in comms.tolist():
            s = cache.get(c)
            if s is None:
                s = cache[c] = c.decode("utf-8", "replace")
            out.append(s)
        return out


_names = _Names()


def decode_events(raw: bytes) -> Dict[str, list]:
    """Concatenated st_event records -> columns of the events table."""
    a = np.frombuffer(raw, dtype=EVENT_DTYPE)
    kinds = a["kind"].tolist()
    return {
        "t_ns": a["t_ns"].astype(np.int64).tolist(),
        "kind": [EVENT_KINDS.get(k, f"kind{k}") for k in kinds],
        "pid": a["pid"].astype(np.int32).tolist(),
        "comm": _names.comm_column(a["comm"]),
        "netns": a["netns"].tolist(),
        "saddr": _names.addr_column(a["family"], a["saddr"]),
        "sport": a["sport"].astype(np.int32).tolist(),
        "daddr": _names.addr_column(a["family"], a["daddr"]),
        "dport": a["dport"].astype(np.int32).tolist(),
        "state": a["state"].astype(np.int32).tolist(),
        "new_state": a["new_state"].astype(np.int32).tolist(),
        "reason": a["reason"].tolist(),
        "value": a["value"].tolist(),
        "value2": a["value2"].tolist(),
    }


def decode_conns(raw: bytes) -> Dict[str, list]:
    """Concatenated st_conn records -> columns of the connections table."""
    a = np.frombuffer(raw, dtype=CONN_DTYPE)
    return {
        "netns": a["netns"].tolist(),
        "role": [ROLES.get(r, "") for r in a["role"].tolist()],
        "pid": a["pid"].astype(np.int32).tolist(),
        "comm": _names.comm_column(a["comm"]),
        "saddr": _names.addr_column(a["family"], a["saddr"]),
        "sport": a["sport"].astype(np.int32).tolist(),
        "daddr": _names.addr_column(a["family"], a["daddr"]),
        "dport": a["dport"].astype(np.int32).tolist(),
        "t_open": a["t_open"].astype(np.int64).tolist(),
        "t_established": a["t_established"].astype(np.int64).tolist(),
        "t_first_data": a["t_first_data"].astype(np.int64).tolist(),
        "t_close": a["t_close"].astype(np.int64).tolist(),
        "t_first_read": a["t_first_read"].astype(np.int64).tolist(),
        "t_first_write": a["t_first_write"].astype(np.int64).tolist(),
        "hold_ns": a["hold_ns"].astype(np.int64).tolist(),
        "hold_end": a["hold_end"].astype(np.int64).tolist(),
        "hold_tid": a["hold_tid"].astype(np.int32).tolist(),
        "hold_ran_ns": _unknown_as_minus_one(a["hold_ran"]),
        "hold_wait_ns": _unknown_as_minus_one(a["hold_waited"]),
        "tid": a["tid"].astype(np.int32).tolist(),
        "syn_retrans": a["syn_retrans"].astype(np.int32).tolist(),
        "retrans": a["retrans"].astype(np.int32).tolist(),
        "resets": a["resets"].astype(np.int32).tolist(),
        "flags": a["flags"].astype(np.int32).tolist(),
    }


def _unknown_as_minus_one(v: np.ndarray) -> list:
    """A u64 where all ones means unknown -> int64 with -1 for unknown."""
    return np.where(v == np.iinfo(np.uint64).max, -1, v.astype(np.int64)).astype(np.int64).tolist()


def rows(columns: Dict[str, list]) -> List[dict]:
    """Columns -> one dict per row (for `on_event` callbacks)."""
    names = list(columns)
    return [dict(zip(names, vals)) for vals in zip(*columns.values())]
