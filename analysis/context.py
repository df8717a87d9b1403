"""What every cause detector needs: the spikes to explain, the joined evidence, baselines, and a
collector for candidate causes (cause intervals + sentences + evidence rows)."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from analysis import facts
from analysis.join import asof_interval
from analysis.load import Frames
from analysis.options import AnalysisOptions

CAUSES = ("syn_retransmit", "synack_retransmit", "data_retransmit", "port_exhaustion", "reset",
          "idle_connection", "runq_delay", "accept_queue_wait", "server_processing", "client_blocked",
          "delayed_ack")
# When two causes claim the same stretch of a transaction, the one earlier here gets it: the
# direct evidence (a retransmit timer, a failing connect) before the symptoms (a wait in the
# accept queue is *because* the server thread was not running), and timing-only inferences last.
PRIORITY = {c: i for i, c in enumerate(CAUSES)}
ALL_CAUSES = CAUSES + ("unexplained",)


class Candidates:
    """Candidate causes found by the detectors, column-wise."""

    def __init__(self) -> None:
        self.parts: List[pd.DataFrame] = []
        self.evidence: List[pd.DataFrame] = []

    def add(self, ti, cause: str, detail, a, b, sentence, short, inferred=False) -> None:
        ti = np.asarray(ti, dtype=np.int64)
        if len(ti) == 0:
            return
        n = len(ti)
        self.parts.append(pd.DataFrame({
            "ti": ti, "cause": cause,
            "detail": np.broadcast_to(np.asarray(detail, dtype=object), (n,)),
            "a": np.asarray(a, dtype=np.int64), "b": np.asarray(b, dtype=np.int64),
            "sentence": np.broadcast_to(np.asarray(sentence, dtype=object), (n,)),
            "short": np.broadcast_to(np.asarray(short, dtype=object), (n,)),
            "inferred": np.broadcast_to(np.asarray(inferred, dtype=bool), (n,)),
        }))

    def cite(self, ti, cause: str, ev_row) -> None:
        ti = np.asarray(ti, dtype=np.int64)
        if len(ti):
            self.evidence.append(pd.DataFrame({"ti": ti, "cause": cause,
                                               "ev_row": np.asarray(ev_row, dtype=np.int64)}))

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({"ti": np.zeros(0, np.int64), "cause": [], "detail": [], "a": np.zeros(0, np.int64),
                                 "b": np.zeros(0, np.int64), "sentence": [], "short": [],
                                 "inferred": np.zeros(0, bool)})
        return pd.concat(self.parts, ignore_index=True)

    def evidence_frame(self) -> pd.DataFrame:
        if not self.evidence:
            return pd.DataFrame({"ti": np.zeros(0, np.int64), "cause": [], "ev_row": np.zeros(0, np.int64)})
        return pd.concat(self.evidence, ignore_index=True)


@dataclasses.dataclass
class Context:
    frames: Frames
    meta: object
    options: AnalysisOptions
    spikes: np.ndarray  # indices of the transactions to explain (sorted)
    in_spikes: np.ndarray  # bool mask over transactions
    ev_ti: np.ndarray  # per event: the transaction of its 4-tuple and time, or -1
    txn_srv: np.ndarray  # per transaction: its server.parquet row, or -1
    median_latency_ns: float
    cands: Candidates = dataclasses.field(default_factory=Candidates)
    period_ns: int = 50_000_000  # counter sampling period
    spike_ev: Optional[pd.DataFrame] = None  # events joined by 4-tuple to a spike, with `ti`

    # --- columns as arrays (aligned with transactions) ---
    def col(self, name: str) -> np.ndarray:
        """A transactions column as a numpy array (converted once: categoricals are costly)."""
        cache = self.__dict__.setdefault("_cols", {})
        if name not in cache:
            cache[name] = self.frames.txn[name].to_numpy()
        return cache[name]

    def spike_events(self, kinds: Sequence[str], side: Optional[str] = None) -> pd.DataFrame:
        """Events joined (by 4-tuple and time) to a transaction being explained, with `ti`."""
        if self.spike_ev is None:
            ev = self.frames.events
            idx = np.flatnonzero(self.ev_ti >= 0)
            idx = idx[self.in_spikes[self.ev_ti[idx]]]
            self.spike_ev = ev.iloc[idx].assign(ti=self.ev_ti[idx])
        ev = self.spike_ev
        mask = ev["kind"].isin(list(kinds)).to_numpy().copy()
        if side is not None:
            mask &= (ev["side"] == side).to_numpy()
        return ev[mask]

    def phase_start(self, ti: np.ndarray, t: np.ndarray) -> tuple:
        """The client phase each time falls in: (index 0..3, its start). Phases: connect,
        exchange 1, exchange 2, close."""
        bounds = np.column_stack([self.col(c)[ti] for c in ("t_start", "t_connected", "t_reply1", "t_reply2")])
        bounds = np.where(bounds > 0, bounds, np.iinfo(np.int64).max)
        bounds[:, 0] = self.col("t_start")[ti]
        reached = bounds <= np.asarray(t)[:, None]
        phase = np.where(reached.any(axis=1), reached.shape[1] - 1 - np.argmax(reached[:, ::-1], axis=1), 0)
        start = bounds[np.arange(len(ti)), phase]
        return phase, np.minimum(start, np.asarray(t))

    def backlog(self, ports: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The listener backlog per transaction: counters `listen.<port>.backlog`, else
        meta.params `backlog`; -1 if unknown."""
        out = np.full(len(ports), -1, dtype=np.int64)
        server = self.meta.params.server
        if server is not None:
            out[:] = int(server.backlog)
        for port in np.unique(ports).tolist():
            values = self.frames.counters.at(f"listen.{port}.backlog", t[ports == port])
            if values is not None:
                out[ports == port] = values
        return out

    def queue_max(self, ports: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The deepest the accept queue of each transaction's listener got in [a, b]; -1 unknown."""
        out = np.full(len(ports), -1, dtype=np.int64)
        for port in np.unique(ports).tolist():
            sel = ports == port
            values = self.frames.counters.window_max(f"listen.{port}.queue", a[sel], b[sel])
            if values is not None:
                out[sel] = values
        return out

    def no_child_drops(self, ti: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The transactions of `ti` whose segments a listener dropped between a and b because it
        had no socket for their connection (facts.NO_CHILD_DROPS reasons, in state LISTEN)."""
        drops = self.spike_events(["drop"])
        if len(drops) == 0 or len(ti) == 0:
            return np.array([], dtype=np.int64)
        names = facts.drop_reason_names(self.meta)
        no_child = drops["reason"].map(
            lambda r: facts.drop_base_name(names.get(int(r), "")) in facts.NO_CHILD_DROPS)
        drops = drops[no_child.to_numpy(dtype=bool) & (drops["state"] == facts.LISTEN).to_numpy()
                      & drops["ti"].isin(ti).to_numpy()]
        if len(drops) == 0:
            return np.array([], dtype=np.int64)
        order = np.argsort(ti, kind="stable")
        k = order[np.searchsorted(ti, drops["ti"].to_numpy(), sorter=order)]
        t = drops["t_ns"].to_numpy()
        inside = (t > a[k]) & (t < b[k])
        return np.unique(drops["ti"].to_numpy(dtype=np.int64)[inside])

    def growth(self, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Counter growth in [a, b], the end widened by one sampling period (the sampler sees an
        increment up to one period late); -1 when the counter was not sampled."""
        g = self.frames.counters.growth(name, a, b + self.period_ns)
        return np.full(len(a), -1, dtype=np.int64) if g is None else g


def build_context(frames: Frames, meta, options: AnalysisOptions, spikes: np.ndarray,
                  median_latency_ns: float) -> Context:
    slack = int(options.match_slack_ms * 1e6)
    txn, ev, srv = frames.txn, frames.events, frames.server
    t_start, end = txn["t_start"].to_numpy(), txn["end"].to_numpy()
    ev_ti = asof_interval(ev["key"].to_numpy(), ev["t_ns"].to_numpy(), txn["key"].to_numpy(),
                          t_start - slack, end + slack)
    srv_ti = asof_interval(srv["skey"].to_numpy(), srv["t_accept"].to_numpy(), txn["skey"].to_numpy(),
                           t_start - slack, end + slack)
    txn_srv = np.full(len(txn), -1, dtype=np.int64)
    hit = np.flatnonzero(srv_ti >= 0)
    txn_srv[srv_ti[hit][::-1]] = hit[::-1]  # the first server row wins a duplicate
    in_spikes = np.zeros(len(txn), dtype=bool)
    in_spikes[spikes] = True
    hz = meta.params.counter_hz or 20.0  # format 1 runs sampled at 20 Hz
    period = int(1e9 / float(hz))
    return Context(frames=frames, meta=meta, options=options, spikes=spikes, in_spikes=in_spikes,
                   ev_ti=ev_ti, txn_srv=txn_srv, median_latency_ns=median_latency_ns, period_ns=period)


def group_first(df: pd.DataFrame, by: str = "ti") -> Dict[str, np.ndarray]:
    """Per group: first/last time, count (df sorted by t_ns)."""
    g = df.sort_values("t_ns", kind="stable").groupby(by, sort=True)
    out = {
        "ti": np.asarray(g.size().index, dtype=np.int64),
        "n": g.size().to_numpy(),
        "t_first": g["t_ns"].min().to_numpy(),
        "t_last": g["t_ns"].max().to_numpy(),
    }
    return out
