"""Live explanations: the trace daemon explains each slow connection as it happens, with the
same analysis as `spiketrace report` (analysis.analyse, one implementation).

The tracer and the counter sampler hand every row they record to a `LiveWindow` too (their
`on_rows` hooks). About once a second, when a recorded connection closed at least `grace`
ago (so the other side's row of a loopback connection has arrived too) or a tracked
connection has been stuck in its handshake or retransmitting for longer than `open_after`,
`LiveExplainer.tick` builds a `common.rundir.MemoryRun` of the window (the last `horizon`
seconds of connections, events and counters, plus the kernel's histograms for the median) and
runs `analyse()` on it. Each spike is reported once when its connection closed, and once
before that if it was reported still open. A spike is known by its connection's
client-oriented 4-tuple and open time, as in the post-mortem report of the same recording.

When nothing slow was recorded, no analysis runs: the cost of live explanations is zero on a
healthy system and grows with the number of slow connections, not the traffic.

Over 400 lines on purpose: the window and the explainer share what a spike is (its
connection's 4-tuple and open time) and when a row may leave the window.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from common.errors import SpikeTraceError
from common.schema import SCHEMAS
from common.vocab import describe_connection, describe_event, fmt_ns, state_name

MAX_WAIT_S = 20.0
TIME_COLUMN = {"events": "t_ns", "counters": "t_ns", "connections": "t_close"}
SpikeKey = Tuple[str, int, str, int, int]  # client addr, port, server addr, port, open time


class LiveWindow:
    """The recent rows of events, connections and counters, appended from the tracer's and the
    sampler's threads. Bounded by time (`horizon_s`) and rows (`max_rows` per table); a counter's
    last value before the window is kept so the window reads like a whole recording."""

    def __init__(self, horizon_s: float = 120.0, max_rows: int = 50_000,
                 on_connection: Optional[Callable[[int], Any]] = None):
        self.horizon_ns = int(horizon_s * 1e9)
        self.max_rows = max_rows
        self.on_connection = on_connection  # pid -> workload, looked up while the pid lives
        self._lock = threading.Lock()
        self._cols = {t: {c: [] for c in SCHEMAS[t].names} for t in TIME_COLUMN}
        self._counter_base: Dict[str, Tuple[int, int]] = {}  # name -> (t_ns, value)
        self.pending: List[Tuple[int, int]] = []  # (open, close) of connections not analysed yet
        self.trimmed = 0

    def add(self, table: str, cols: Dict[str, list]) -> None:
        n = len(cols[TIME_COLUMN[table]])
        with self._lock:
            dest = self._cols[table]
            for name, col in dest.items():
                # a column the tracer does not send (yet): its schema default, as the reader does
                col.extend(cols[name] if name in cols else [_default(table, name)] * n)
            if table == "connections":
                self.pending.extend((o or e or c, c) for o, e, c in
                                    zip(cols["t_open"], cols["t_established"], cols["t_close"]) if c)
        if table == "connections" and self.on_connection is not None:
            for pid in set(cols["pid"]):
                self.on_connection(pid)

    def add_counters(self, cols: Dict[str, list]) -> None:
        self.add("counters", cols)

    def rows(self, table: str) -> int:
        return len(self._cols[table][TIME_COLUMN[table]])

    def trim(self, now_ns: int) -> None:
        """Drop what is older than the horizon (and the oldest rows beyond max_rows)."""
        cut = now_ns - self.horizon_ns
        with self._lock:
            for table, cols in self._cols.items():
                t = np.asarray(cols[TIME_COLUMN[table]], dtype=np.int64)
                if table == "connections":
                    t = np.where(t > 0, t, np.asarray(cols["t_open"], dtype=np.int64))
                # rows arrive about in time order: drop the leading ones older than the cut (a
                # late row behind a newer one stays until the next trim) and beyond max_rows
                old = np.flatnonzero(t >= cut)
                drop = int(old[0]) if len(old) else len(t)
                drop = max(drop, len(t) - self.max_rows)
                if drop <= 0:
                    continue
                if table == "counters":
                    for name, tv, v in zip(cols["name"][:drop], cols["t_ns"][:drop], cols["value"][:drop]):
                        self._counter_base[name] = (tv, v)
                self.trimmed += drop
                for col in cols.values():
                    del col[:drop]

    def snapshot(self, since_ns: int = 0, until_ns: int = 1 << 62,
                 extra_connections: Optional[Dict[str, list]] = None) -> Dict[str, Dict[str, list]]:
        """Copies of the window's rows from `since_ns` to `until_ns` (connections that closed
        then, events and counter samples then), each counter's value at `since_ns` first: the
        evidence of every connection open in that span, read like a recording of it."""
        with self._lock:
            cols = {t: {c: list(v) for c, v in tc.items()} for t, tc in self._cols.items()}
            base = dict(self._counter_base)
        out = {}
        for table, tc in cols.items():
            t = np.asarray(tc[TIME_COLUMN[table]], dtype=np.int64)
            keep = (t >= since_ns) & (t <= until_ns)
            if table == "counters" and len(t):
                for name, tv, v in zip(np.asarray(tc["name"], dtype=object)[~keep].tolist(),
                                       t[~keep].tolist(), np.asarray(tc["value"])[~keep].tolist()):
                    base[name] = (tv, v)
            idx = np.flatnonzero(keep).tolist()
            out[table] = {c: [col[i] for i in idx] for c, col in tc.items()} if len(idx) < len(t) else tc
        if base:
            names = list(base)
            c = out["counters"]
            c["t_ns"] = [since_ns] * len(names) + c["t_ns"]
            c["name"] = names + c["name"]
            c["value"] = [base[n][1] for n in names] + c["value"]
        if extra_connections:
            n = len(extra_connections["t_open"])
            for name, col in out["connections"].items():
                col.extend(extra_connections[name] if name in extra_connections
                           else [_default("connections", name)] * n)
        return out


@dataclasses.dataclass
class _Row:
    caddr: str
    cport: int
    saddr: str
    sport: int
    t_open: int
    t_close: int
    pid: int
    comm: str
    server_pid: int
    netns: int


def _default(table: str, column: str):
    import pyarrow as pa

    return "" if pa.types.is_string(SCHEMAS[table].field(column).type) else 0


@dataclasses.dataclass
class Spike:
    """One live explanation: a connection and why it was slow (see `to_json` for the fields)."""

    key: SpikeKey
    open: bool
    t_start: int
    t_end: int
    latency_ns: int
    client_pid: int
    client_comm: str
    server_pid: int
    netns: int
    cause: str
    cause_detail: str
    causes: List[str]
    shares_ns: Dict[str, int]
    explained_ns: int
    inferred: bool
    sentence: str
    client_workload: Any = None  # spiketrace.containers.Workload
    server_workload: Any = None


class LiveExplainer:
    """Runs the analysis on the window when something slow is due (module docstring)."""

    def __init__(self, window: LiveWindow, options, open_after_s: float = 5.0, grace_s: float = 1.0):
        self.window = window
        self.options = options
        self.open_after_ns = int(open_after_s * 1e9)
        self.grace_ns = int(grace_s * 1e9)
        self.reported: Dict[SpikeKey, bool] = {}  # key -> reported as closed (True) or open
        self.lookback_ns = int(1e9)  # evidence up to 1 s before a connection's open (as report's slack)
        self.max_per_analysis = 500
        self.shed = 0  # slow connections not explained live (a storm; the report explains them)
        self.due_opens: set = set()
        self.max_share = 0.05  # of one CPU on average, on live analyses (~0.2-0.3 s each here,
        self.burst_s = 1.0     # mostly a fixed cost), and up to 1 s at once
        self._tokens = self.burst_s
        self._budget_t = time.monotonic_ns()
        self.analyses = 0
        self.analysis_s = 0.0
        self.errors = 0
        self.last_error: Optional[str] = None

    def _budget(self, now_ns: int) -> float:
        """CPU seconds live analyses may spend now: a bucket that fills at `max_share` of a CPU
        up to `burst_s`, so a spike now and then is explained at once and a storm of them costs
        at most `max_share` on average (the spikes are then explained together, a few seconds
        later)."""
        elapsed = max(now_ns - self._budget_t, 0) / 1e9
        self._budget_t = now_ns
        self._tokens = min(self.burst_s, self._tokens + elapsed * self.max_share)
        return self._tokens

    def due(self, now_ns: int, open_rows: Optional[Dict[str, list]] = None, final: bool = False) -> bool:
        ready = now_ns - self.grace_ns
        if not final and not self._budget(now_ns) > 0:
            return False  # the cost bound: see `_budget`
        return any(c <= ready for _o, c in self.window.pending) or bool(open_rows and open_rows["t_open"])

    def tick(self, meta, path, now_ns: int, histograms: Optional[Dict[str, list]] = None,
             open_rows: Optional[Dict[str, list]] = None, final: bool = False) -> List[Spike]:
        """New spikes since the last tick (none if nothing is due). `final` (at stop): every
        connection closed so far is due, whatever the budget."""
        from analysis import analyse
        from common.rundir import MemoryRun

        if not self.due(now_ns, open_rows, final):
            return []
        ready = now_ns - self.grace_ns
        due = sorted((c, o) for o, c in self.window.pending if c <= ready)
        self.window.pending = [(o, c) for o, c in self.window.pending if c > ready]
        if len(due) > self.max_per_analysis:  # a storm: explain the oldest, count the rest
            self.shed += len(due) - self.max_per_analysis
            due = due[:self.max_per_analysis]
        until = max((c for c, _o in due), default=now_ns) + self.grace_ns
        self.due_opens = {o for _c, o in due}
        opened = {}
        if open_rows and open_rows["t_open"]:
            open_rows = dict(open_rows, t_close=[now_ns] * len(open_rows["t_open"]))
            opened = {(p, t) for p, t in zip(open_rows["sport"], open_rows["t_open"])}
            self.due_opens.update(open_rows["t_open"])
            until = now_ns
        if not self.due_opens:
            return []
        # only what the due connections need: from a little before the oldest one's open to
        # just after the last one's close (a bounded analysis, whatever the window holds)
        since = max(min(self.due_opens) - self.lookback_ns, now_ns - self.window.horizon_ns)
        tables = self.window.snapshot(since, until, open_rows)
        if histograms:
            tables["histograms"] = histograms
        run = MemoryRun(path, dataclasses.replace(meta, notes=[], counts=dict(meta.counts)), tables)
        started = time.thread_time()  # CPU time: what the budget is about
        try:
            result = analyse(run, self.options)
        except SpikeTraceError:
            return []  # nothing to analyse in the window
        except Exception as exc:  # a live explanation must never stop the recording
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return []
        finally:
            took = time.thread_time() - started
            self.analyses += 1
            self.analysis_s += took
            # the budget may go negative, down to MAX_WAIT_S of refilling: spikes are never
            # explained later than that, well within the window's horizon
            self._tokens = max(self._tokens - took, -MAX_WAIT_S * self.max_share)
        return self._new_spikes(result, opened, ready)

    def _new_spikes(self, result, opened, ready: int) -> List[Spike]:
        from analysis.context import CAUSES

        k = result.context.frames.kernel
        kc = {c: k[c].tolist() for c in ("caddr", "cport", "saddr", "sport", "t_open", "t_close", "pid",
                                         "comm", "server_pid", "netns")}
        out = []
        for r in result.explanations.itertuples(index=False):
            i = int(r.txn_id)  # transactions from kernel connections: txn_id is the row
            row = _Row(**{c: v[i] for c, v in kc.items()})
            if row.t_open not in self.due_opens:
                continue  # reported before, shed, or not due yet
            key = (str(row.caddr), int(row.cport), str(row.saddr), int(row.sport), int(row.t_open))
            is_open = (row.cport, row.t_open) in opened or (row.sport, row.t_open) in opened
            if is_open:
                if key in self.reported:
                    continue
            else:
                if self.reported.get(key) or int(row.t_close) > ready:
                    continue
            self.reported[key] = not is_open
            shares = {c: int(getattr(r, f"{c}_ns")) for c in CAUSES if int(getattr(r, f"{c}_ns"))}
            out.append(Spike(
                key=key, open=is_open, t_start=int(r.t_start), t_end=int(r.t_start + r.latency_ns),
                latency_ns=int(r.latency_ns), client_pid=int(row.pid), client_comm=str(row.comm),
                server_pid=int(row.server_pid), netns=int(row.netns), cause=str(r.cause),
                cause_detail=str(r.cause_detail), causes=[c for c in str(r.causes).split(",") if c],
                shares_ns=shares, explained_ns=int(r.explained_ns), inferred=bool(r.inferred),
                sentence=str(r.sentence)))
        self._forget_old(ready)
        return sorted(out, key=lambda s: s.t_start)

    def _forget_old(self, ready: int) -> None:
        cut = ready - self.window.horizon_ns
        if len(self.reported) > 10_000:
            self.reported = {k: v for k, v in self.reported.items() if k[4] >= cut}


# ---- rendering: one line or one JSON object per event and per spike ----------------------------
# Too frequent to print one line each; they are recorded with --all-events.
QUIET_KINDS = {"state_change", "time_wait"}
TASK_KINDS = {"runq_delay"}  # no socket: the tuple columns say nothing


def _addr(ev: Dict[str, Any], side: str) -> str:
    addr, port = ev.get(f"{side}addr") or "?", ev.get(f"{side}port") or 0
    if addr in ("?", "0.0.0.0", "::") and not port:
        return "-"
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def event_line(ev: Dict[str, Any], wall: dt.datetime, drops=None, resets=None) -> str:
    """One live line: local time, kind, pid/comm, the 4-tuple, the event in words."""
    conn = "t_open" in ev
    kind = "slow_connection" if conn else ev.get("kind") or "?"
    detail = describe_connection(ev) if conn else describe_event(ev, drops, resets)
    who = f"{ev.get('pid') or 0}/{ev.get('comm') or '-'}"
    if kind in TASK_KINDS:
        local, remote = f"cpu {ev.get('value2', 0)}", "-"
    else:
        local, remote = _addr(ev, "s"), _addr(ev, "d")
    return (f"{wall.astimezone().strftime('%H:%M:%S.%f')[:-3]} {kind:<17} {who:<20} "
            f"{local:>21} > {remote:<21} {detail}")


class EventFeed:
    """Hands events from the tracer's consumer thread to the main loop: bounded, never blocks
    the consumer (a full queue drops *display* lines only; every event is still recorded)."""

    def __init__(self, show_quiet: bool):
        self.queue: "queue.Queue[Dict[str, Any]]" = queue.Queue(maxsize=10_000)
        self.show_quiet = show_quiet
        self.seen = 0
        self.not_shown = 0

    def columns(self, cols: Dict[str, list], quiet: bool = False, room: int = 200) -> None:
        """A batch of recorded events (columns): only the few that can be shown become dicts
        (the display shows at most 50 a second; the rest are counted), none when `quiet`."""
        kinds = cols["kind"]
        self.seen += len(kinds)
        if quiet:
            return
        names = list(cols)
        for i, kind in enumerate(kinds):
            if not self.show_quiet and kind in QUIET_KINDS:
                continue
            if self.queue.qsize() >= room:
                self.not_shown += sum(1 for k in kinds[i:] if self.show_quiet or k not in QUIET_KINDS)
                return
            self.queue.put_nowait({c: cols[c][i] for c in names})

    def __call__(self, ev: Dict[str, Any]) -> None:
        self.seen += 1
        if not self.show_quiet and ev.get("kind") in QUIET_KINDS:
            return
        try:
            self.queue.put_nowait(ev)
        except queue.Full:
            self.not_shown += 1


def _wall(meta, t_ns: int) -> dt.datetime:
    return meta.wall_time(t_ns)


def _endpoint(addr: str, port: int) -> str:
    addr = addr or "?"
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def spike_line(spike: Spike, meta) -> str:
    """`14:26:00.205 spike  12946/python  127.0.0.1:56372 > 127.0.0.1:9999  1.02 s syn_retransmit: ...`"""
    caddr, cport, saddr, sport, _ = spike.key
    who = f"{spike.client_pid or spike.server_pid}/{spike.client_comm or '-'}"
    state = "still open after" if spike.open else "took"
    where = [w.label() for w in (spike.client_workload, spike.server_workload) if w is not None and w.label()]
    tail = f" [{'; '.join(dict.fromkeys(where))}]" if where else ""
    wall = _wall(meta, spike.t_start).astimezone().strftime("%H:%M:%S.%f")[:-3]
    return (f"{wall} {'spike':<17} {who:<20} {_endpoint(caddr, cport):>21} > "
            f"{_endpoint(saddr, sport):<21} {state} {fmt_ns(spike.latency_ns)}, {spike.cause}"
            f"{':' + spike.cause_detail if spike.cause_detail else ''}: {spike.sentence}{tail}")


def spike_json(spike: Spike, meta) -> Dict[str, Any]:
    """The `spike` object of `trace --json` (fields documented in docs/trace.md)."""
    caddr, cport, saddr, sport, _ = spike.key
    return {
        "type": "spike", "time": _wall(meta, spike.t_start).isoformat(timespec="microseconds"),
        "t_start_ns": spike.t_start, "t_end_ns": spike.t_end, "open": spike.open,
        "latency_ms": round(spike.latency_ns / 1e6, 3),
        "client": {"addr": caddr, "port": cport, "pid": spike.client_pid, "comm": spike.client_comm,
                   "workload": spike.client_workload.to_dict() if spike.client_workload else None},
        "server": {"addr": saddr, "port": sport, "pid": spike.server_pid,
                   "workload": spike.server_workload.to_dict() if spike.server_workload else None},
        "netns": spike.netns, "cause": spike.cause, "cause_detail": spike.cause_detail,
        "causes": spike.causes, "shares_ms": {c: round(v / 1e6, 3) for c, v in spike.shares_ns.items()},
        "explained_ms": round(spike.explained_ns / 1e6, 3), "inferred": spike.inferred,
        "sentence": spike.sentence,
    }


def event_json(ev: Dict[str, Any], meta, detail: str) -> Dict[str, Any]:
    """The `event` object of `trace --json`: the events.parquet row, its time and its words."""
    t = int(ev.get("t_ns") or 0)
    out = {"type": "event", "time": _wall(meta, t).isoformat(timespec="microseconds")}
    for name in SCHEMAS["events"].names:
        out[name] = ev.get(name)
    out["state_name"] = state_name(int(ev["state"])) if ev.get("state") else ""
    out["detail"] = detail
    return out


def dumps(obj: Dict[str, Any]) -> str:
    """One JSON line (no spaces to wrap on, never NaN)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str)
