"""The trace daemon: attach to any application's TCP traffic (by port, pid, cgroup and/or network
namespace) for minutes to days, print the notable events as they happen, and record a run
directory that `spiketrace report` explains later.

Memory stays flat: the tracer and the counter sampler write Parquet parts as they go, and
meta.json is rewritten with the counts so far every flush interval (`Recording.checkpoint`).
SIGINT, SIGTERM and the end of --duration all stop it the same way: detach every probe, flush,
mark the run complete (spiketrace.recording).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from common.errors import SpikeTraceError
from common.vocab import describe_connection, describe_event

# Too frequent to print one line each; they are recorded with --all-events.
QUIET_KINDS = {"state_change", "time_wait"}
MAX_LINES_PER_S = 50


@dataclasses.dataclass
class TraceOptions:
    ports: List[int] = dataclasses.field(default_factory=list)
    pids: List[int] = dataclasses.field(default_factory=list)
    cgroup: Optional[str] = None
    netns: Optional[str] = None
    duration_s: Optional[float] = None
    out: Optional[Path] = None
    runs_dir: Path = Path("runs")
    force: bool = False
    threshold_ms: float = 50.0
    all_events: bool = False
    quiet: bool = False
    summary_interval_s: float = 10.0
    flush_interval_s: float = 30.0


# -- validation: one clear line per mistake, before anything is attached --------------------------
def validate(opts: TraceOptions) -> None:
    """Check the arguments, then the environment (root, BCC, tracefs, headers)."""
    from common.netns import netns_path
    from tracer.host import require_tracing, resolve_cgroup

    for port in opts.ports:
        if not 1 <= port <= 65535:
            raise SpikeTraceError(f"--port {port}: out of range, a TCP port is 1-65535 "
                                  "(see `spiketrace trace --help`)")
    for pid in opts.pids:
        if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):
            raise SpikeTraceError(f"--pid {pid}: no such process (see `spiketrace doctor`)")
    if opts.cgroup is not None:
        opts.cgroup = resolve_cgroup(opts.cgroup)
    if opts.netns is not None:
        try:
            netns_path(opts.netns)
        except SpikeTraceError:
            raise SpikeTraceError(f"--netns {opts.netns}: no such network namespace (`ip netns list` "
                                  "shows them; see `spiketrace doctor`)")
    require_tracing("spiketrace trace")


def build_config(opts: TraceOptions):
    from common.netns import inum as netns_inum
    from tracer.session import TracerConfig

    inum = 0
    if opts.netns is not None:
        inum = netns_inum(opts.netns)
    elif opts.pids:
        # sockets of the traced processes' namespace only (when they share one), so a port
        # also used in other containers does not mix their traffic in
        inums = set()
        for pid in opts.pids:
            try:
                inums.add(netns_inum(pid))
            except (OSError, SpikeTraceError):
                inums.add(0)
        if len(inums) == 1:
            inum = inums.pop()
    return TracerConfig(ports=list(opts.ports), pids=list(opts.pids), cgroup=opts.cgroup,
                        netns_inum=inum, slow_conn_ms=opts.threshold_ms,
                        all_events=opts.all_events)


def _netns_ref(opts: TraceOptions):
    """Where the counters are sampled: the given namespace, else the first pid's, else ours."""
    if opts.netns is not None:
        return opts.netns
    if opts.pids:
        return opts.pids[0]
    return None


# -- live output -----------------------------------------------------------------------------------
def _addr(ev: Dict[str, Any], side: str) -> str:
    addr, port = ev.get(f"{side}addr") or "?", ev.get(f"{side}port") or 0
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def event_line(ev: Dict[str, Any], wall: dt.datetime, drops=None, resets=None) -> str:
    """One live line: local time, kind, pid/comm, the 4-tuple, the event in words."""
    conn = "t_open" in ev
    kind = "slow_connection" if conn else ev.get("kind") or "?"
    detail = describe_connection(ev) if conn else describe_event(ev, drops, resets)
    who = f"{ev.get('pid') or 0}/{ev.get('comm') or '-'}"
    return (f"{wall.astimezone().strftime('%H:%M:%S.%f')[:-3]} {kind:<17} {who:<20} "
            f"{_addr(ev, 's'):>21} > {_addr(ev, 'd'):<21} {detail}")


class EventFeed:
    """Hands events from the tracer's consumer thread to the main loop: bounded, never blocks
    the consumer (a full queue drops *display* lines only; every event is still recorded)."""

    def __init__(self, show_quiet: bool):
        self.queue: "queue.Queue[Dict[str, Any]]" = queue.Queue(maxsize=10_000)
        self.show_quiet = show_quiet
        self.seen = 0
        self.not_shown = 0

    def __call__(self, ev: Dict[str, Any]) -> None:
        self.seen += 1
        if not self.show_quiet and ev.get("kind") in QUIET_KINDS:
            return
        try:
            self.queue.put_nowait(ev)
        except queue.Full:
            self.not_shown += 1


# -- the daemon ----------------------------------------------------------------------------------
class Daemon:
    """One trace session: set up, loop, tear down. `stop()` may be called from a signal."""

    def __init__(self, opts: TraceOptions, console):
        self.opts = opts
        self.console = console
        self.stopping = threading.Event()
        self.stop_reason = ""
        self.feed = EventFeed(show_quiet=opts.all_events)
        self.started = time.monotonic()
        self.rec = None
        self._lines_budget = float(MAX_LINES_PER_S)
        self._budget_t = time.monotonic()
        self._skipped_lines = 0
        self._baseline: Dict[str, int] = {}

    @property
    def meta(self):
        return self.rec.meta if self.rec is not None else None

    def stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
        self.stopping.set()

    def run(self) -> Path:
        from spiketrace.orchestrate import bcc_version
        from spiketrace.recording import Recording
        from common.meta import TraceParams

        opts = self.opts
        config = build_config(opts)
        self.rec = rec = Recording.create(opts.out, kind="trace", scenario="trace", force=opts.force,
                                          runs_dir=opts.runs_dir)
        rec.meta.bcc_version = bcc_version()
        rec.meta.params.trace = TraceParams(netns=opts.netns, cgroup=opts.cgroup,
                                            duration_s=opts.duration_s,
                                            flush_interval_s=opts.flush_interval_s)
        rec.meta.params.threshold_ms = opts.threshold_ms
        with rec:
            with self.console.status("compiling and attaching BPF probes"):
                rec.start_tracer(config, on_event=self.feed)  # every probe attached: ready
            sampler = rec.start_sampler(_netns_ref(opts), opts.ports,
                                        flush_interval_s=opts.flush_interval_s)
            rec.ready()
            self._baseline = dict(sampler.latest)
            self.started = time.monotonic()  # --duration counts from the ready signal
            self._announce()
            try:
                self._loop(sampler)
            except KeyboardInterrupt:
                # a second Ctrl-C while stopping: skip the rest of the drain, still detach and flush
                rec.status = "interrupted"
                self.stop_reason = self.stop_reason or "SIGINT"
            if self.stop_reason:
                rec.meta.notes.append(f"stopped by {self.stop_reason}")
        return rec.path

    def _announce(self) -> None:
        o = self.opts
        scope = []
        if o.ports:
            scope.append("port " + ",".join(map(str, o.ports)))
        if o.pids:
            scope.append("pid " + ",".join(map(str, o.pids)))
        if o.cgroup:
            scope.append(f"cgroup {o.cgroup}")
        if o.netns:
            scope.append(f"netns {o.netns}")
        until = f"for {o.duration_s:g} s" if o.duration_s else "until Ctrl-C"
        probes = self.meta.probes
        backends = sorted(set(probes.values()))
        self.console.print(f"Tracing TCP {' '.join(scope) or '(all traffic)'} {until}; "
                           f"{len(probes)} probes ({', '.join(backends)}); "
                           f"recording to {self.rec.path}")
        if not self.opts.quiet:
            self.console.print(f"{'TIME':<12} {'KIND':<17} {'PID/COMM':<20} "
                               f"{'LOCAL':>21}   {'REMOTE':<21} DETAIL", style="bold")

    def _loop(self, sampler) -> None:
        opts = self.opts
        deadline = self.started + opts.duration_s if opts.duration_s else None
        next_summary = time.monotonic() + opts.summary_interval_s
        next_flush = time.monotonic() + opts.flush_interval_s
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            self._print_events()
            if now >= next_summary:
                self._summary(sampler)
                next_summary = now + opts.summary_interval_s
            if now >= next_flush:
                self.rec.checkpoint()  # the tracer flushes its own tables every few seconds
                next_flush = now + opts.flush_interval_s
            if deadline is not None and now >= deadline:
                self.stop("the end of --duration")
        self._print_events()

    def _print_events(self) -> None:
        now = time.monotonic()
        self._lines_budget = min(MAX_LINES_PER_S, self._lines_budget + (now - self._budget_t) *
                                 MAX_LINES_PER_S)
        self._budget_t = now
        drops, resets = self.meta.reason_names("drop"), self.meta.reason_names("reset")
        while True:
            try:
                ev = self.feed.queue.get_nowait()
            except queue.Empty:
                break
            if self.opts.quiet or self._lines_budget < 1:
                self._skipped_lines += 0 if self.opts.quiet else 1
                continue
            self._lines_budget -= 1
            t_ns = int(ev.get("t_ns") or ev.get("t_open") or time.monotonic_ns())
            self.console.print(event_line(ev, self.meta.wall_time(t_ns), drops, resets),
                               markup=False, highlight=False)
        skipped = self._skipped_lines + self.feed.not_shown
        if skipped and self._lines_budget >= 1:
            self.console.print(f"... {skipped:,} more events not shown (all are recorded)",
                               style="dim")
            self._skipped_lines = 0
            self.feed.not_shown = 0

    def _summary(self, sampler) -> None:
        stats = self.rec.tracer_stats()
        elapsed = time.monotonic() - self.started
        parts = [f"{elapsed:,.0f} s", f"events {self.feed.seen:,}"]
        if stats is not None:
            parts.append(f"connections {stats.connections_counted:,}")
            parts.append(f"lost {stats.lost_events:,}")
        latest = sampler.latest
        for name, label in (("TcpExt.ListenOverflows", "listen overflows"),
                            ("TcpExt.TCPSynRetrans", "SYN retrans")):
            if name in latest:  # growth during this trace, not since boot
                parts.append(f"{label} +{latest[name] - self._baseline.get(name, latest[name]):,}")
        if "sockstat.tw" in latest:
            parts.append(f"TIME_WAIT {latest['sockstat.tw']:,}")
        self.console.print("-- " + "  ".join(parts), style="cyan", highlight=False)


def print_bpf_source(opts: TraceOptions) -> str:
    """--print-bpf: the final BPF source and compiler flags, without loading anything."""
    from tracer.compile import render_source

    source, cflags = render_source(build_config(opts))
    return "// cflags: " + " ".join(cflags) + "\n" + source
