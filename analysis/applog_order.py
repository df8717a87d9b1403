"""Matching an application log that has no time and no port (the original question's plain
output: one duration per line) to the kernel's connections by ORDER and duration: a file's
slow entries, in order, aligned with one process's recorded connections, in time order, whose
lifetimes agree with their durations (a longest-common-subsequence alignment). Used by
analysis.applog.match (`match` = `order`, a clearly weaker match)."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

MS = 1_000_000
DP_MAX_CELLS = 20_000_000  # order matching: slow entries x connections of one process


def match_by_order(files: List[np.ndarray], dur, k, k_life, used, kernel_slow_ns, conn, how, dist) -> None:
    """Plain durations (no time, no port): the kernel only holds the slow connections, so align
    each file's slow entries (in file order) with the connections of one process (in time order)
    whose lifetimes agree, keeping the order (longest common subsequence). Files and processes
    are paired best alignment first (one process per file)."""
    pids = k["pid"].to_numpy()
    t_open = k["t_open"].to_numpy()
    groups = {}
    for pid in np.unique(pids[~used]).tolist():
        cand = np.flatnonzero((pids == pid) & ~used & (k_life >= 0))
        if len(cand):
            groups[pid] = cand[np.argsort(t_open[cand], kind="stable")]
    scores = []
    for f, idx in enumerate(files):
        pos = np.flatnonzero(dur[idx] >= 0.8 * kernel_slow_ns)
        slow = idx[pos]
        before = np.concatenate([[0], np.cumsum(dur[idx])])[pos]  # time logged before each
        for pid, cand in groups.items():
            pairs = _consistent(_lcs(dur[slow], k_life[cand]), before, t_open[cand])
            if pairs:
                scores.append((len(pairs), f, pid, slow, cand, pairs))
    done_f, done_p = set(), set()
    for _, f, pid, slow, cand, pairs in sorted(scores, key=lambda x: -x[0]):
        if f in done_f or pid in done_p:
            continue
        done_f.add(f)
        done_p.add(pid)
        for a, b in pairs:
            conn[slow[a]] = cand[b]
            how[slow[a]] = "order"
            dist[slow[a]] = int(abs(k_life[cand[b]] - dur[slow[a]]))
            used[cand[b]] = True


def _consistent(pairs: List[Tuple[int, int]], before: np.ndarray, opens: np.ndarray) -> List[Tuple[int, int]]:
    """Keep the pairs whose timing agrees with the log: between two matched entries, the entries
    in between ran one after the other, so the kernel time between their connections' opens is at
    least (nearly) the durations logged in between."""
    out: List[Tuple[int, int]] = []
    for a, b in pairs:
        if out:
            pa, pb = out[-1]
            if opens[b] - opens[pb] < 0.9 * (before[a] - before[pa]) - 10 * MS:
                continue
        out.append((a, b))
    return out


def _agrees(duration: np.ndarray, lifetime: np.ndarray) -> np.ndarray:
    """Can a connection of this lifetime be the one of an entry of this duration? The entry's
    time includes work before connect() (socket creation, the previous socket's close), so the
    connection may be somewhat shorter; it may outlive the entry a little (a lazy close)."""
    return ((lifetime >= 0.75 * duration - 10 * MS) &
            (lifetime <= duration + np.maximum(10 * MS, duration // 10)))


def _lcs(a: np.ndarray, b: np.ndarray) -> List[Tuple[int, int]]:
    """Longest order-preserving pairing of durations a[i] with agreeing lifetimes b[j] (DP rows
    as running maxima, then one backtrack)."""
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    if n * m > DP_MAX_CELLS:  # too big for the table: greedy in order
        out, j = [], 0
        for i in range(n):
            while j < m and not _agrees(a[i:i + 1], b[j:j + 1])[0]:
                j += 1
            if j == m:
                break
            out.append((i, j))
            j += 1
        return out
    dp = np.zeros((n + 1, m + 1), dtype=np.int32)
    for i in range(1, n + 1):
        hit = _agrees(np.full(m, a[i - 1]), b).astype(np.int32)
        cand = np.maximum(dp[i - 1, 1:], dp[i - 1, :-1] + hit)
        dp[i, 1:] = np.maximum.accumulate(cand)
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if dp[i, j] == dp[i - 1, j]:
            i -= 1
        elif dp[i, j] == dp[i, j - 1]:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i -= 1
            j -= 1
    return pairs[::-1]
