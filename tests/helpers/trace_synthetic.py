"""Synthetic `spiketrace trace` run directories (docs/run-directory.md): connections.parquet as
the kernel sends it (only slow or anomalous connections), events, counters and log2 histograms,
and application logs of closed-loop clients whose slow transactions are those connections.

    app = ClosedLoopApp(workers=2, n=300, spikes={(0, 40): 1.0, (1, 7): 1.0})  # worker, index -> s
    run = TraceRun(tmp_path / "run")
    app.record(run)              # slow entries -> kernel connections + SYN retransmit evidence
    path = run.write()
    app.write_log(tmp_path / "w0.log", worker=0, fmt="plain")
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from common import rundir

MS = 1_000_000
S = 1_000_000_000
US = 1_000
ADDR = "127.0.0.1"
# connections.parquet flags (tracer/bpf/spiketrace.h)
SLOW_CONNECT, SLOW_LIFETIME, RETRANS, RESET, TIME_WAIT, ACCEPTED, REFUSED, GAP = \
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x80, 0x100


class TraceRun:
    def __init__(self, path: Path, *, port: int = 9999, slow_ms: float = 50.0, backlog: int = 1,
                 mono0: int = 5_000 * S, wall0: int = 1_795_000_000 * S):
        self.path = Path(path)
        self.port = port
        self.conns: List[Dict[str, Any]] = []
        self.events: List[Dict[str, Any]] = []
        self.counters: List[Dict[str, Any]] = []
        self.hist: Dict[str, np.ndarray] = {}
        self.meta = rundir.new_meta("trace", scenario="trace", command=["spiketrace", "trace", "--port", str(port)])
        self.meta.kernel = "6.18.0-1-amd64"
        self.meta.status = "complete"
        self.meta.clock_monotonic_ns = mono0
        self.meta.clock_wall_ns = wall0
        self.meta.sysctls = {"net.ipv4.tcp_syn_linear_timeouts": "4"}
        self.meta.params = {"tracer": {"ports": [port], "slow_conn_ms": slow_ms}, "threshold_ms": slow_ms}
        self.meta.probes = {"retransmit": "raw_tracepoint", "state_change": "raw_tracepoint",
                            "accept_wait": "tracepoint", "listen_overflow": "sampled"}
        self.counted = 0
        self.overflows = 0
        self.counter("TcpExt.ListenOverflows", mono0, 0)
        self.counter(f"listen.{port}.backlog", mono0, backlog)

    def conn(self, *, cport: int, t_open: int, est_ns: int, life_ns: int, role: str = "client",
             pid: int = 1000, syn_retrans: int = 0, flags: Optional[int] = None, resets: int = 1,
             netns: int = 4026532000) -> Dict[str, Any]:
        """One connection row as the kernel sends it; `role` server: the tuple as the server sees it."""
        if flags is None:
            flags = RESET | (SLOW_CONNECT if est_ns > 50 * MS else 0) | (SLOW_LIFETIME if life_ns > 50 * MS else 0) \
                | (RETRANS if syn_retrans else 0)
        local, remote = (cport, self.port) if role == "client" else (self.port, cport)
        row = {"netns": netns, "role": role, "pid": pid, "comm": "python", "saddr": ADDR, "sport": local,
               "daddr": ADDR, "dport": remote, "t_open": t_open, "t_established": t_open + est_ns if est_ns >= 0 else 0,
               "t_first_data": 0, "t_close": t_open + life_ns, "syn_retrans": syn_retrans, "retrans": 0,
               "resets": resets, "flags": flags}
        self.conns.append(row)
        return row

    def syn_drop(self, *, cport: int, t_open: int, total_ns: int, pid: int = 1000, retransmits: int = 1):
        """A client connection whose SYN was dropped by a full accept queue: ListenOverflows + 1,
        a SYN retransmit after 1 s (then 1 s apart), established after the last one."""
        self.overflows += 1
        self.counter("TcpExt.ListenOverflows", t_open + 20 * MS, self.overflows)
        for k in range(1, retransmits + 1):
            self.event("retransmit", t_open + k * S, cport=cport, state=2, pid=pid, value=k)
        est = retransmits * S + 40 * US
        row = self.conn(cport=cport, t_open=t_open, est_ns=est, life_ns=max(total_ns, est + 100 * US), pid=pid,
                        syn_retrans=retransmits)
        self.event("reset_received", row["t_close"] - 2 * US, cport=cport, state=4, pid=pid)
        return row

    def event(self, kind: str, t_ns: int, *, cport: int, side: str = "client", **fields) -> int:
        local, remote = (cport, self.port) if side == "client" else (self.port, cport)
        row = {"t_ns": int(t_ns), "kind": kind, "pid": 0, "comm": "python", "netns": 4026532000,
               "saddr": ADDR, "sport": local, "daddr": ADDR, "dport": remote, "state": 0, "new_state": 0,
               "reason": 0, "value": 0, "value2": 0}
        row.update(fields)
        self.events.append(row)
        return len(self.events) - 1

    def counter(self, name: str, t_ns: int, value: int) -> None:
        self.counters.append({"t_ns": int(t_ns), "name": name, "value": int(value)})

    def histogram(self, name: str, values_ns) -> None:
        v = np.asarray(values_ns, dtype=np.int64)
        b = np.where(v > 0, np.floor(np.log2(np.maximum(v, 1))) + 1, 0).astype(int)  # bpf_log2l
        h = self.hist.setdefault(name, np.zeros(64, dtype=np.int64))
        np.add.at(h, b, 1)

    def write(self, counted: Optional[int] = None) -> Path:
        rundir.create_run_dir(self.path, force=True)
        end = max([c["t_close"] for c in self.conns] + [self.meta.clock_monotonic_ns]) + S
        self.counter("TcpExt.ListenOverflows", end, self.overflows)
        hist_rows = [{"t_ns": end, "name": n, "log2_bucket": b, "count": int(c)}
                     for n, h in self.hist.items() for b, c in enumerate(h) if c]
        for name, rows in (("connections", self.conns), ("events", self.events), ("counters", self.counters),
                           ("histograms", hist_rows)):
            if rows:
                rundir.write_table(self.path, name, pd.DataFrame(rows, columns=rundir.SCHEMAS[name].names))
        total = counted if counted is not None else int(sum(h.sum() for n, h in self.hist.items()
                                                            if n == "lifetime_ns")) or len(self.conns)
        self.meta.counts = {"events": len(self.events), "lost_events": 0, "connections": len(self.conns),
                            "connections_counted": total, "connections_sent": len(self.conns)}
        rundir.write_meta(self.path, self.meta)
        return self.path


class ClosedLoopApp:
    """Closed-loop clients (one per worker), like the original question's: each transaction
    starts right after the previous one. `spikes`: (worker, index) -> seconds of extra SYN delay."""

    def __init__(self, *, workers: int = 2, n: int = 300, normal_ms: float = 0.4,
                 spikes: Optional[Dict[Tuple[int, int], float]] = None, seed: int = 3,
                 mono0: int = 5_000 * S + 200 * MS, gap_us: float = 60.0):
        rng = np.random.default_rng(seed)
        self.rows = []
        spikes = spikes or {}
        for w in range(workers):
            t = mono0 + w * 37 * US
            for i in range(n):
                d = int(normal_ms * MS * rng.uniform(0.7, 1.5))
                extra = int(spikes.get((w, i), 0.0) * S)
                port = 40000 + w * 5000 + i
                self.rows.append({"worker": w, "i": i, "start": t, "duration": d + extra, "port": port,
                                  "spike": extra > 0, "retransmits": int(round(spikes.get((w, i), 0.0)))})
                t += d + extra + int(gap_us * US)
        self.df = pd.DataFrame(self.rows)

    def record(self, run: TraceRun, pid0: int = 1000) -> None:
        """The kernel's view: the slow connections (SYN dropped) with their evidence, and log2
        histograms of every connection's lifetime (client and server side)."""
        for r in self.df[self.df["spike"]].sort_values("start").itertuples():
            run.syn_drop(cport=r.port, t_open=r.start + 30 * US, total_ns=r.duration - 20 * US,
                         pid=pid0 + r.worker, retransmits=max(r.retransmits, 1))
        life = self.df["duration"].to_numpy() - 20 * US
        run.histogram("lifetime_ns", np.r_[life, life - 30 * US])
        run.histogram("connect_ns", np.where(self.df["spike"], S, 40 * US))

    def write_log(self, path: Path, worker: int, fmt: str, mono_to_wall: int = 0) -> Path:
        """The worker's log: plain (seconds per line), verbose (`start duration_s local_port`,
        epoch seconds), csv (start,duration_ms), jsonl (ISO end + duration_ms), mono (monotonic)."""
        d = self.df[self.df["worker"] == worker]
        start_wall = (d["start"] + mono_to_wall) / 1e9
        dur_s = d["duration"] / 1e9
        lines: List[str] = []
        if fmt == "plain":
            lines = [repr(float(x)) for x in dur_s]
        elif fmt == "verbose":
            lines = ["start duration_s local_port"] + [f"{a!r} {b!r} {p}" for a, b, p in zip(start_wall, dur_s, d["port"])]
        elif fmt == "csv":
            lines = ["start,duration_ms"] + [f"{a:.6f},{b * 1000:.4f}" for a, b in zip(start_wall, dur_s)]
        elif fmt == "jsonl":
            import datetime as dt
            for a, b in zip(start_wall + dur_s, dur_s):
                end = dt.datetime.fromtimestamp(a, tz=dt.timezone.utc).isoformat(timespec="microseconds")
                lines.append(json.dumps({"end": end, "duration_ms": round(b * 1000, 4), "status": "ok"}))
        elif fmt == "mono":
            lines = ["timestamp\tduration_us"] + [f"{s}\t{b / 1000:.1f}" for s, b in zip(d["start"], d["duration"])]
        else:
            raise ValueError(fmt)
        Path(path).write_text("\n".join(lines) + "\n")
        return Path(path)
