"""Packet faults with a tc BPF classifier on a namespace's `lo` (tracer/bpf/syn_drop.c), and
the scenarios built on it: listen-overflow (observe only), syn-loss, data-loss."""
from __future__ import annotations

import dataclasses
import socket
import struct
from pathlib import Path
from typing import Any, Dict, List, Optional

from common import leftovers
from common.errors import SpikeTraceError
from spiketrace.scenarios.base import Injection, gt_row

BPF_DIR = Path(__file__).resolve().parents[2] / "tracer" / "bpf"
CLSACT_INGRESS = "ffff:fff2"
MODES = {"observe": 0, "drop-syn": 1, "drop-data": 2}
KINDS = {1: "syn", 2: "synack", 3: "data"}
STATS = ("packets", "syns", "connections", "drops", "records_full")


def bpf_source(name: str) -> Path:
    """Path of a BPF source shipped in tracer/bpf (installed as package data)."""
    try:
        import tracer

        path = Path(tracer.__file__).resolve().parent / "bpf" / name
        if path.exists():
            return path
    except ImportError:
        pass
    return BPF_DIR / name


@dataclasses.dataclass
class FaultRecord:
    """One packet the classifier dropped (drop modes) or saw more than once (observe)."""

    kind: str       # syn | synack | data
    saddr: str      # as on the wire: a SYN-ACK's saddr is the server
    sport: int
    daddr: str
    dport: int
    seq: int        # ISN (handshake) or sequence number (data)
    t_first: int    # first copy: seen (observe) or dropped (drop modes), monotonic ns
    t_last: int     # last copy seen
    copies: int     # copies seen in all; copies - 1 = retransmissions that got through

    def client_side(self):
        """(client addr, client port, server addr, server port) of the connection."""
        if self.kind == "synack":
            return self.daddr, self.dport, self.saddr, self.sport
        return self.saddr, self.sport, self.daddr, self.dport


def _ip(v: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", v))


class TcFault:
    """Load syn_drop.c and attach it as a direct-action classifier at clsact ingress of `lo`
    in netns `netns_name`. `detach()` removes the clsact qdisc (with the filter) and keeps
    the records read last, so records() still answers after it."""

    def __init__(self, netns_name: str, mode: str, port: int = 0, drop_every: int = 0,
                 drop_fraction: float = 0.0, seed: int = 0, records_max: int = 65536,
                 ifname: str = "lo"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}")
        self.netns_name, self.mode, self.port, self.ifname = netns_name, mode, port, ifname
        self.drop_every, self.drop_fraction, self.seed = drop_every, drop_fraction, seed
        self.records_max = records_max
        self.bpf = None
        self._tc_item = {"netns": netns_name, "ifname": ifname}
        self._records: List[FaultRecord] = []
        self._stats: Dict[str, int] = {}

    def cflags(self) -> List[str]:
        from tracer.compile import bpf_atomics

        return [f"-DMODE={MODES[self.mode]}", f"-DPORT={int(self.port)}",
                f"-DDROP_EVERY={int(self.drop_every)}",
                f"-DDROP_PERMYRIAD={int(round(self.drop_fraction * 10000))}",
                f"-DSEED={int(self.seed) & 0xffffffff}U", f"-DRECORDS_MAX={int(self.records_max)}",
                *([] if bpf_atomics() else ["-DST_NO_ATOMICS=1"])]

    def attach(self) -> "TcFault":
        from bcc import BPF
        from pyroute2 import IPRoute

        src = bpf_source("syn_drop.c")
        try:
            self.bpf = BPF(src_file=str(src).encode(), cflags=self.cflags())
            fn = self.bpf.load_func(b"classify", BPF.SCHED_CLS)
        except Exception as exc:
            raise SpikeTraceError(f"tc classifier {src.name} ({self.mode}) failed to load: {exc}")
        leftovers.track("tc", self._tc_item)
        try:
            with IPRoute(netns=self.netns_name) as ipr:
                idx = ipr.link_lookup(ifname=self.ifname)[0]
                ipr.tc("add", "clsact", idx)
                ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name=fn.name,
                       parent=CLSACT_INGRESS, classid=1, direct_action=True)
        except Exception as exc:
            self.detach()
            raise SpikeTraceError(
                f"cannot attach tc classifier to {self.ifname} in {self.netns_name}: {exc}")
        return self

    def _read(self) -> None:
        if self.bpf is None:
            return
        self._stats = {name: int(self.bpf[b"stats"][i].value) for i, name in enumerate(STATS)}
        self._records = sorted((
            FaultRecord(KINDS.get(v.kind, str(v.kind)), _ip(k.saddr), k.sport, _ip(k.daddr),
                        k.dport, k.seq, v.t_first, v.t_last, v.copies)
            for k, v in self.bpf[b"records"].items()), key=lambda r: r.t_first)

    def records(self) -> List[FaultRecord]:
        self._read()
        return list(self._records)

    def stats(self) -> Dict[str, int]:
        self._read()
        return dict(self._stats)

    def detach(self) -> None:
        """Remove the filter (idempotent). Records and stats stay readable."""
        if self.bpf is not None:
            self._read()
        try:
            leftovers.remove_tc(self.netns_name, self.ifname)
        finally:
            leftovers.untrack("tc", self._tc_item)
            if self.bpf is not None:
                self.bpf.cleanup()
                self.bpf = None

    def __enter__(self) -> "TcFault":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()


class TcInjection(Injection):
    """Base of the scenarios that use TcFault. Subclasses set MODE and `gt_rows()`."""

    MODE = "observe"

    def install(self) -> None:
        p = self.params
        self.fault = TcFault(self.ns.name, self.MODE, self.port,
                             drop_every=int(p.get("drop_every", 0)),
                             drop_fraction=float(p.get("drop_fraction", 0.0)),
                             seed=int(p.get("seed", 0)))
        self.fault.attach()

    def collect(self) -> List[Dict[str, Any]]:
        recs = self.fault.records()
        stats = self.fault.stats()
        self.params["tc_stats"] = stats
        if stats.get("records_full"):
            self.notes.append(f"{self.scenario.name}: the record map filled up; "
                              f"{stats['records_full']} later packets were neither dropped nor recorded")
        return self.gt_rows(recs)

    def gt_rows(self, recs: List[FaultRecord]) -> List[Dict[str, Any]]:
        return []

    def uninstall(self) -> None:
        fault = getattr(self, "fault", None)
        if fault is not None:
            fault.detach()


class ListenOverflowObserver(TcInjection):
    """Observe only: a SYN (or SYN-ACK) seen twice with the same ISN was retransmitted;
    with backlog 1 and more clients than the accept queue holds, because the full queue
    dropped it. A connection's first data segment seen twice was dropped by the listener: the
    handshake's final ACK had met the full queue, so no socket held the connection yet (FACT
    accept-queue), and the client retransmitted its request."""

    MODE = "observe"

    def gt_rows(self, recs):
        kinds = {"syn": "syn_retransmit", "synack": "synack_retransmit", "data": "data_retransmit"}
        return [gt_row(r.t_first, kinds[r.kind], "listen_overflow", *r.client_side())
                for r in recs if r.kind in kinds and r.copies > 1]


class SynLoss(TcInjection):
    """Drop the first SYN of chosen connections."""

    MODE = "drop-syn"
    DETAIL = "drop"

    def gt_rows(self, recs):
        return [gt_row(r.t_first, "syn_retransmit", self.DETAIL, *r.client_side())
                for r in recs if r.kind == "syn"]


class DataLoss(TcInjection):
    """Drop the first data segment client -> server of chosen connections."""

    MODE = "drop-data"

    def gt_rows(self, recs):
        return [gt_row(r.t_first, "data_retransmit", "drop", *r.client_side())
                for r in recs if r.kind == "data"]


def fault_of(injection: Injection) -> Optional[TcFault]:
    return getattr(injection, "fault", None)
