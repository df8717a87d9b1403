"""Read a run directory into flat numpy arrays the join and the causes work on.

Everything here is vectorised: a million transactions and a million events load in about a
second. Connections are keyed by an int64 built from the *client-oriented* 4-tuple (client
address, client port, server address, server port), so an event seen from the server side
(sport = the server port) and one seen from the client side land on the same key.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from common.errors import SpikeTraceError

PHASES = ("t_start", "t_connected", "t_reply1", "t_reply2", "t_end")


@dataclasses.dataclass
class Counters:
    """counters.parquet as step functions: name -> (sorted t_ns, value)."""

    series: Dict[str, Tuple[np.ndarray, np.ndarray]]

    def names(self) -> List[str]:
        return sorted(self.series)

    def at(self, name: str, t: np.ndarray) -> Optional[np.ndarray]:
        """The value of a cumulative counter at each time (the last sample at or before it; the
        first sample before the first)."""
        if name not in self.series:
            return None
        ts, vs = self.series[name]
        idx = np.searchsorted(ts, np.asarray(t, dtype=np.int64), side="right") - 1
        return vs[np.clip(idx, 0, len(vs) - 1)]

    def growth(self, name: str, a: np.ndarray, b: np.ndarray) -> Optional[np.ndarray]:
        """How much a cumulative counter grew between a and b."""
        va, vb = self.at(name, a), self.at(name, b)
        return None if va is None else np.maximum(vb - va, 0)

    def window_max(self, name: str, a: np.ndarray, b: np.ndarray) -> Optional[np.ndarray]:
        """The largest value of a gauge (stored on change) during each window [a, b]."""
        if name not in self.series:
            return None
        ts, vs = self.series[name]
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        start = np.clip(np.searchsorted(ts, a, side="right") - 1, 0, len(ts) - 1)
        stop = np.maximum(np.searchsorted(ts, b, side="right"), start + 1)
        if len(a) == 0:
            return np.zeros(0, dtype=np.int64)
        # max over [start, stop) for every window in one reduceat (pad so stop may equal len)
        padded = np.append(vs, vs[-1])
        return np.maximum.reduceat(padded, np.ravel(np.column_stack([start, stop])))[0::2]


@dataclasses.dataclass
class Frames:
    """The run's tables as arrays. `txn` columns are aligned with the transactions table;
    events keep their row number in events.parquet (`ev_row`), which is what evidence cites."""

    txn: pd.DataFrame  # transactions + end, latency_ns, key, skey
    events: pd.DataFrame  # events + ev_row, key, side ("client"/"server"/"")
    server: pd.DataFrame  # server rows + srv_row, skey
    counters: Counters
    ground_truth: pd.DataFrame
    server_ports: np.ndarray
    source: str = "transactions"  # "connections" (trace runs without a bench), "app_log"
    events_file_missing: bool = False
    kernel: Optional[pd.DataFrame] = None  # analysis.kernel.kernel_connections, trace/app-log runs
    histograms: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # log2, kernel
    app_stats: Dict[str, object] = dataclasses.field(default_factory=dict)  # app-log matching
    notes: List[str] = dataclasses.field(default_factory=list)  # how the transactions were made


def _codes(values: pd.Series, lookup: Dict[str, int]) -> np.ndarray:
    """Integer codes of address strings through one shared dictionary (factorize each column,
    then map its few uniques), normalising IPv4-mapped IPv6 (`::ffff:1.2.3.4`)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes, uniques = values.cat.codes.to_numpy(), values.cat.categories
    else:
        codes, uniques = pd.factorize(values.astype(object).fillna(""), sort=False)
    mapped = np.empty(len(uniques) + 1, dtype=np.int64)
    for i, u in enumerate(uniques):
        u = str(u)
        if u.startswith("::ffff:") and "." in u:
            u = u[7:]
        mapped[i] = lookup.setdefault(u, len(lookup))
    mapped[-1] = lookup.setdefault("", len(lookup))  # code -1 (missing)
    return mapped[codes]


def conn_key(client_addr: np.ndarray, client_port, server_addr: np.ndarray, server_port,
             n_addr: int) -> np.ndarray:
    """One int64 per client-oriented 4-tuple (addresses as codes < n_addr)."""
    pair = client_addr.astype(np.int64) * max(n_addr, 1) + server_addr.astype(np.int64)
    if n_addr * n_addr >= 2 ** 31:
        pair = pd.factorize(pair)[0].astype(np.int64)
    ports = (np.asarray(client_port, dtype=np.int64) & 0xFFFF) << 16 | (np.asarray(server_port, dtype=np.int64) & 0xFFFF)
    return pair << 32 | ports


def _int(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df:
        return np.zeros(len(df), dtype=np.int64)
    if pd.api.types.is_integer_dtype(df[col].dtype):
        return df[col].to_numpy().astype(np.int64, copy=False)
    return pd.to_numeric(df[col], errors="coerce").fillna(0).to_numpy(dtype=np.int64)


def _ints(df: pd.DataFrame, cols) -> None:
    """Make these columns int64 in place (nulls -> 0), touching only those that need it."""
    for col in cols:
        if col not in df or df[col].dtype != np.int64:
            df[col] = _int(df, col)


def transactions_from_connections(conns: pd.DataFrame) -> pd.DataFrame:
    """Trace runs have no bench records: every kernel connection (one per TCP connection, client
    side preferred) stands in for a transaction (open -> close); see analysis.kernel."""
    from analysis.kernel import kernel_connections, transactions_from_kernel

    k = kernel_connections(conns)
    return transactions_from_kernel(k).assign(server_pid=k["server_pid"].to_numpy())


def _span(*times: np.ndarray) -> Tuple[int, int]:
    """The run's time span from any non-zero times."""
    vals = [t[t > 0] for t in times if len(t)]
    vals = [v for v in vals if len(v)]
    if not vals:
        return (0, 0)
    return (int(min(v.min() for v in vals)), int(max(v.max() for v in vals)))


def load(run, need_events: bool = True, app_log=None, match_window_ms: float = 100.0) -> Frames:
    """The run's tables as `Frames`; raises SpikeTraceError if there is nothing to analyse.

    Transactions come from the application's log when `app_log` (analysis.applog.AppLog) is
    given (each entry matched to a kernel connection), else from transactions.parquet (bench
    records), else from the kernel's connections (trace runs)."""
    from analysis import applog as applog_mod
    from analysis.kernel import kernel_connections, read_histograms, transactions_from_kernel

    events = run.table("events", categories=True) if need_events else run.table("events", categories=True).iloc[0:0]
    events = events.reset_index(drop=True)
    events["ev_row"] = np.arange(len(events), dtype=np.int64)
    _ints(events, ("t_ns", "pid", "sport", "dport", "state", "new_state", "reason", "value", "value2"))

    source = "transactions"
    kernel = None
    app_stats: Dict[str, object] = {}
    notes: List[str] = []
    has_conns = run.has("connections")
    if app_log is not None or not run.has("transactions"):
        kernel = kernel_connections(run.table("connections") if has_conns else None)
    if app_log is not None:
        tracer = run.meta.params.tracer
        slow_ms = tracer.slow_conn_ms if tracer is not None else 50.0
        span = _span(kernel["t_open"].to_numpy(), kernel["t_close"].to_numpy(), events["t_ns"].to_numpy())
        if span == (0, 0):
            span = (int(run.meta.clock_monotonic_ns), int(run.meta.clock_monotonic_ns))
        txn, app_stats, notes = applog_mod.match(app_log, kernel, run.meta, span,
                                                 int(match_window_ms * 1e6), int(float(slow_ms) * 1e6))
        notes = list(app_log.warnings) + notes
        source = "app_log"
        run.warnings[:] = [w for w in run.warnings if not w.startswith("missing transactions")]
    else:
        txn = run.table("transactions", categories=True)
        if txn.empty and has_conns:
            if kernel is None:  # a transactions table with only empty parts
                kernel = kernel_connections(run.table("connections"))
            txn = transactions_from_kernel(kernel).assign(server_pid=kernel["server_pid"].to_numpy())
            source = "connections"
            run.warnings[:] = [w for w in run.warnings if not w.startswith("missing transactions")]
    if txn.empty and run.meta.kind == "trace" and source != "app_log":
        # a healthy trace: the kernel counted every connection and sent none in detail; the
        # report still has the counts, histograms and counters (and says none was slow)
        if kernel is None:
            kernel = kernel_connections(None)
        txn = transactions_from_kernel(kernel).assign(server_pid=np.zeros(0, np.int64))
        source = "connections"
        run.warnings[:] = [w for w in run.warnings if not w.startswith("missing transactions")]
    elif txn.empty:
        if source == "app_log":
            raise SpikeTraceError("the application log has no entries; nothing to analyse")
        if kernel is not None and has_conns:
            raise SpikeTraceError(f"{run.path / 'connections.parquet'}: no connection was slow or anomalous "
                                  "enough to be recorded; nothing to analyse (see the histograms in "
                                  "histograms.parquet, or give the application's log with --transactions)")
        raise SpikeTraceError(f"{run.path / 'transactions.parquet'}: missing or empty; nothing to analyse")
    txn = txn.reset_index(drop=True)
    _ints(txn, PHASES + ("local_port", "remote_port", "pid", "connect_attempts", "last_errno"))
    phases = np.column_stack([txn[c].to_numpy() for c in PHASES])
    last = phases.max(axis=1)
    end = np.where(txn["t_end"].to_numpy() > 0, txn["t_end"].to_numpy(), last)
    txn["end"] = np.maximum(end, txn["t_start"].to_numpy())
    txn["latency_ns"] = txn["end"].to_numpy() - txn["t_start"].to_numpy()
    if not isinstance(txn["outcome"].dtype, pd.CategoricalDtype):  # from connections: plain strings
        txn["outcome"] = txn["outcome"].astype(str).astype("category")

    server = run.table("server", categories=True).reset_index(drop=True)
    server["srv_row"] = np.arange(len(server), dtype=np.int64)
    _ints(server, ("peer_port", "local_port", "pid", "t_accept", "t_request1", "t_reply1",
                   "t_request2", "t_reply2", "t_eof", "t_close", "conn_id"))

    lookup: Dict[str, int] = {}
    t_caddr = _codes(txn["local_addr"], lookup)
    t_saddr = _codes(txn["remote_addr"], lookup)
    e_saddr = _codes(events["saddr"], lookup)
    e_daddr = _codes(events["daddr"], lookup)
    s_paddr = _codes(server["peer_addr"], lookup)
    n_addr = len(lookup)

    server_ports = np.unique(txn["remote_port"].to_numpy())
    server_ports = server_ports[server_ports > 0]
    txn["key"] = conn_key(t_caddr, txn["local_port"], t_saddr, txn["remote_port"], n_addr)
    # a transaction that no kernel connection matched has no 4-tuple: no event joins it by tuple
    txn.loc[txn["local_port"].to_numpy() == 0, "key"] = -2
    # the server-row key ignores the server address (server.parquet does not record it)
    txn["skey"] = conn_key(t_caddr, txn["local_port"], np.zeros(len(txn)), txn["remote_port"], n_addr)

    sport, dport = events["sport"].to_numpy(), events["dport"].to_numpy()
    is_server = np.isin(sport, server_ports) & ~np.isin(dport, server_ports)
    is_client = np.isin(dport, server_ports) & ~is_server
    # no client port (a connect() error streak records only the destination): join by thread
    no_port = np.where(is_server, dport, sport) == 0
    is_server &= ~no_port
    is_client &= ~no_port
    events["key"] = np.where(
        is_server, conn_key(e_daddr, dport, e_saddr, sport, n_addr),
        np.where(is_client, conn_key(e_saddr, sport, e_daddr, dport, n_addr), -1))
    events["side"] = pd.Categorical.from_codes(np.where(is_server, 2, np.where(is_client, 1, 0)).astype(np.int8),
                                               ["", "client", "server"])

    server["skey"] = conn_key(s_paddr, server["peer_port"], np.zeros(len(server)),
                              server["local_port"], n_addr)

    counters = _counters(run.table("counters", categories=True) if run.has("counters") else None)
    truth = run.table("ground_truth") if run.has("ground_truth") else None
    hists = read_histograms(run.table("histograms")) if run.has("histograms") else {}
    return Frames(txn=txn, events=events, server=server, counters=counters,
                  ground_truth=truth if truth is not None else pd.DataFrame(), server_ports=server_ports,
                  source=source, events_file_missing=not run.has("events"), kernel=kernel,
                  histograms=hists, app_stats=app_stats, notes=notes)


def _counters(df: Optional[pd.DataFrame]) -> Counters:
    if df is None or df.empty:
        return Counters({})
    series = {}
    t_all, v_all = _int(df, "t_ns"), _int(df, "value")
    codes, names = pd.factorize(df["name"])
    order = np.lexsort((t_all, codes))
    codes = codes[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(codes)]):
        idx = order[lo:hi]
        series[str(names[codes[lo]])] = (t_all[idx], v_all[idx])
    return Counters(series)
