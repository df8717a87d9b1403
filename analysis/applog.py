"""The application's own latency log, joined to the kernel's connections
(`spiketrace report RUN_DIR --transactions FILE`).

An application knows which of its requests were slow; the kernel knows why. This module reads
the application's log (docs/your-application.md gives the schema), matches each entry to the
kernel connection it used, and turns the entries into the transactions the analysis explains:
the spikes are then the application's slow entries.

Accepted files (one or more; each file is one `worker` in the report):
- **plain**: one number per line, the elapsed seconds (the original question's client output).
  No time, no port: entries are matched by ORDER and duration to the kernel connections (per
  process), a clearly weaker match (`order`).
- **CSV / whitespace / tab-separated with a header line**, or **JSON lines**, with
  - a duration: `duration_s`, `duration_ms`, `duration_us`, `duration_ns` or `duration`
    (seconds; also `latency*` / `elapsed*` with the same suffixes), optional if both `start` and
    `end` are given;
  - optionally a timestamp: `start` or `end` (or `timestamp`/`ts`/`time`, which marks the start
    unless `--ts-kind end`): wall clock as epoch seconds (or ms/us/ns, told apart by magnitude)
    or ISO 8601, or CLOCK_MONOTONIC ns; converted with meta.json's clock anchor;
  - optionally `local_port` and/or `remote_port` (the application's side and its peer's).

Matching, per entry, with its confidence (`match`) and time distance (`match_distance_ns`):
- `port`: a port and the time (or the port alone) single out one kernel connection;
- `unique`: by time only, exactly one kernel connection opened within the window;
- `ambiguous`: by time only, several candidates; the nearest in open time and duration won;
- `order`: no time, no port: the n-th slow entry of a file is the n-th kernel connection of one
  process whose lifetime agrees with its duration (a longest-common-subsequence alignment);
- `none`: no kernel connection fits (the kernel only sends connections slower than its
  threshold or with a retransmit, so fast entries normally match nothing).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd

from analysis.applog_order import match_by_order
from analysis.applog_time import _clock_offset, _file_owner, _ids, _match_by_time, _not_a_request
from analysis.applog_read import _NO_TIME, AppLog, _iso_to_ns, read_app_log  # noqa: F401
from common.errors import SpikeTraceError

S = 1_000_000_000
MS = 1_000_000

# ---- times -------------------------------------------------------------------------------
def resolve_times(app: AppLog, meta, span: Tuple[int, int]) -> Tuple[np.ndarray, List[str]]:
    """Each entry's start in CLOCK_MONOTONIC ns (-1 when the log has no time). Numbers are told
    apart against the run's time span: epoch seconds/ms/us/ns (wall clock, converted with the
    clock anchor of meta.json) or monotonic ns, whichever lands inside the trace."""
    e = app.entries
    start = np.full(len(e), -1, dtype=np.int64)
    notes: List[str] = []
    anchor_ok = bool(meta.clock_wall_ns) and bool(meta.clock_monotonic_ns)
    lo, hi = span
    margin = 60 * S  # an entry may start this long before the trace or end after it
    for worker, idx in e.groupby("worker").groups.items():
        idx = np.asarray(idx)
        sub = e.iloc[idx]
        kinds = sub["ts_kind"].to_numpy()
        has = kinds != ""
        if not has.any():
            continue
        name = str(sub["file"].iloc[0])
        num = sub["ts"].to_numpy(dtype=float)
        iso = sub["ts_iso"].to_numpy()
        wall_ns = np.zeros(len(sub), dtype=np.int64)
        iso_sel = np.array([v is not None for v in iso])
        if iso_sel.any():
            if app.clock == "monotonic":
                raise SpikeTraceError(f"{name}: ISO 8601 timestamps are wall-clock times, not --clock monotonic")
            wall_ns[iso_sel] = _iso_to_ns(iso[iso_sel])
        numeric = ~iso_sel & np.isfinite(num)
        mono = np.full(len(sub), np.nan)
        if numeric.any():
            mono[numeric], how = _numeric_to_mono(num[numeric], app.clock, meta, anchor_ok, lo, hi, margin, name)
            notes.append(f"{Path(name).name}: {how}")
        if iso_sel.any():
            notes.append(f"{Path(name).name}: ISO 8601")
            if not anchor_ok:
                raise SpikeTraceError(f"{name}: wall-clock timestamps, but meta.json has no clock anchor")
        dur = sub["duration_ns"].to_numpy()
        st = np.where(kinds == "end", mono - dur, mono)
        good = np.isfinite(st)
        start[idx[good]] = np.round(st[good]).astype(np.int64)
        if iso_sel.any():  # exact integer arithmetic (a float64 epoch in ns is only 256 ns precise)
            exact = meta.clock_monotonic_ns + (wall_ns - meta.clock_wall_ns)
            exact = np.where(kinds == "end", exact - dur, exact)
            start[idx[iso_sel]] = exact[iso_sel]
    return start, notes


def _numeric_to_mono(v: np.ndarray, clock: str, meta, anchor_ok: bool, lo: int, hi: int, margin: int,
                     name: str) -> Tuple[np.ndarray, str]:
    options = []
    if clock in ("auto", "monotonic"):
        options.append(("monotonic ns", v))
    if clock in ("auto", "wall") and anchor_ok:
        for unit, scale in (("epoch seconds", 1e9), ("epoch ms", 1e6), ("epoch us", 1e3), ("epoch ns", 1.0)):
            options.append((unit, meta.clock_monotonic_ns + (v * scale - meta.clock_wall_ns)))
    best, best_key = None, (0.0, 0.0)
    for how, mono in options:
        d = np.maximum(lo - mono, 0) + np.maximum(mono - hi, 0)  # outside the trace by
        key = (float(np.mean(d <= margin)), -float(np.median(d)))
        if key[0] > 0 and (best is None or key > best_key):
            best, best_key = (mono, how), key
    if best is None:
        where = "" if anchor_ok else " (meta.json has no clock anchor to convert wall-clock times)"
        raise SpikeTraceError(
            f"{name}: its timestamps do not fall within the trace{where}: give them as epoch seconds, "
            "ISO 8601 or CLOCK_MONOTONIC ns (see docs/your-application.md)")
    return best[0], best[1]


# ---- matching -----------------------------------------------------------------------------
def match(app: AppLog, k: pd.DataFrame, meta, span: Tuple[int, int], window_ns: int,
          kernel_slow_ns: int) -> Tuple[pd.DataFrame, Dict[str, object], List[str]]:
    """Entries -> transactions (documented schema plus `source`, `match`, `match_distance_ns`)
    matched to kernel connections `k` (analysis.kernel.kernel_connections)."""
    e = app.entries
    n = len(e)
    start, clocks = resolve_times(app, meta, span)
    notes: List[str] = []
    dur = e["duration_ns"].to_numpy()
    lport, rport = e["local_port"].to_numpy(), e["remote_port"].to_numpy()
    conn = np.full(n, -1, dtype=np.int64)
    how = np.full(n, "none", dtype=object)
    dist = np.full(n, -1, dtype=np.int64)
    used = np.zeros(len(k), dtype=bool)
    k_open, k_close = k["t_open"].to_numpy(), k["t_close"].to_numpy()
    k_life = np.where(k_close > 0, k_close - k_open, -1)
    k_cport, k_sport = k["cport"].to_numpy(), k["sport"].to_numpy()
    server_ports = set(np.unique(k_sport).tolist())

    # 1. by port (and time, when known)
    cport = np.where(~np.isin(lport, list(server_ports)) & (lport > 0), lport,
                     np.where(~np.isin(rport, list(server_ports)) & (rport > 0), rport, 0))
    other = np.where(cport == lport, rport, lport)  # the server port, if given
    by_port = np.flatnonzero(cport > 0)
    if len(by_port) and len(k):
        _match_by_port(by_port, cport, other, start, dur, k_cport, k_sport, k_open, k_close, k_life,
                       window_ns, conn, how, dist)
        used[conn[conn >= 0]] = True
    # 2. by time: a start known only to the second (ab -g) lies anywhere in it; a log whose clock
    # is off the kernel's is shifted by the offset its slow entries show (estimated, reported)
    res = e["ts_resolution_ns"].to_numpy() if "ts_resolution_ns" in e else np.zeros(n, np.int64)
    by_time = np.flatnonzero((conn < 0) & (start >= 0) & (cport == 0))
    centre = np.where(start >= 0, start + res // 2, start)
    win = window_ns + res // 2
    forced = getattr(app, "clock_offset_ns", None)
    offset = forced if forced is not None else _clock_offset(by_time, centre, dur, win, k_open, k_life,
                                                             kernel_slow_ns)
    if offset:
        centre = np.where(start >= 0, centre + offset, centre)
        win = np.maximum(window_ns // 4, 2 * MS) + res // 2  # aligned: a tighter window
        how_known = "as given (--clock-offset)" if forced is not None else "estimated from its slow entries"
        notes.append(f"the log's clock is {-offset / 1e6:+.1f} ms off the kernel's ({how_known}; shifted)")
    barred = _not_a_request(k, meta)
    if len(by_time) and (~used & ~barred).any():
        taken = used | barred
        _match_by_time(by_time, centre, dur, other, k_sport, k_open, k_life, taken.copy(), win, conn, how,
                       dist, res=res)
        k_ids = _ids(k)
        owner = _file_owner(e["worker"].to_numpy(), by_time, conn, k_ids)
        if owner.any():  # again, each file's entries among its own thread's or process's connections
            conn[by_time], how[by_time], dist[by_time] = -1, "none", -1
            _match_by_time(by_time, centre, dur, other, k_sport, k_open, k_life, taken.copy(), win, conn,
                           how, dist, res=res, owner=owner, k_ids=k_ids)
        used[conn[by_time][conn[by_time] >= 0]] = True
    # 3. by order (no time, no port)
    t_start = np.where(start >= 0, centre - res // 2, start)
    coarse = (res > 0) & (conn >= 0)  # the connection's open says when it really started
    t_start[coarse] = k_open[conn[coarse]]
    plain = (start < 0) & (cport == 0)
    workers = e["worker"].to_numpy()
    files = [np.flatnonzero(plain & (workers == w)) for w in np.unique(workers[plain]).tolist()]
    if files and len(k):
        match_by_order(files, dur, k, k_life, used, kernel_slow_ns, conn, how, dist)
    # times of entries without any: interpolated between matched neighbours by their durations
    for worker in np.unique(e["worker"].to_numpy()).tolist():
        idx = np.flatnonzero((start < 0) & (e["worker"].to_numpy() == worker))
        if len(idx):
            t_start[idx] = _estimate_starts(idx, dur, conn, k_open, span, meta)

    tx = _transactions(e, t_start, dur, conn, k)
    tx["source"] = (e["file"].map(lambda f: Path(f).name) + ":" + e["line"].astype(str)).to_numpy(dtype=object)
    tx["match"] = how
    tx["match_distance_ns"] = dist
    counts = pd.Series(how).value_counts()
    stats: Dict[str, object] = {
        "entries": n, "files": list(app.files), "formats": list(app.formats),
        "matched": int((conn >= 0).sum()), "by_match": {str(a): int(b) for a, b in counts.items()},
        "kernel_connections": int(len(k)), "kernel_connections_unmatched": int(len(k) - len(np.unique(conn[conn >= 0]))),
        "window_ms": window_ns / 1e6, "timed": int((start >= 0).sum()), "timestamps": clocks,
        "clock_offset_ms": None if offset is None else round(offset / 1e6, 3)}
    return tx, stats, notes


def _match_by_port(idx, cport, other, start, dur, k_cport, k_sport, k_open, k_close, k_life, window_ns,
                   conn, how, dist) -> None:
    """The connection of that client port (and server port when given): with a time, the last one
    opened by start + window that was still open at start - window; without, the one whose
    lifetime is closest to the duration."""
    timed = idx[start[idx] >= 0]
    if len(timed):
        items = pd.DataFrame({"t": start[timed] + window_ns, "port": cport[timed].astype(np.int64),
                              "i": timed}).sort_values("t", kind="stable")
        conns = pd.DataFrame({"t": k_open.astype(np.int64), "port": k_cport.astype(np.int64),
                              "ki": np.arange(len(k_open), dtype=np.int64)}).sort_values("t", kind="stable")
        m = pd.merge_asof(items, conns, on="t", by="port", direction="backward")
        ki = m["ki"].fillna(-1).to_numpy(dtype=np.int64)
        i = m["i"].to_numpy(dtype=np.int64)
        ok = ki >= 0
        kk = np.maximum(ki, 0)
        ok &= (k_close[kk] == 0) | (k_close[kk] >= start[i] - window_ns)
        ok &= (other[i] == 0) | (k_sport[kk] == other[i])
        conn[i[ok]] = ki[ok]
        how[i[ok]] = "port"
        dist[i[ok]] = np.abs(k_open[ki[ok]] - start[i[ok]])
    untimed = idx[start[idx] < 0]
    if len(untimed):
        df = pd.DataFrame({"i": untimed, "port": cport[untimed]}).merge(
            pd.DataFrame({"port": k_cport, "ki": np.arange(len(k_cport))}), on="port")
        if len(df):
            df = df[(other[df["i"]] == 0) | (k_sport[df["ki"]] == other[df["i"]])]
            df["score"] = np.abs(k_life[df["ki"]] - dur[df["i"]])
            n_cand = df.groupby("i").size()
            best = df.sort_values("score", kind="stable").drop_duplicates("i")
            i, ki = best["i"].to_numpy(), best["ki"].to_numpy()
            conn[i] = ki
            how[i] = np.where(n_cand.reindex(i).to_numpy() > 1, "ambiguous", "port")


def _estimate_starts(idx, dur, conn, k_open, span, meta) -> np.ndarray:
    """Starts of a file's untimed entries: the matched ones start with their connection; the
    time between two matched entries, minus the durations in between, is spread evenly over the
    entries in between (a closed-loop client); outside, the mean gap. Without any match, the
    entries run back to back from the start of the trace."""
    d = dur[idx].astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(d)[:-1]])  # duration of the entries before each
    anchors = np.flatnonzero(conn[idx] >= 0)
    pos = np.arange(len(idx), dtype=float)
    if len(anchors) == 0:
        t0 = span[0] if span[0] > 0 else int(meta.clock_monotonic_ns)
        return t0 + cum
    gap_acc = (k_open[conn[idx[anchors]]] - cum[anchors]).astype(float)  # start minus durations before
    if len(anchors) > 1:
        slope = (gap_acc[-1] - gap_acc[0]) / max(anchors[-1] - anchors[0], 1)
    else:
        slope = 0.0
    slope = max(slope, 0.0)
    est = np.interp(pos, anchors.astype(float), gap_acc)
    est = np.where(pos < anchors[0], gap_acc[0] - (anchors[0] - pos) * slope, est)
    est = np.where(pos > anchors[-1], gap_acc[-1] + (pos - anchors[-1]) * slope, est)
    return (cum + np.round(est)).astype(np.int64)


def _transactions(e: pd.DataFrame, t_start: np.ndarray, dur: np.ndarray, conn: np.ndarray,
                  k: pd.DataFrame) -> pd.DataFrame:
    n = len(e)
    has = conn >= 0
    kk = np.maximum(conn, 0)

    def pick(col, default):
        if len(k) == 0:
            return np.full(n, default, dtype=object if isinstance(default, str) else np.int64)
        v = k[col].to_numpy()[kk]
        return np.where(has, v, default)

    t_end = t_start + dur
    est = pick("t_established", 0).astype(np.int64)
    t_conn = np.where(est > 0, np.clip(est, t_start, t_end), 0)
    first = pick("t_first_data", 0).astype(np.int64)
    t_r1 = np.where(first > 0, np.clip(first, np.maximum(t_conn, t_start), t_end), 0)
    return pd.DataFrame({
        "id": np.arange(n, dtype=np.int64), "worker": e["worker"].to_numpy().astype(np.int32),
        "pid": pick("pid", 0).astype(np.int32),
        "local_addr": pick("caddr", ""), "local_port": np.where(has, pick("cport", 0), 0).astype(np.int64),
        "remote_addr": pick("saddr", ""), "remote_port": np.where(has, pick("sport", 0), 0).astype(np.int64),
        "t_start": t_start.astype(np.int64), "t_connected": t_conn.astype(np.int64), "t_reply1": t_r1,
        "t_reply2": np.zeros(n, np.int64), "t_end": t_end.astype(np.int64),
        "connect_attempts": np.ones(n, np.int32), "last_errno": np.zeros(n, np.int32),
        "outcome": np.full(n, "ok", dtype=object), "server_pid": pick("server_pid", 0).astype(np.int64),
        "srv_hold_ns": pick("srv_hold_ns", 0).astype(np.int64),
        "srv_hold_end": pick("srv_hold_end", 0).astype(np.int64),
        "srv_hold_tid": pick("srv_hold_tid", 0).astype(np.int64),
        "srv_hold_ran": pick("srv_hold_ran", -1).astype(np.int64),
        "srv_hold_wait": pick("srv_hold_wait", -1).astype(np.int64),
        "cli_first_write": pick("cli_first_write", 0).astype(np.int64),
        "tid": pick("tid", 0).astype(np.int64),
        "srv_tid": np.where(pick("srv_hold_tid", 0).astype(np.int64) > 0, pick("srv_hold_tid", 0),
                            pick("srv_tid", 0)).astype(np.int64),
        "conn_row": conn})
