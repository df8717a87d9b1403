"""Vectorised joins of evidence to transactions (no per-row Python loops).

- Kernel events -> transactions by connection key AND time: a client port is reused many
  times in a long run, so an event belongs to the transaction of its 4-tuple whose
  [t_start - slack, end + slack] holds it (`merge_asof` by key, then an interval check).
- server.parquet rows -> transactions the same way (peer port == client port, accept time).
- Per-thread evidence (run-queue delays, connect() error streaks without a port) -> transactions
  by thread id and overlap of intervals (`pid_overlaps`).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd


def asof_interval(item_key: np.ndarray, item_t: np.ndarray, txn_key: np.ndarray,
                  txn_lo: np.ndarray, txn_hi: np.ndarray) -> np.ndarray:
    """For each item (key, t): the index of the transaction with the same key whose
    [lo, hi] holds t, or -1. Transactions of one key must not overlap in time (one 4-tuple
    carries one connection at a time)."""
    n = len(item_key)
    out = np.full(n, -1, dtype=np.int64)
    valid = item_key >= 0
    if n == 0 or len(txn_key) == 0 or not valid.any():
        return out
    items = pd.DataFrame({"t": np.asarray(item_t, dtype=np.int64)[valid],
                          "key": np.asarray(item_key, dtype=np.int64)[valid],
                          "i": np.flatnonzero(valid)})
    items = items.sort_values("t", kind="stable")
    txns = pd.DataFrame({"t": np.asarray(txn_lo, dtype=np.int64),
                         "key": np.asarray(txn_key, dtype=np.int64),
                         "ti": np.arange(len(txn_key), dtype=np.int64)})
    txns = txns.sort_values("t", kind="stable")
    merged = pd.merge_asof(items, txns, on="t", by="key", direction="backward")
    ti = merged["ti"].fillna(-1).to_numpy(dtype=np.int64)
    idx = merged["i"].to_numpy(dtype=np.int64)
    hit = ti >= 0
    inside = np.zeros(len(ti), dtype=bool)
    inside[hit] = merged["t"].to_numpy()[hit] <= np.asarray(txn_hi, dtype=np.int64)[ti[hit]]
    out[idx[inside]] = ti[inside]
    return out


def expand_ranges(lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Every (i, j) with lo[i] <= j < hi[i], as two flat arrays."""
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(lo), dtype=np.int64), counts)
    if total == 0:
        return owner, np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    j = np.repeat(lo, counts) + (np.arange(total, dtype=np.int64) - np.repeat(starts, counts))
    return owner, j


def pid_overlaps(tgt_pid: np.ndarray, tgt_a: np.ndarray, tgt_b: np.ndarray,
                 ev_pid: np.ndarray, ev_a: np.ndarray, ev_b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs (target i, event j) of the same thread whose intervals overlap.

    One loop per *thread* (a handful of bench workers and the server), vectorised inside:
    a thread waits in one run queue stretch at a time, so its events sorted by end are also
    sorted by start (a running max keeps that true for odd data); two binary searches bound the
    candidates of every target and a final filter keeps the true overlaps.
    """
    out_i, out_j = [], []
    if len(tgt_pid) == 0 or len(ev_pid) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ev_order = np.lexsort((ev_b, ev_pid))
    sp = ev_pid[ev_order]
    pids, first = np.unique(sp, return_index=True)
    last = np.r_[first[1:], len(sp)]
    bounds = dict(zip(pids.tolist(), zip(first.tolist(), last.tolist())))
    for pid in np.unique(tgt_pid).tolist():
        if pid not in bounds:
            continue
        lo_e, hi_e = bounds[pid]
        sel = ev_order[lo_e:hi_e]
        eb = ev_b[sel]
        ea_env = np.maximum.accumulate(ev_a[sel])
        ti = np.flatnonzero(tgt_pid == pid)
        lo = np.searchsorted(eb, tgt_a[ti], side="left")  # events ending at/after the start
        hi = np.searchsorted(ea_env, tgt_b[ti], side="right")  # ... and starting by the end
        owner, j = expand_ranges(lo, hi)
        if len(j) == 0:
            continue
        i, e = ti[owner], sel[j]
        keep = (ev_a[e] <= tgt_b[i]) & (ev_b[e] >= tgt_a[i])
        out_i.append(i[keep])
        out_j.append(e[keep])
    if not out_i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(out_i), np.concatenate(out_j)


def nearest(sorted_t: np.ndarray, a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each window [a, b]: the index (into sorted_t) of the nearest time and its distance
    (0 if one falls inside); -1 if sorted_t is empty."""
    n = len(a)
    if len(sorted_t) == 0:
        return np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    after = np.searchsorted(sorted_t, a, side="left")  # first time >= a
    after_c = np.clip(after, 0, len(sorted_t) - 1)
    before_c = np.clip(after - 1, 0, len(sorted_t) - 1)
    d_after = np.where(after < len(sorted_t), np.maximum(sorted_t[after_c] - b, 0), np.iinfo(np.int64).max)
    d_before = np.where(after > 0, a - sorted_t[before_c], np.iinfo(np.int64).max)
    use_after = d_after <= d_before
    idx = np.where(use_after, after_c, before_c)
    dist = np.where(use_after, d_after, d_before)
    return idx, dist
