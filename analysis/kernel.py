"""Transactions from kernel evidence alone, for `spiketrace trace` runs: every TCP connection on
the traced ports is a transaction (connection-per-transaction), built from connections.parquet.

The tracer tracks every connection in the kernel but sends user space only the slow or
anomalous ones (setup or lifetime above its threshold, a retransmit); the others are only
counted (`meta.json` counts.connections_counted vs connections_sent) and folded into log2
histograms (histograms.parquet). So:

- the transactions explained are the connections sent, one per TCP connection: its client-side
  row when the client is local (t_open = SYN sent), else its server-side row (t_open = the child
  socket created by the handshake's last ACK). When both sides are local (loopback), the server
  row of the same connection (reversed 4-tuple, opened while the client row was open) is merged
  into the client row: one connection, one transaction;
- the population the spike rule compares against (the median) comes from the kernel's lifetime
  histogram, which counts every connection: a log2 histogram knows each value within a factor
  of two, so percentiles from it are approximate ranges.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from analysis import facts
from analysis.join import asof_interval
from common.vocab import CONN_PARTIAL, CONN_REFUSED, HIST_NAMES, HISTOGRAMS

HIST_PERCENTILES = (50, 90, 99, 99.9)


def _int(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        return np.zeros(len(df), dtype=np.int64)
    return pd.to_numeric(df[col], errors="coerce").fillna(0).to_numpy(dtype=np.int64)


def _known(df: pd.DataFrame, col: str) -> np.ndarray:
    """An int column where -1 means unknown (and a table without the column knows nothing)."""
    if col not in df:
        return np.full(len(df), -1, dtype=np.int64)
    return pd.to_numeric(df[col], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)


def _addr(values) -> np.ndarray:
    """Address strings, IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as plain IPv4."""
    vals = pd.Series(values).astype(object).where(pd.Series(values).notna(), "").astype(str).tolist()
    return np.array([a[7:] if a.startswith("::ffff:") and "." in a else a for a in vals], dtype=object)


def _tuple_key(caddr, cport, saddr, sport) -> np.ndarray:
    """An int64 per client-oriented 4-tuple (addresses factorized together)."""
    codes, _ = pd.factorize(np.concatenate([caddr, saddr]))
    n = len(caddr)
    a, b = codes[:n].astype(np.int64), codes[n:].astype(np.int64)
    m = int(codes.max()) + 1 if len(codes) else 1
    pair = a * m + b
    return pair << 32 | (np.asarray(cport, np.int64) & 0xFFFF) << 16 | (np.asarray(sport, np.int64) & 0xFFFF)


def kernel_connections(conns: pd.DataFrame, slack_ns: int = 1_000_000) -> pd.DataFrame:
    """One row per TCP connection, client-oriented (`caddr:cport` the client, `saddr:sport` the
    server), from connections.parquet: client rows, server rows merged into the client row of the
    same connection, and the server rows left (their client is not local, or was not sent).

    Columns: caddr, cport, saddr, sport, t_open, t_established, t_first_data, t_close, pid
    (client pid, 0 if the client is not local), comm, server_pid, seen (`client`, `server`,
    `both`), syn_retrans, retrans, resets, flags, netns."""
    cols = ["caddr", "cport", "saddr", "sport", "t_open", "t_established", "t_first_data", "t_close",
            "pid", "comm", "server_pid", "seen", "syn_retrans", "retrans", "resets", "flags", "netns",
            "srv_hold_ns", "srv_hold_end", "srv_hold_tid", "srv_hold_ran", "srv_hold_wait", "tid", "srv_tid",
            "cli_first_read", "cli_first_write", "srv_first_read"]
    if conns is None or conns.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("caddr", "saddr", "comm", "seen") else np.int64)
                             for c in cols})
    role = conns["role"].astype(str).to_numpy()
    cl = conns[role == "client"]
    sv = conns[role != "client"]
    client = pd.DataFrame({
        "caddr": _addr(cl["saddr"]), "cport": _int(cl, "sport"), "saddr": _addr(cl["daddr"]),
        "sport": _int(cl, "dport"), "t_open": _int(cl, "t_open"), "t_established": _int(cl, "t_established"),
        "t_first_data": _int(cl, "t_first_data"), "t_close": _int(cl, "t_close"), "pid": _int(cl, "pid"),
        "comm": cl["comm"].astype(str).to_numpy() if "comm" in cl else "", "server_pid": 0,
        "seen": "client", "syn_retrans": _int(cl, "syn_retrans"), "retrans": _int(cl, "retrans"),
        "resets": _int(cl, "resets"), "flags": _int(cl, "flags"), "netns": _int(cl, "netns"),
        "srv_hold_ns": 0, "srv_hold_end": 0, "srv_hold_tid": 0, "srv_hold_ran": -1, "srv_hold_wait": -1,
        "tid": _int(cl, "tid"), "srv_tid": 0,  # the connecting thread
        "cli_first_read": _int(cl, "t_first_read"),  # the client's first read of a reply
        "cli_first_write": _int(cl, "t_first_write"), "srv_first_read": 0})
    server = pd.DataFrame({  # seen from the server: its peer is the client
        "caddr": _addr(sv["daddr"]), "cport": _int(sv, "dport"), "saddr": _addr(sv["saddr"]),
        "sport": _int(sv, "sport"), "t_open": _int(sv, "t_open"), "t_established": _int(sv, "t_established"),
        "t_first_data": _int(sv, "t_first_data"), "t_close": _int(sv, "t_close"), "pid": 0,
        "comm": "", "server_pid": _int(sv, "pid"), "seen": "server",
        "syn_retrans": _int(sv, "syn_retrans"), "retrans": _int(sv, "retrans"),
        "resets": _int(sv, "resets"), "flags": _int(sv, "flags"), "netns": _int(sv, "netns"),
        # the server's longest hold of the conversation: a read of a request to its reply
        "srv_hold_ns": _int(sv, "hold_ns"), "srv_hold_end": _int(sv, "hold_end"),
        "srv_hold_tid": _int(sv, "hold_tid"), "srv_hold_ran": _known(sv, "hold_ran_ns"),
        "srv_hold_wait": _known(sv, "hold_wait_ns"), "tid": 0, "srv_tid": _int(sv, "tid"), "cli_first_read": 0,
        "cli_first_write": 0, "srv_first_read": _int(sv, "t_first_read")})
    if len(client) and len(server):
        keys = _tuple_key(np.r_[client["caddr"].to_numpy(), server["caddr"].to_numpy()],
                          np.r_[client["cport"].to_numpy(), server["cport"].to_numpy()],
                          np.r_[client["saddr"].to_numpy(), server["saddr"].to_numpy()],
                          np.r_[client["sport"].to_numpy(), server["sport"].to_numpy()])
        ck, sk = keys[:len(client)], keys[len(client):]
        c_open = client["t_open"].to_numpy()
        c_close = client["t_close"].to_numpy()
        c_close = np.where(c_close > 0, c_close, np.iinfo(np.int64).max - slack_ns)
        s_time = np.where(server["t_open"].to_numpy() > 0, server["t_open"].to_numpy(),
                          server["t_established"].to_numpy())
        hit = asof_interval(sk, s_time, ck, c_open - slack_ns, c_close + slack_ns)
        both = np.flatnonzero(hit >= 0)
        if len(both):
            ci = hit[both]
            client.loc[client.index[ci], "server_pid"] = server["server_pid"].to_numpy()[both]
            client.loc[client.index[ci], "seen"] = "both"
            # a missed ESTABLISHED of the client (a skipped probe run, counted as lost): the
            # server saw the handshake complete, so its time stands in for the client's
            c_est = client["t_established"].to_numpy()[ci]
            s_est = server["t_established"].to_numpy()[both]
            fill = (c_est == 0) & (s_est > 0)
            client.loc[client.index[ci[fill]], "t_established"] = s_est[fill]
            for col in ("srv_hold_ns", "srv_hold_end", "srv_hold_tid", "srv_hold_ran", "srv_hold_wait", "srv_tid",
                        "srv_first_read"):
                client.loc[client.index[ci], col] = server[col].to_numpy()[both]
            for col in ("retrans", "resets"):
                client.loc[client.index[ci], col] = client[col].to_numpy()[ci] + server[col].to_numpy()[both]
            client.loc[client.index[ci], "flags"] = client["flags"].to_numpy()[ci] | server["flags"].to_numpy()[both]
        server = server.iloc[np.flatnonzero(hit < 0)]
    out = pd.concat([client, server], ignore_index=True) if len(server) else client.reset_index(drop=True)
    # a client's missed ESTABLISHED (CONN_GAP) and no server record to stand in: its first write
    # of data, which only an established socket sends, bounds it
    est, first_write = out["t_established"].to_numpy(), out["cli_first_write"].to_numpy()
    out["t_established"] = np.where((est == 0) & (first_write > 0), first_write, est)
    # a connection first seen after its open (tracing started late, CONN_PARTIAL) has no open
    # time: it starts when it was first known, so it is not a spike of its whole past
    t_open = out["t_open"].to_numpy()
    est, close = out["t_established"].to_numpy(), out["t_close"].to_numpy()
    out["t_open"] = np.where(t_open > 0, t_open, np.where(est > 0, est, close))
    return out.sort_values("t_open", kind="stable").reset_index(drop=True)[cols]


def transactions_from_kernel(k: pd.DataFrame) -> pd.DataFrame:
    """The transactions table (docs/run-directory.md schema) of kernel connections: open ->
    close, t_connected = ESTABLISHED, t_reply1 = first data (0 until the tracer records it).

    Outcome: `connect_failed` when the handshake never completed (ECONNREFUSED when a reset
    answered the SYN), else `ok`: a reset that *closes* an established connection is how
    servers with SO_LINGER {1, 0} (the original question's) end every connection, not a failure;
    resets before the end are still evidence (events.parquet)."""
    if k.empty:
        return pd.DataFrame({c: pd.Series(dtype=np.int64) for c in (
            "id", "worker", "pid", "local_port", "remote_port", "t_start", "t_connected", "t_reply1",
            "t_reply2", "t_end", "connect_attempts", "last_errno")}).assign(
            local_addr=pd.Series(dtype=object), remote_addr=pd.Series(dtype=object), outcome=pd.Series(dtype=object))
    flags = k["flags"].to_numpy()
    est = k["t_established"].to_numpy()
    refused = (flags & CONN_REFUSED) > 0
    partial = (flags & CONN_PARTIAL) > 0  # first seen after its open: its handshake was not seen
    failed = refused | ((est == 0) & (k["t_close"].to_numpy() > 0) & ~partial)
    return pd.DataFrame({
        "id": np.arange(len(k), dtype=np.int64), "worker": np.zeros(len(k), np.int32),
        "pid": k["pid"].to_numpy().astype(np.int32),
        "local_addr": k["caddr"].to_numpy(), "local_port": k["cport"].to_numpy(),
        "remote_addr": k["saddr"].to_numpy(), "remote_port": k["sport"].to_numpy(),
        "t_start": k["t_open"].to_numpy(), "t_connected": est, "t_reply1": k["t_first_data"].to_numpy(),
        "t_reply2": np.zeros(len(k), np.int64), "t_end": k["t_close"].to_numpy(),
        "connect_attempts": np.ones(len(k), np.int32),
        "last_errno": np.where(refused, facts.ECONNREFUSED, 0).astype(np.int32),
        "outcome": np.where(failed, "connect_failed", "ok").astype(object),
        "srv_hold_ns": k["srv_hold_ns"].to_numpy(), "srv_hold_end": k["srv_hold_end"].to_numpy(),
        "srv_hold_tid": k["srv_hold_tid"].to_numpy(), "srv_hold_ran": k["srv_hold_ran"].to_numpy(),
        "srv_hold_wait": k["srv_hold_wait"].to_numpy(), "tid": k["tid"].to_numpy(),
        "cli_first_write": k["cli_first_write"].to_numpy(), "srv_first_read": k["srv_first_read"].to_numpy(),
        "seen": k["seen"].to_numpy(), "conn_flags": k["flags"].to_numpy(),
        "srv_tid": np.where(k["srv_hold_tid"].to_numpy() > 0, k["srv_hold_tid"].to_numpy(), k["srv_tid"].to_numpy())})


# ---- histograms ----------------------------------------------------------------------------
def read_histograms(df: Optional[pd.DataFrame]) -> Dict[str, np.ndarray]:
    """histograms.parquet -> name -> counts per log2 bucket (64), from the latest snapshot of
    each name (the tracer writes cumulative snapshots every 30 s and at stop)."""
    out: Dict[str, np.ndarray] = {}
    if df is None or df.empty:
        return out
    t = _int(df, "t_ns")
    names = df["name"].astype(str).to_numpy()
    buckets = _int(df, "log2_bucket")
    counts = _int(df, "count")
    for name in pd.unique(names):
        sel = names == name
        last = t[sel].max()
        keep = sel & (t == last)
        h = np.zeros(64, dtype=np.int64)
        np.add.at(h, np.clip(buckets[keep], 0, 63), counts[keep])
        out[str(name)] = h
    return out


def bucket_range(b: int) -> Tuple[float, float]:
    """The values [low, high) ns counted in log2 bucket b. The tracer's buckets are BCC's
    `bpf_log2l(v)` = floor(log2 v) + 1 (as in bcc's tools and print_log2_hist): bucket b holds
    [2^(b-1), 2^b), bucket 0 holds 0."""
    if b <= 0:
        return (0.0, 1.0)
    return (float(2 ** (b - 1)), float(2 ** b))


def hist_percentile(counts: np.ndarray, p: float) -> Tuple[float, float]:
    """The range [low, high) ns of the bucket holding the p-th percentile of a log2 histogram."""
    total = int(counts.sum())
    if total == 0:
        return (0.0, 0.0)
    rank = p / 100.0 * total
    b = int(np.searchsorted(np.cumsum(counts), max(rank, 1), side="left"))
    return bucket_range(min(b, len(counts) - 1))


def hist_median_ns(counts: np.ndarray) -> float:
    """A point estimate of the median: the geometric middle of its bucket (within a factor of
    sqrt(2) of the truth)."""
    lo, hi = hist_percentile(counts, 50)
    return float(np.sqrt(max(lo, 1.0) * hi)) if hi else 0.0


def hist_summary(hists: Dict[str, np.ndarray]) -> List[Dict[str, object]]:
    """Per histogram: count and approximate percentiles as [low, high) ranges in ms."""
    rows = []
    for name in list(HIST_NAMES) + sorted(set(hists) - set(HIST_NAMES)):
        h = hists.get(name)
        if h is None or not h.sum():
            continue
        nz = np.flatnonzero(h)
        row: Dict[str, object] = {"name": name, "what": HISTOGRAMS.get(name, name), "count": int(h.sum())}
        for p in HIST_PERCENTILES:
            lo, hi = hist_percentile(h, p)
            row[f"p{p:g}_ms"] = [lo / 1e6, hi / 1e6]
        lo, hi = bucket_range(int(nz[-1]))
        row["max_ms"] = [lo / 1e6, hi / 1e6]
        rows.append(row)
    return rows


def range_text(lo_ms: float, hi_ms: float) -> str:
    """`0.52-1.05 ms`: an approximate value from a log2 bucket."""
    from common.vocab import fmt_ms as format_ms

    if hi_ms <= 0:
        return "0"
    a, b = format_ms(lo_ms), format_ms(hi_ms)
    ua, ub = a.split()[-1], b.split()[-1]
    return f"{a.split()[0]}-{b}" if ua == ub else f"{a}-{b}"
