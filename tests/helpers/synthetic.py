"""Build small synthetic run directories from the documented schemas (docs/run-directory.md),
through common.rundir, for analysis and report tests; and large ones for the benchmark.

    run = SyntheticRun(tmp_path / "run")
    run.normal(50)                                   # 50 ordinary 0.3 ms transactions
    t = run.txn(connect_ms=1000.2)                   # a slow one
    run.event("retransmit", t["t_start"] + S, t, state=2)
    path = run.write()
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from common import rundir

MS = 1_000_000
S = 1_000_000_000
CLIENT_ADDR, SERVER_ADDR = "127.0.0.1", "127.0.0.1"


class SyntheticRun:
    def __init__(self, path: Path, *, server_port: int = 9999, backlog: Optional[int] = 1,
                 kernel: str = "6.18.0-1-amd64", scenario: str = "seed", status: str = "complete",
                 sysctls: Optional[Dict[str, str]] = None, params: Optional[Dict[str, Any]] = None,
                 probes: Optional[Dict[str, str]] = None, lost_events: int = 0, counts: bool = True,
                 start_ns: int = 1_000 * S, server_pid: int = 2000, client_pid: int = 1000):
        self.path = Path(path)
        self.server_port = server_port
        self.server_pid = server_pid
        self.client_pid = client_pid
        self.cursor = start_ns
        self.next_port = 40000
        self.txns: List[Dict[str, Any]] = []
        self.server: List[Dict[str, Any]] = []
        self.events: List[Dict[str, Any]] = []
        self.counters: List[Dict[str, Any]] = []
        self.truth: List[Dict[str, Any]] = []
        self.meta = rundir.new_meta("run", scenario=scenario, command=["spiketrace", "run", "-n", "100"])
        self.meta.kernel = kernel
        self.meta.status = status
        self.meta.sysctls = dict(sysctls if sysctls is not None else {
            "net.ipv4.tcp_syn_linear_timeouts": "4", "net.ipv4.ip_local_port_range": "32768\t60999"})
        server = {"port": server_port, "backlog": backlog} if backlog is not None else {"port": server_port}
        self.meta.params = params if params is not None else {
            "server": server, "client": {"split_writes": False, "nodelay": False}}
        if scenario == "legacy-rto" and params is None:  # what the legacy-rto injection records
            self.meta.params["scenario"] = {"name": scenario, "initial_rto_ms": 3000.0}
        self.meta.probes = probes if probes is not None else {
            "retransmit": "tracepoint", "synack_retransmit": "tracepoint", "state": "tracepoint",
            "drop": "tracepoint", "reset": "tracepoint", "connect_error": "tracepoint",
            "runq_delay": "tracepoint", "accept_wait": "inferred"}
        self._counts = counts
        self._lost = lost_events

    # --- transactions -------------------------------------------------------------------
    def txn(self, *, connect_ms: float = 0.1, ex1_ms: float = 0.1, ex2_ms: float = 0.1,
            close_ms: float = 0.02, port: Optional[int] = None, pid: Optional[int] = None,
            worker: int = 0, attempts: int = 1, errno: int = 0, outcome: str = "ok",
            server: bool = True, accept_ms: float = 0.01, gap_ms: float = 1.0,
            start: Optional[int] = None, connected: bool = True) -> Dict[str, Any]:
        """One client transaction starting at the cursor (or `start`); returns its row."""
        t0 = self.cursor if start is None else start
        if port is None:
            port = self.next_port
            self.next_port = 40000 + (self.next_port - 40000 + 1) % 20000
        t_conn = t0 + int(connect_ms * MS)
        t_r1 = t_conn + int(ex1_ms * MS)
        t_r2 = t_r1 + int(ex2_ms * MS)
        t_end = t_r2 + int(close_ms * MS)
        if not connected:
            t_conn = t_r1 = t_r2 = 0
        row = {"id": len(self.txns), "worker": worker, "pid": pid or self.client_pid,
               "local_addr": CLIENT_ADDR, "local_port": port if connected or attempts else 0,
               "remote_addr": SERVER_ADDR, "remote_port": self.server_port, "t_start": t0,
               "t_connected": t_conn, "t_reply1": t_r1, "t_reply2": t_r2, "t_end": t_end,
               "connect_attempts": attempts, "last_errno": errno, "outcome": outcome}
        self.txns.append(row)
        if server and connected:
            t_acc = t_conn + int(accept_ms * MS)
            self.server.append({
                "conn_id": len(self.server), "worker": 0, "pid": self.server_pid,
                "peer_addr": CLIENT_ADDR, "peer_port": port, "local_port": self.server_port,
                "t_accept": t_acc, "t_request1": max(t_acc, t_r1 - 20_000), "t_reply1": max(t_acc, t_r1 - 10_000),
                "t_request2": max(t_acc, t_r2 - 20_000), "t_reply2": max(t_acc, t_r2 - 10_000),
                "t_eof": t_end + 10_000, "t_close": t_end + 20_000, "bytes_in": 6000, "outcome": "ok"})
        if start is None:
            self.cursor = t_end + int(gap_ms * MS)
        return row

    def normal(self, n: int, latency_ms: float = 0.3, jitter: float = 0.2, seed: int = 1) -> None:
        """n ordinary transactions of about latency_ms (phases split 1:1:1)."""
        rng = np.random.default_rng(seed)
        for f in rng.uniform(1 - jitter, 1 + jitter, n):
            part = latency_ms * f / 3
            self.txn(connect_ms=part, ex1_ms=part, ex2_ms=part, close_ms=0.0)

    def server_row(self, txn: Dict[str, Any]) -> Dict[str, Any]:
        for row in self.server:
            if row["peer_port"] == txn["local_port"] and row["t_accept"] >= txn["t_start"]:
                return row
        raise KeyError(txn["id"])

    # --- events, counters, ground truth ------------------------------------------------------
    def event(self, kind: str, t_ns: int, txn: Optional[Dict[str, Any]] = None, side: str = "client",
              **fields) -> int:
        """An event on txn's connection as `side` sees it (server side: the tuple reversed).
        Returns its row number in events.parquet."""
        row = {"t_ns": int(t_ns), "kind": kind, "pid": 0, "comm": "", "netns": 4026531840,
               "saddr": "", "sport": 0, "daddr": "", "dport": 0, "state": 0, "new_state": 0,
               "reason": 0, "value": 0, "value2": 0}
        if txn is not None:
            if side == "server":
                row.update(saddr=txn["remote_addr"], sport=txn["remote_port"], daddr=txn["local_addr"],
                           dport=txn["local_port"])
            else:
                row.update(saddr=txn["local_addr"], sport=txn["local_port"], daddr=txn["remote_addr"],
                           dport=txn["remote_port"])
        row.update(fields)
        self.events.append(row)
        return len(self.events) - 1

    def counter(self, name: str, t_ns: int, value: int) -> None:
        self.counters.append({"t_ns": int(t_ns), "name": name, "value": int(value)})

    def ground_truth(self, kind: str, t_ns: int, sport: int = 0, detail: str = "") -> None:
        self.truth.append({"t_ns": int(t_ns), "kind": kind, "saddr": CLIENT_ADDR, "sport": sport,
                           "daddr": SERVER_ADDR, "dport": self.server_port if sport else 0,
                           "detail": detail})

    # --- output -------------------------------------------------------------------------
    def write(self) -> Path:
        rundir.create_run_dir(self.path, force=True)
        tables = {"transactions": self.txns, "server": self.server, "events": self.events,
                  "counters": self.counters, "ground_truth": self.truth}
        for name, rows in tables.items():
            if rows:
                rundir.write_table(self.path, name, pd.DataFrame(rows, columns=rundir.SCHEMAS[name].names))
        if self._counts:
            self.meta.counts = {"transactions": len(self.txns), "server_connections": len(self.server),
                                "events": len(self.events), "lost_events": self._lost}
        rundir.write_meta(self.path, self.meta)
        return self.path


def bulk(path: Path, n_txn: int = 1_000_000, n_events: int = 1_000_000, spike_every: int = 100,
         seed: int = 7) -> Path:
    """A large run (vectorised): n_txn serial transactions of ~0.3 ms on 4 workers, one in
    `spike_every` slowed by a SYN retransmit, a data retransmit, a run-queue delay or an accept
    queue wait (with their events), and the rest of n_events spread as unrelated noise
    (state changes and retransmits of other connections, run-queue delays of other threads)."""
    rng = np.random.default_rng(seed)
    n = n_txn
    workers = 4
    wid = np.arange(n) % workers
    lat = rng.normal(300_000, 30_000, n).clip(150_000).astype(np.int64)
    spike = np.zeros(n, dtype=np.int64)
    kind = np.full(n, -1)
    sel = np.arange(0, n, spike_every)
    kind[sel] = rng.integers(0, 4, len(sel))
    spike[kind == 0] = 1 * S  # SYN retransmit
    spike[kind == 1] = 210 * MS  # data RTO
    spike[kind == 2] = rng.integers(100, 400, int((kind == 2).sum())) * MS  # runq
    spike[kind == 3] = rng.integers(100, 300, int((kind == 3).sum())) * MS  # accept wait
    # per worker, transactions run back to back
    total = lat + spike + 50_000
    start = np.empty(n, dtype=np.int64)
    for w in range(workers):
        m = wid == w
        start[m] = 1_000 * S + np.cumsum(total[m]) - total[m]
    port = (32768 + np.arange(n) % 28232).astype(np.int32)
    third = lat // 3
    t_conn = start + third + np.where(kind == 0, spike, 0)
    t_r1 = t_conn + third + np.where((kind == 1) | (kind == 2), spike, 0)
    t_r1 = t_r1 + np.where(kind == 3, spike, 0)
    t_r2 = t_r1 + third
    t_end = t_r2 + 20_000
    pids = (1000 + wid).astype(np.int32)
    txn = pd.DataFrame({
        "id": np.arange(n, dtype=np.int64), "worker": wid.astype(np.int32), "pid": pids,
        "local_addr": pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), ["127.0.0.1"]).astype(str),
        "local_port": port, "remote_addr": "127.0.0.1", "remote_port": np.int32(9999),
        "t_start": start, "t_connected": t_conn, "t_reply1": t_r1, "t_reply2": t_r2, "t_end": t_end,
        "connect_attempts": np.ones(n, dtype=np.int32), "last_errno": np.zeros(n, dtype=np.int32),
        "outcome": "ok"})
    t_acc = t_conn + 10_000 + np.where(kind == 3, spike, 0)
    server = pd.DataFrame({
        "conn_id": np.arange(n, dtype=np.int64), "worker": np.zeros(n, dtype=np.int32),
        "pid": np.full(n, 2000, dtype=np.int32), "peer_addr": "127.0.0.1", "peer_port": port,
        "local_port": np.int32(9999), "t_accept": t_acc, "t_request1": t_acc + 5_000,
        "t_reply1": t_r1 - 5_000, "t_request2": t_r1 + 5_000, "t_reply2": t_r2 - 5_000,
        "t_eof": t_end + 5_000, "t_close": t_end + 10_000, "bytes_in": np.full(n, 6000, dtype=np.int64),
        "outcome": "ok"})
    # evidence for the spikes
    ev_parts = []
    s0 = np.flatnonzero(kind == 0)
    ev_parts.append(_events("retransmit", start[s0] + S, port[s0], 2, 0, 0, 0))
    s1 = np.flatnonzero(kind == 1)
    ev_parts.append(_events("retransmit", t_conn[s1] + 205 * MS, port[s1], 1, 0, 0, 0))
    s2 = np.flatnonzero(kind == 2)
    ev_parts.append(_events("runq_delay", t_conn[s2] + spike[s2], np.zeros(len(s2), np.int32), 0,
                            pids[s2], spike[s2], 0, tuple_=False))
    s3 = np.flatnonzero(kind == 3)
    ev_parts.append(_events("accept_wait", t_acc[s3], port[s3], 1, 2000, spike[s3], 0, server=True))
    used = sum(len(p) for p in ev_parts)
    rest = max(n_events - used, 0)
    t_noise = rng.integers(int(start[0]), int(t_end.max()), rest)
    noise_kind = np.where(rng.random(rest) < 0.5, "state_change", "runq_delay")
    noise = _events("state_change", t_noise, rng.integers(1024, 32000, rest).astype(np.int32), 1,
                    rng.integers(3000, 9000, rest).astype(np.int32), rng.integers(0, 3 * MS, rest), 0)
    noise["kind"] = noise_kind
    ev_parts.append(noise)
    events = pd.concat(ev_parts, ignore_index=True).sort_values("t_ns", kind="stable")
    counters = pd.DataFrame({"t_ns": np.arange(start[0], t_end.max(), 50 * MS, dtype=np.int64)})
    counters = pd.concat([
        counters.assign(name="TcpExt.ListenOverflows", value=np.arange(len(counters)) // 1000),
        counters.assign(name="sockstat.tw", value=np.full(len(counters), 5000))], ignore_index=True)
    meta = rundir.new_meta("run", scenario="bench", command=["benchmarks/analysis_speed.py"])
    meta.status = "complete"
    meta.kernel = "6.18.0"
    meta.sysctls = {"net.ipv4.tcp_syn_linear_timeouts": "4"}
    meta.params = {"server": {"backlog": 1}, "client": {"split_writes": False}}
    meta.counts = {"transactions": n, "events": len(events), "lost_events": 0}
    rundir.create_run_dir(path, force=True)
    for name, df in (("transactions", txn), ("server", server), ("events", events), ("counters", counters)):
        rundir.write_table(path, name, df)
    rundir.write_meta(path, meta)
    return path


def _events(kind, t, port, state, pid, value, reason, tuple_=True, server=False) -> pd.DataFrame:
    n = len(t)
    port = np.asarray(port, dtype=np.int32)
    if not tuple_:
        sport = dport = np.zeros(n, dtype=np.int32)
        addr = ""
    elif server:
        sport, dport, addr = np.full(n, 9999, dtype=np.int32), port, "127.0.0.1"
    else:
        sport, dport, addr = port, np.full(n, 9999, dtype=np.int32), "127.0.0.1"
    return pd.DataFrame({
        "t_ns": np.asarray(t, dtype=np.int64), "kind": kind,
        "pid": np.broadcast_to(np.asarray(pid, dtype=np.int32), (n,)), "comm": "python3",
        "netns": np.uint32(4026531840), "saddr": addr, "sport": sport, "daddr": addr, "dport": dport,
        "state": np.int32(state), "new_state": np.int32(0), "reason": np.int32(reason),
        "value": np.broadcast_to(np.asarray(value, dtype=np.int64), (n,)), "value2": np.int64(0)})
