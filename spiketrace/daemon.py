"""The trace daemon: attach to any application's TCP traffic (by port, pid, cgroup and/or network
namespace) for minutes to days, print the notable events and explain each slow connection as
it happens (spiketrace.live: the analysis of `spiketrace report`), serve Prometheus metrics
(spiketrace.metrics), and record a run directory, in segments with --max-size/--max-age
(spiketrace.segments).

Memory stays flat: the tracer and the counter sampler write Parquet parts as they go, the live
window keeps minutes, and what the kernel maps learned about exited processes is forgotten
(tracer.upkeep). meta.json is rewritten with the counts so far every flush interval.
SIGINT, SIGTERM and the end of --duration all stop it the same way: detach every probe, flush,
mark the run complete (spiketrace.recording); later signals while stopping are ignored. SIGHUP
reopens --log and starts a new segment.

Over 400 lines on purpose: start, the main loop and stop share the one daemon state (outputs
and their outage, line budget, live window); what stands alone is in daemon_tasks.py, live.py,
metrics.py and segments.py.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from common.errors import SpikeTraceError
from common.vocab import describe_event
from spiketrace.live import EventFeed, event_line  # noqa: F401  (event_line: the live line)

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
    exact_accept: bool = False
    quiet: bool = False
    summary_interval_s: float = 10.0
    flush_interval_s: float = 30.0
    # production (issue 13): live explanations, metrics, segments, upkeep
    json: bool = False
    log: Optional[Path] = None
    explain: bool = True
    spike_ms: float = 100.0
    open_after_s: float = 5.0
    metrics: Optional[str] = None
    max_size: Optional[int] = None
    max_age_s: Optional[float] = None
    segment_s: Optional[float] = None
    expire_interval_s: float = 30.0
    bpf_stats: bool = False
    counter_hz: float = 20.0


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
    if opts.metrics is not None:
        from spiketrace.metrics import parse_address

        parse_address(opts.metrics)
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
                        all_events=opts.all_events, exact_accept=opts.exact_accept)


def _netns_ref(opts: TraceOptions):
    """Where the counters are sampled: the given namespace, else the first pid's, else ours."""
    if opts.netns is not None:
        return opts.netns
    if opts.pids:
        return opts.pids[0]
    return None


# -- the daemon ----------------------------------------------------------------------------------
class Daemon:
    """One trace session: set up, loop, tear down. `stop()` and `hangup()` may be called from a
    signal handler; the main loop does the work."""

    def __init__(self, opts: TraceOptions, console, out=None):
        from spiketrace.service import Output

        self.opts = opts
        self.console = console
        self.stopping = threading.Event()
        self.stop_reason = ""
        self.hup = threading.Event()
        self.feed = EventFeed(show_quiet=opts.all_events)
        self.started = time.monotonic()
        self.rec = None
        self.sampler = None
        self.segments = None
        self.explainer = None
        self.window = None
        self.resolver = None
        self.metrics_server = None
        self.output = out or Output(opts.log)
        self.events_by_kind: "collections.Counter[str]" = collections.Counter()
        self.syn_retransmits = 0
        self.spikes_by_cause: "collections.Counter[str]" = collections.Counter()
        self.spikes_open = 0
        self.map_fill: Dict[str, tuple] = {}
        self.pids_expired = 0
        self.last_retransmit = -1e9
        self.problems: Dict[str, str] = {}  # what went wrong while running, said once each
        self.write_failing: Set[str] = set()  # the writers failing now: "meta", "rows"
        self._lines_budget = float(MAX_LINES_PER_S)
        self._budget_t = time.monotonic()
        self._skipped_lines = 0
        self._baseline: Dict[str, int] = {}
        self._disk = (0, -1e9)
        self._stats_fd = None

    @property
    def meta(self):
        return self.rec.meta if self.rec is not None else None

    def stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
        self.stopping.set()

    def hangup(self) -> None:
        self.hup.set()

    # ---- what the metrics read (spiketrace.metrics) ----
    def tracer_totals(self):
        tracer = self.rec.tracer if self.rec is not None else None
        return tracer.stats(total=True) if tracer is not None else None

    def write_health(self) -> Dict[str, Any]:
        h = {"errors": 0, "rows_dropped": 0, "last_error": None}
        if self.rec is not None and self.rec.tracer is not None:
            h = dict(self.rec.tracer.write_health())
        if self.sampler is not None and self.sampler._writer is not None:
            w = self.sampler._writer
            h["errors"] += w.write_errors
            h["rows_dropped"] += w.rows_dropped
            h["last_error"] = h["last_error"] or w.last_error
        h["errors"] += int("meta" in self.write_failing)
        # the outage's first failure can be meta.json's, before any table part fails: the
        # recording is not ok (spiketrace_recording_ok) from then on; last_error stays the
        # tables' own (the health task reports it as the "rows" writer's state)
        h["ok"] = not h["last_error"] and "meta" not in self.write_failing
        return h

    # ---- the run ----
    def run(self) -> Path:
        from spiketrace.metrics import MetricsServer
        from spiketrace.segments import Segments

        opts = self.opts
        metrics = MetricsServer(opts.metrics, self) if opts.metrics else None  # a port in use: now
        self.metrics_server = metrics
        try:
            if opts.max_size or opts.max_age_s:
                root = Path(opts.out) if opts.out is not None else _default_root(opts.runs_dir)
                self.segments = Segments(root, opts.max_size, opts.max_age_s, opts.segment_s)
            return self._record()
        finally:
            if metrics is not None:
                metrics.close()
            if self._stats_fd is not None:
                os.close(self._stats_fd)

    def _record(self) -> Path:
        from common.meta import TraceParams
        from spiketrace.orchestrate import bcc_version
        from spiketrace.recording import Recording
        from spiketrace.service import notify

        opts = self.opts
        if self.segments is not None:
            out, force = self.segments.next_path(), False
        else:
            out, force = opts.out, opts.force
        self.rec = rec = Recording.create(out, kind="trace", scenario="trace", force=force,
                                          runs_dir=opts.runs_dir)
        rec.meta.bcc_version = bcc_version()
        rec.meta.params.trace = TraceParams(netns=opts.netns, cgroup=opts.cgroup,
                                            duration_s=opts.duration_s,
                                            flush_interval_s=opts.flush_interval_s)
        rec.meta.params.threshold_ms = opts.threshold_ms
        with rec:
            if self.segments is not None:
                self.segments.started_segment(rec.path)
            with self.console.status("compiling and attaching BPF probes"):
                tracer = rec.start_tracer(build_config(opts))  # every probe attached
            tracer.keep_going_on_write_errors()
            tracer.on_rows = self._on_rows
            self.sampler = sampler = rec.start_sampler(_netns_ref(opts), opts.ports,
                                                       flush_interval_s=opts.flush_interval_s)
            sampler.keep_going_on_write_errors()
            if opts.counter_hz != sampler.hz:
                sampler.set_rate(opts.counter_hz)
                rec.meta.params.counter_hz = sampler.hz
            if opts.explain:
                self._start_live(sampler)
            if opts.bpf_stats:
                from tracer.upkeep import enable_bpf_stats

                self._stats_fd = enable_bpf_stats()
            rec.ready()
            self._baseline = dict(sampler.first or sampler.latest)
            self.started = time.monotonic()  # --duration counts from the ready signal
            self._announce()
            notify(f"READY=1\nSTATUS=tracing, recording to {rec.path}\nMAINPID={os.getpid()}")
            try:
                self._loop()
            except KeyboardInterrupt:
                # a second Ctrl-C while stopping: skip the rest of the drain, still detach and flush
                rec.status = "interrupted"
                self.stop_reason = self.stop_reason or "SIGINT"
            notify("STOPPING=1\nSTATUS=stopping: detaching the probes and flushing")
            if self.stop_reason:
                rec.meta.notes.append(f"stopped by {self.stop_reason}")
            self._note_problems()
        self.output.flush()
        return rec.path

    def _start_live(self, sampler) -> None:
        import analysis.core  # noqa: F401  (imported now, not in the first live analysis)
        from analysis.options import AnalysisOptions
        from spiketrace.containers import Resolver
        from spiketrace.live import LiveExplainer, LiveWindow

        self.resolver = Resolver()
        self.window = LiveWindow(on_connection=self.resolver)
        latest = dict(sampler.latest)  # the sampler started already: its values so far
        if latest:
            now = time.monotonic_ns()
            self.window.add_counters({"t_ns": [now] * len(latest), "name": list(latest),
                                      "value": list(latest.values())})
        sampler.on_rows = self.window.add_counters
        self.explainer = LiveExplainer(self.window, AnalysisOptions(threshold_ms=self.opts.spike_ms),
                                       open_after_s=self.opts.open_after_s)

    def _on_rows(self, table: str, cols: Dict[str, list]) -> None:
        """Every row the tracer records, in its consumer thread: counted, and kept for live."""
        if table == "events":
            self.feed.columns(cols, quiet=self.opts.quiet)
            self.events_by_kind.update(cols["kind"])
            if "retransmit" in cols["kind"] or "synack_retransmit" in cols["kind"]:
                self.last_retransmit = time.monotonic()  # a connection may be stuck: scan (live)
            self.syn_retransmits += sum(1 for k, s in zip(cols["kind"], cols["state"])
                                        if k == "retransmit" and s == 2)
        if self.window is not None:
            self.window.add(table, cols)

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
        extra = f"; metrics on {o.metrics}" if o.metrics else ""
        self.console.print(f"Tracing TCP {' '.join(scope) or '(all traffic)'} {until}; "
                           f"{len(probes)} probes ({', '.join(backends)}); "
                           f"recording to {self.rec.path}{extra}")
        if not o.quiet and not o.json:
            self.output.write(f"{'TIME':<12} {'KIND':<17} {'PID/COMM':<20} "
                              f"{'LOCAL':>21}   {'REMOTE':<21} DETAIL")
            self.output.flush()

    def _loop(self) -> None:
        from spiketrace.daemon_tasks import Tasks

        tasks = Tasks(self)
        deadline = self.started + self.opts.duration_s if self.opts.duration_s else None
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            self._print_events()
            tasks.run(now)
            if deadline is not None and now >= deadline:
                self.stop("the end of --duration")
        self._print_events()
        tasks.run(time.monotonic(), final=True)

    def _print_events(self) -> None:
        from spiketrace.live import dumps, event_json

        now = time.monotonic()
        self._lines_budget = min(MAX_LINES_PER_S, self._lines_budget + (now - self._budget_t) *
                                 MAX_LINES_PER_S)
        self._budget_t = now
        if self.feed.queue.empty() and not (self._skipped_lines or self.feed.not_shown):
            return
        drops, resets = self.meta.reason_names("drop"), self.meta.reason_names("reset")
        wrote = False
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
            if self.opts.json:
                self.output.write(dumps(event_json(ev, self.meta, describe_event(ev, drops, resets))))
            else:
                self.output.write(event_line(ev, self.meta.wall_time(t_ns), drops, resets))
            wrote = True
        skipped = self._skipped_lines + self.feed.not_shown
        if skipped and self._lines_budget >= 1:
            if not self.opts.json:
                self.output.write(f"... {skipped:,} more events not shown (all are recorded)")
            self._skipped_lines = 0
            self.feed.not_shown = 0
            wrote = True
        if wrote:
            self.output.flush()

    def summary(self) -> None:
        from spiketrace.live import dumps

        stats = self.rec.tracer_stats()
        elapsed = time.monotonic() - self.started
        parts = [f"{elapsed:,.0f} s", f"events {self.feed.seen:,}"]
        data: Dict[str, Any] = {"type": "summary", "elapsed_s": round(elapsed, 3), "events": self.feed.seen}
        if stats is not None:
            totals = self.tracer_totals()
            parts.append(f"connections {totals.connections_counted:,}")
            parts.append(f"lost {totals.lost_events:,}")
            data.update(connections=totals.connections_counted, lost_events=totals.lost_events)
        if self.explainer is not None:
            n = sum(self.spikes_by_cause.values())
            parts.append(f"spikes {n:,}")
            data["spikes"] = dict(self.spikes_by_cause)
        latest = dict(self.sampler.latest)
        for name, label, key in (("TcpExt.ListenOverflows", "listen overflows", "listen_overflows"),
                                 ("TcpExt.TCPSynRetrans", "SYN retrans", "syn_retransmits")):
            if name in latest:  # growth during this trace, not since boot
                grown = latest[name] - self._baseline.get(name, latest[name])
                parts.append(f"{label} +{grown:,}")
                data[key] = grown
        if "sockstat.tw" in latest:
            parts.append(f"TIME_WAIT {latest['sockstat.tw']:,}")
            data["time_wait"] = latest["sockstat.tw"]
        self.console.print("-- " + "  ".join(parts), style="cyan", highlight=False)
        if self.opts.json:
            self.output.write(dumps(data))
            self.output.flush()

    def problem(self, key: str, text: str) -> None:
        """Say once what went wrong while tracing (the daemon goes on; metrics show it too)."""
        if key not in self.problems:
            self.problems[key] = text
            self.console.print(f"spiketrace: {text}", style="yellow", highlight=False)

    def write_state(self, writer: str, error: Optional[str]) -> None:
        """One outage of the output (a full disk fails meta.json and the tables alike) is said
        once, by its first error, and its end once, when every writer writes again."""
        if error:
            if not self.write_failing:
                self.problem("write", f"{error}: tracing goes on and the live lines and metrics too; "
                             "rows that cannot be written are dropped and counted "
                             "(spiketrace_rows_dropped_total), meta.json keeps its last good "
                             "version, everything written before is kept")
            self.write_failing.add(writer)
        elif writer in self.write_failing:
            self.write_failing.discard(writer)
            if not self.write_failing:
                self.problems.pop("write", None)
                self.console.print("spiketrace: writing again", style="green", highlight=False)

    def _note_problems(self) -> None:
        h = self.write_health()
        if h["rows_dropped"]:
            self.meta.notes.append(f"{h['rows_dropped']:,} rows could not be written ({h['errors']} "
                                   f"failed writes; last: {h['last_error']}): they are missing")
        for text in self.problems.values():
            self.meta.notes.append(text)


def _default_root(runs_dir: Path) -> Path:
    from common.rundir import default_run_dir

    return default_run_dir(runs_dir, "trace")


def print_bpf_source(opts: TraceOptions) -> str:
    """--print-bpf: the final BPF source and compiler flags, without loading anything."""
    from tracer.compile import render_source

    source, cflags = render_source(build_config(opts))
    return "// cflags: " + " ".join(cflags) + "\n" + source
