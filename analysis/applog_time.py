"""The application log join by time (analysis.applog.match, step 2): each entry's kernel
connection among those opened within its window and living about as long, assigned exactly
(one connection per entry, as many entries as can be, then the least distance), narrowed by a
client's life (a log file is one thread's or process's; an entry is an answered request), and
the clock offset between the log and the kernel estimated from the slow entries."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pandas as pd

from common.vocab import CONN_PARTIAL

S = 1_000_000_000
MS = 1_000_000


def _clock_offset(idx, start, dur, win, k_open, k_life, kernel_slow_ns):
    """The offset (ns) to add to the log's starts so they meet the kernel's: among the log's
    slow entries and the kernel's connections that lived as long (within 2%, 1 ms), the offset
    (k_open - start) most pairs agree on (1 ms bins, the densest and its neighbours). None
    if fewer than 3 pairs agree or the offset is under a millisecond."""
    slow = idx[dur[idx] >= 0.8 * kernel_slow_ns]
    live = np.flatnonzero(k_life > 0)
    if len(slow) < 3 or len(live) < 3:
        return None
    order = live[np.argsort(k_open[live], kind="stable")]
    t_sorted = k_open[order]
    reach = np.maximum(win[slow], S)  # a second either way at most
    lo = np.searchsorted(t_sorted, start[slow] - reach, side="left")
    hi = np.searchsorted(t_sorted, start[slow] + reach, side="right")
    counts = hi - lo
    if counts.sum() == 0 or counts.sum() > 2_000_000:
        return None
    owner = np.repeat(np.arange(len(slow)), counts)
    firsts = np.cumsum(counts) - counts
    j = order[np.repeat(lo, counts) + (np.arange(int(counts.sum())) - np.repeat(firsts, counts))]
    e = slow[owner]
    same = np.abs(k_life[j] - dur[e]) <= np.maximum(MS, dur[e] // 50)
    d, e = (k_open[j] - start[e])[same], e[same]
    if len(d) < 3:
        return None
    bins = np.floor(d / MS).astype(np.int64)
    values, counts = np.unique(bins, return_counts=True)
    best = values[np.argmax(counts)]
    near = np.abs(bins - best) <= 1
    # most entries that have a look-alike agree on this offset (not a few coincidences)
    if len(np.unique(e[near])) < max(3, 0.5 * len(np.unique(e))):
        return None
    offset = int(np.median(d[near]))
    return offset if abs(offset) >= MS else None


def _not_a_request(k: pd.DataFrame, meta) -> np.ndarray:
    """Kernel connections no log entry (a request the client saw answered) can be: those whose
    handshake never completed (a connect given up or refused; seen whole, not first seen late),
    and, where the tracer recorded the client's reads (the conn_life probe), those whose client
    never read a reply (spare connections of a load generator, left unused at its exit)."""
    est = k["t_established"].to_numpy() if "t_established" in k else np.ones(len(k), np.int64)
    flags = k["flags"].to_numpy().astype(np.int64) if "flags" in k else np.zeros(len(k), np.int64)
    seen_whole = (flags & CONN_PARTIAL) == 0
    barred = (est == 0) & seen_whole
    life_probe = str((getattr(meta, "probes", None) or {}).get("conn_life", "")) not in ("", "skipped", "missing")
    if life_probe and "cli_first_read" in k and "seen" in k:
        client = (k["seen"].astype(str).to_numpy() != "server")
        barred |= client & (k["cli_first_read"].to_numpy() == 0) & seen_whole
    return barred


def _ids(k: pd.DataFrame) -> np.ndarray:
    """(connections, 2): each kernel connection's client thread id and process id (0: unknown)."""
    cols = [k[c].to_numpy().astype(np.int64) if c in k else np.zeros(len(k), np.int64) for c in ("tid", "pid")]
    return np.column_stack(cols) if len(k) else np.zeros((0, 2), np.int64)


def _file_owner(workers: np.ndarray, idx: np.ndarray, conn: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(entries, 2): per entry, the client thread (column 0) or process (column 1) its log file
    belongs to, 0 where not known. A log file is one client's (ab: a process; pgbench -l with
    -j: one file per thread): when most of a file's entries matched by time (a first pass, among
    look-alikes) met one thread's connections (>= 60%, at least 3, three times the next thread's),
    that thread is the file's, else the same for processes; an entry that met another's
    connection met a look-alike. `ids`: the kernel connections' `_ids`."""
    owner = np.zeros((len(workers), 2), np.int64)
    m = idx[conn[idx] >= 0]
    for w in np.unique(workers[m]).tolist():
        mine = conn[m[workers[m] == w]]
        for col in (0, 1):
            known = ids[mine, col][ids[mine, col] > 0]
            if len(known) < 3:
                continue
            values, counts = np.unique(known, return_counts=True)
            order = np.argsort(counts)[::-1]
            top = int(order[0])
            runner_up = int(counts[order[1]]) if len(order) > 1 else 0
            if counts[top] >= 0.6 * len(known) and counts[top] >= 3 * runner_up:
                owner[workers == w, col] = values[top]
                break
    return owner


def _match_by_time(idx, start, dur, other, k_sport, k_open, k_life, used, window_ns, conn, how, dist,
                   res=None, owner=None, k_ids=None) -> None:
    """Each entry's connection, by time: one opened within the window of the entry's start and
    living about as long as the entry took; one connection per entry (`_assign`). `window_ns`:
    per entry (an array) or one for all. `res`: each start's resolution (a start known to the
    second is centred in it; within that, the opening time tells nothing and the lifetime
    decides). With `owner` (`_file_owner`), an entry whose thread or process is known takes only
    that one's connections (`k_ids`: `_ids`)."""
    window_ns = np.broadcast_to(np.asarray(window_ns, dtype=np.int64), start.shape)
    vague = np.zeros(len(start), np.int64) if res is None else np.asarray(res, dtype=np.int64) // 2
    i, ki = _near(idx, start, window_ns, np.flatnonzero(~used), k_open)
    life = k_life[ki]
    ok = (life < 0) | (np.abs(life - dur[i]) <= np.minimum(window_ns[i], 100 * MS) + dur[i] // 4)
    score = np.maximum(np.abs(k_open[ki] - start[i]) - vague[i], 0) + np.where(life >= 0, np.abs(life - dur[i]), 0)
    i, ki, score = i[ok], ki[ok], score[ok]
    plausible = (other[i] == 0) | (k_sport[ki] == other[i])
    if owner is not None:
        o = owner[i]
        plausible &= (o[:, 0] == 0) | (k_ids[ki, 0] == o[:, 0])
        plausible &= (o[:, 1] == 0) | (k_ids[ki, 1] == o[:, 1])
    i, ki, score = i[plausible], ki[plausible], score[plausible]
    if len(i) == 0:
        return
    n_cand = pd.Series(i).value_counts()
    for p in _assign(i, ki, score):
        a, b = int(i[p]), int(ki[p])
        conn[a] = b
        how[a] = "unique" if n_cand[a] == 1 else "ambiguous"
        dist[a] = int(abs(k_open[b] - start[a]))
        used[b] = True


def _near(idx: np.ndarray, t: np.ndarray, window_ns: np.ndarray, pool: np.ndarray,
          k_t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(entry, connection) pairs: the connections of `pool` whose `k_t` lies within each entry's
    window of its `t`."""
    order = pool[np.argsort(k_t[pool], kind="stable")]
    t_sorted = k_t[order]
    lo = np.searchsorted(t_sorted, t[idx] - window_ns[idx], side="left")
    hi = np.searchsorted(t_sorted, t[idx] + window_ns[idx], side="right")
    counts = hi - lo
    entry = np.repeat(np.arange(len(idx)), counts)
    starts = np.cumsum(counts) - counts
    j = np.repeat(lo, counts) + (np.arange(int(counts.sum())) - np.repeat(starts, counts))
    return idx[entry], order[j]


def _assign(i: np.ndarray, ki: np.ndarray, score: np.ndarray) -> List[int]:
    """The candidate pairs (entry i, connection ki) to keep: one connection per entry and one
    entry per connection, as many entries matched as can be, then the least total score. Solved
    exactly (scipy's linear_sum_assignment) within each group of entries that compete for the
    same connections; a greedy best-first pick would leave an entry without its connection when
    a look-alike took it first."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ue, ie = np.unique(i, return_inverse=True)
    uk, ik = np.unique(ki, return_inverse=True)
    graph = coo_matrix((np.ones(len(i)), (ie, len(ue) + ik)), shape=(len(ue) + len(uk),) * 2)
    _, label = connected_components(graph, directed=False)
    keep = []
    pairs = pd.DataFrame({"p": np.arange(len(i)), "e": ie, "k": ik, "g": label[ie]})
    for _, grp in pairs.groupby("g", sort=False):
        if len(grp) == 1:
            keep.append(int(grp["p"].iat[0]))
            continue
        rows, r = np.unique(grp["e"].to_numpy(), return_inverse=True)
        cols, c = np.unique(grp["k"].to_numpy(), return_inverse=True)
        cost = score[grp["p"].to_numpy()].astype(float)
        missing = cost.sum() + 1.0  # worse than any set of real pairs: matched count first
        matrix = np.full((len(rows), len(cols)), missing)
        best = np.full((len(rows), len(cols)), -1, dtype=np.int64)
        for rr, cc, cs, pp in zip(r, c, cost, grp["p"].to_numpy()):
            if best[rr, cc] < 0 or cs < matrix[rr, cc]:
                matrix[rr, cc], best[rr, cc] = cs, pp
        for rr, cc in zip(*linear_sum_assignment(matrix)):
            if best[rr, cc] >= 0:
                keep.append(int(best[rr, cc]))
    return keep
