"""`spiketrace trace`: the daemon. Attach to any application's TCP traffic (by port, pid, cgroup
and/or network namespace) for minutes to days, print the notable events as they happen, and
record a run directory that `spiketrace report` explains later.

Memory stays flat: the tracer and the counter sampler write Parquet parts as they go, this loop
flushes them on a timer (not only when a buffer fills), and meta.json is rewritten with the
counts so far. SIGINT, SIGTERM and the end of --duration all stop it the same way: detach
every probe, flush, mark the run complete.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import queue
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import click

from spiketrace.errors import SpikeTraceError

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW_SYN_RECV"}
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
def _cgroup2_mounts() -> List[str]:
    from spiketrace.commands.doctor import _mounts

    return [mp for mp, fs in _mounts() if fs == "cgroup2"]


def resolve_cgroup(path: str) -> str:
    """An existing cgroup v2 directory: absolute, or relative to a cgroup2 mount."""
    mounts = _cgroup2_mounts()
    candidates = [path] if os.path.isabs(path) else []
    candidates += [os.path.join(mp, path.lstrip("/")) for mp in mounts]
    for c in candidates:
        real = os.path.realpath(c)
        in_v2 = any(real == mp or real.startswith(mp.rstrip("/") + "/") for mp in mounts)
        if in_v2 and os.path.isfile(os.path.join(real, "cgroup.procs")):
            return real
    where = f"cgroup v2 is mounted at {', '.join(mounts)}" if mounts else "cgroup v2 is not mounted"
    raise SpikeTraceError(f"--cgroup {path}: no such cgroup v2 directory ({where}; "
                          "see `spiketrace doctor`)")


def resolve_netns(name: str) -> str:
    from tracer.sockdiag import netns_path

    try:
        return netns_path(name)  # type: ignore[return-value]
    except SpikeTraceError:
        raise SpikeTraceError(f"--netns {name}: no such network namespace (`ip netns list` shows "
                              "them; see `spiketrace doctor`)")


def validate(opts: TraceOptions) -> None:
    """Check the arguments, then the environment (root, BCC, tracefs)."""
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
        resolve_netns(opts.netns)
    check_environment()


def check_environment() -> None:
    from spiketrace.commands.doctor import tracefs_dir
    from spiketrace.errors import require_root

    require_root("spiketrace trace")
    try:
        from bcc import BPF  # noqa: F401  (an empty bcc/ dir imports as a namespace package)
    except Exception as exc:
        raise SpikeTraceError(f"BCC is not usable from this Python ({exc}): run "
                              "`sudo scripts/install.sh` (see `spiketrace doctor`)")
    if tracefs_dir() is None:
        raise SpikeTraceError("tracefs is not mounted: `sudo mount -t tracefs nodev "
                              "/sys/kernel/tracing` (see `spiketrace doctor`)")


# -- live output -----------------------------------------------------------------------------------
def _addr(ev: Dict[str, Any], side: str) -> str:
    addr, port = ev.get(f"{side}addr") or "?", ev.get(f"{side}port") or 0
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


_REASONS: Dict[str, Dict[int, str]] = {}


def reason_name(kind: str, code: int) -> str:
    """A drop or reset reason code in the kernel's words (from BTF), else the number."""
    if kind not in _REASONS:
        try:
            from tracer import btf

            _REASONS[kind] = btf.drop_reason_names() if kind == "drop" else \
                btf.reset_reason_names()
        except Exception:  # no BTF: numbers are still right
            _REASONS[kind] = {}
    return _REASONS[kind].get(code, str(code))


def _conn_flags(flags: int) -> str:
    try:
        from tracer.events import CONN_FLAGS
    except ImportError:
        return ""
    return ",".join(name for bit, name in CONN_FLAGS.items() if flags & bit)


def event_detail(ev: Dict[str, Any]) -> str:
    """The kind-specific part of a live line, in words."""
    import errno as errno_mod

    kind = ev.get("kind", "")
    state = TCP_STATES.get(int(ev.get("state") or 0), str(ev.get("state")))
    value = int(ev.get("value") or 0)
    reason = int(ev.get("reason") or 0)
    if kind == "retransmit":
        return "SYN retransmit" if state == "SYN_SENT" else f"data retransmit ({state})"
    if kind == "synack_retransmit":
        return "SYN-ACK retransmit"
    if kind == "state_change":
        return f"{state} -> {TCP_STATES.get(int(ev.get('new_state') or 0), ev.get('new_state'))}"
    if kind == "drop":
        return f"dropped: {reason_name('drop', reason)} ({state})"
    if kind == "connect_error":
        name = errno_mod.errorcode.get(reason, str(reason))
        return f"connect() {name}, {value} failed attempts"
    if kind in ("accept_wait", "runq_delay"):
        return f"{value / 1e6:.1f} ms"
    if kind in ("reset_sent", "reset_received"):
        return f"in {state}" + (f", {reason_name('reset', reason)}" if reason else "")
    if kind == "slow_connection":
        parts = []
        if ev.get("t_established") and ev.get("t_open"):
            parts.append(f"connect {(ev['t_established'] - ev['t_open']) / 1e6:.1f} ms")
        for key in ("syn_retrans", "retrans", "resets"):
            if ev.get(key):
                parts.append(f"{key} {ev[key]}")
        flags = _conn_flags(int(ev.get("flags") or 0))
        return ", ".join([str(ev.get("role") or "")] + parts + ([flags] if flags else []))
    return state if state != "0" else ""


def event_line(ev: Dict[str, Any], wall: dt.datetime) -> str:
    kind = ev.get("kind") or ("slow_connection" if "t_open" in ev else "?")
    ev = dict(ev, kind=kind)
    who = f"{ev.get('pid') or 0}/{ev.get('comm') or '-'}"
    return (f"{wall.astimezone().strftime('%H:%M:%S.%f')[:-3]} {kind:<17} {who:<20} "
            f"{_addr(ev, 's'):>21} > {_addr(ev, 'd'):<21} {event_detail(ev)}")


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
def _rows(run_path: Path, table: str) -> int:
    import pyarrow.parquet as pq

    target = run_path / f"{table}.parquet"
    if not target.is_dir():
        return 0
    return sum(pq.ParquetFile(p).metadata.num_rows for p in target.glob("*.parquet"))


def _live_stats(tracer, events_seen: int) -> Optional[Any]:
    """TracerStats so far, from the kernel's counters (the tracer reports them only at stop)."""
    try:
        from tracer import events as ev
        from tracer.session import TracerStats

        ctr = tracer.counters()
    except Exception:  # not started, or already stopped
        return None
    lost = sum(ctr[ev.CTR_LOST_BASE + k] for k in ev.KIND_NAMES) + ctr[ev.CTR_CONN_LOST]
    return TracerStats(events=events_seen, lost_events=lost,
                       connections_counted=ctr[ev.CTR_CONN_COUNTED],
                       connections_sent=ctr[ev.CTR_CONN_SENT])


def _netns_ref(opts: TraceOptions):
    """Where the counters are sampled: the given namespace, else the first pid's, else ours."""
    if opts.netns is not None:
        return opts.netns
    if opts.pids:
        return opts.pids[0]
    return None


def build_config(opts: TraceOptions):
    from tracer.session import TracerConfig

    inum = 0
    if opts.netns is not None:
        inum = os.stat(resolve_netns(opts.netns)).st_ino
    elif opts.pids:
        # sockets of the traced processes' namespace only (when they share one), so a port
        # also used in other containers does not mix their traffic in
        inums = set()
        for pid in opts.pids:
            try:
                inums.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
            except OSError:
                inums.add(0)
        if len(inums) == 1:
            inum = inums.pop()
    return TracerConfig(ports=list(opts.ports), pids=list(opts.pids), cgroup=opts.cgroup,
                        netns_inum=inum, slow_conn_ms=opts.threshold_ms,
                        all_events=opts.all_events)


class Daemon:
    """One trace session: set up, loop, tear down. `stop()` may be called from a signal."""

    def __init__(self, opts: TraceOptions, console):
        self.opts = opts
        self.console = console
        self.stopping = threading.Event()
        self.stop_reason = ""
        self.feed = EventFeed(show_quiet=opts.all_events)
        self.started = time.monotonic()
        self._lines_budget = float(MAX_LINES_PER_S)
        self._budget_t = time.monotonic()
        self._skipped_lines = 0

    def stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
        self.stopping.set()

    def run(self) -> Path:
        from spiketrace import rundir
        from tracer.counters import CounterSampler, read_tcp_sysctls
        from tracer.session import Tracer

        opts = self.opts
        config = build_config(opts)
        target = Path(opts.out or rundir.default_run_dir(opts.runs_dir, "trace"))
        fresh = not (target.exists() and any(target.iterdir()))
        run_path = rundir.create_run_dir(target, force=opts.force)
        self.run_path = run_path
        meta = rundir.new_meta("trace", scenario="trace")
        meta.bcc_version = _bcc_version()
        meta.params = {"tracer": dataclasses.asdict(config), "netns": opts.netns,
                       "cgroup": opts.cgroup, "duration_s": opts.duration_s,
                       "threshold_ms": opts.threshold_ms, "flush_interval_s": opts.flush_interval_s}
        rundir.write_meta(run_path, meta)
        self.meta = meta

        tracer = sampler = None
        stats = None
        status = "failed"
        ready = False
        try:
            with self.console.status("compiling and attaching BPF probes"):
                tracer = Tracer(config, run_path, on_event=self.feed)
                tracer.start()  # returns once every probe is attached: the ready signal
            meta.probes = dict(tracer.probes)
            meta.probes["listen_overflow"] = "sampled"  # the counter sampler below
            meta.drop_reasons = {str(k): v for k, v in tracer.drop_reasons.items()}
            meta.reset_reasons = {str(k): v for k, v in tracer.reset_reasons.items()}
            meta.notes.extend(f"probe {note}" for note in getattr(tracer, "notes", []))
            ns_ref = _netns_ref(opts)
            meta.sysctls = read_tcp_sysctls(ns_ref)
            sampler = CounterSampler(run_path, ns_ref, opts.ports,
                                     flush_interval_s=opts.flush_interval_s)
            sampler.start()
            tracer.start_thread()
            rundir.write_meta(run_path, meta)
            ready = True
            self.started = time.monotonic()  # --duration counts from the ready signal
            self._announce(meta)
            self._loop(tracer, sampler)
            status = "complete"
        except BaseException as exc:
            if not ready:
                if fresh:  # nothing was recorded: leave no half-made directory behind
                    self._discard(tracer, sampler, run_path)
                    tracer = sampler = None
                raise
            if not isinstance(exc, KeyboardInterrupt):
                raise
            # a second Ctrl-C while stopping: skip the rest of the drain, still detach and flush
            status = "interrupted"
            self.stop_reason = self.stop_reason or "SIGINT"
        finally:
            if sampler is not None:
                meta.counts["counter_samples"] = sampler.stop()
                if sampler.errors:
                    meta.notes.append(f"counter sampler: {sampler.errors} failed samples "
                                      f"(first: {sampler.first_error})")
            if tracer is not None:
                stats = tracer.stop()  # drain, flush, detach: before anything else can fail
                for kind, n in getattr(tracer, "lost_by_kind", {}).items():
                    meta.counts[f"lost_{kind}"] = int(n)
            if self.run_path is not None:
                if self.stop_reason:
                    meta.notes.append(f"stopped by {self.stop_reason}")
                self._finish(meta, status, stats)
        return run_path

    def _discard(self, tracer, sampler, run_path: Path) -> None:
        if sampler is not None:
            sampler.stop()
        if tracer is not None:
            tracer.stop()
        shutil.rmtree(run_path, ignore_errors=True)
        self.run_path = None

    def _announce(self, meta) -> None:
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
        backends = sorted(set(meta.probes.values()))
        self.console.print(f"Tracing TCP {' '.join(scope) or '(all traffic)'} {until}; "
                           f"{len(meta.probes)} probes ({', '.join(backends)}); "
                           f"recording to {self.run_path}")
        if not self.opts.quiet:
            self.console.print(f"{'TIME':<12} {'KIND':<17} {'PID/COMM':<20} "
                               f"{'LOCAL':>21}   {'REMOTE':<21} DETAIL", style="bold")

    def _loop(self, tracer, sampler) -> None:
        opts = self.opts
        deadline = self.started + opts.duration_s if opts.duration_s else None
        next_summary = time.monotonic() + opts.summary_interval_s
        next_flush = time.monotonic() + opts.flush_interval_s
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            self._print_events()
            if now >= next_summary:
                self._summary(tracer, sampler)
                next_summary = now + opts.summary_interval_s
            if now >= next_flush:
                self._flush(tracer)
                next_flush = now + opts.flush_interval_s
            if deadline is not None and now >= deadline:
                self.stop("the end of --duration")
        self._print_events()

    def _print_events(self) -> None:
        now = time.monotonic()
        self._lines_budget = min(MAX_LINES_PER_S, self._lines_budget + (now - self._budget_t) *
                                 MAX_LINES_PER_S)
        self._budget_t = now
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
            self.console.print(event_line(ev, self.meta.wall_time(t_ns)), markup=False,
                               highlight=False)
        skipped = self._skipped_lines + self.feed.not_shown
        if skipped and self._lines_budget >= 1:
            self.console.print(f"... {skipped:,} more events not shown (all are recorded)",
                               style="dim")
            self._skipped_lines = 0
            self.feed.not_shown = 0

    def _summary(self, tracer, sampler) -> None:
        stats = _live_stats(tracer, self.feed.seen)
        elapsed = time.monotonic() - self.started
        parts = [f"{elapsed:,.0f} s", f"events {self.feed.seen:,}"]
        if stats is not None:
            parts.append(f"connections {int(getattr(stats, 'connections_counted', 0)):,}")
            parts.append(f"lost {int(getattr(stats, 'lost_events', 0)):,}")
        latest = sampler.latest
        for name, label in (("TcpExt.ListenOverflows", "listen overflows"),
                            ("TcpExt.TCPSynRetrans", "SYN retrans"),
                            ("sockstat.tw", "TIME_WAIT")):
            if name in latest:
                parts.append(f"{label} {latest[name]:,}")
        self.console.print("-- " + "  ".join(parts), style="cyan", highlight=False)

    def _flush(self, tracer) -> None:
        """Time-based flush so a quiet daemon still lands its rows on disk, and meta.json
        shows the counts so far."""
        from spiketrace import rundir

        # the tracer flushes its own tables every few seconds from its consumer thread
        stats = _live_stats(tracer, self.feed.seen)
        if stats is not None:
            self.meta.counts["lost_events"] = int(getattr(stats, "lost_events", 0))
            self.meta.counts["connections_counted"] = int(getattr(stats, "connections_counted", 0))
            self.meta.counts["connections_sent"] = int(getattr(stats, "connections_sent", 0))
        self.meta.counts["events"] = _rows(self.run_path, "events")
        rundir.write_meta(self.run_path, self.meta)

    def _finish(self, meta, status: str, stats) -> None:
        from spiketrace import rundir

        meta.status = status
        meta.ended_wall = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        meta.counts["events"] = _rows(self.run_path, "events")
        meta.counts["connections"] = _rows(self.run_path, "connections")
        if stats is not None:
            meta.counts["lost_events"] = int(stats.lost_events)
            meta.counts["connections_counted"] = int(stats.connections_counted)
            meta.counts["connections_sent"] = int(stats.connections_sent)
        else:
            meta.counts.setdefault("lost_events", 0)
            meta.notes.append("the tracer did not report its statistics (it did not start)")
        rundir.write_meta(self.run_path, meta)


def _bcc_version() -> str:
    try:
        import bcc
    except ImportError:
        return ""
    return str(getattr(bcc, "__version__", ""))


def print_bpf_source(opts: TraceOptions) -> None:
    """--print-bpf: the final BPF source and compiler flags, without loading anything."""
    from tracer.session import render_source

    source, cflags = render_source(build_config(opts))
    click.echo("// cflags: " + " ".join(cflags))
    click.echo(source)


@click.command(name="trace")
@click.option("-p", "--port", "ports", type=int, multiple=True, metavar="PORT",
              help="Trace connections to or from this TCP port (repeatable).")
@click.option("--pid", "pids", type=int, multiple=True, metavar="PID",
              help="Trace this process's threads and sockets (repeatable).")
@click.option("--cgroup", metavar="PATH", default=None,
              help="Trace tasks in this cgroup v2 (absolute, or relative to the cgroup2 mount).")
@click.option("--netns", metavar="NAME", default=None,
              help="Trace sockets of this network namespace (`ip netns` name or ns file path).")
@click.option("-d", "--duration", "duration_s", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/<UTC time>-trace).")
@click.option("--force", is_flag=True, help="Reuse a non-empty --out directory.")
@click.option("--threshold", "threshold_ms", type=click.FloatRange(min=0, min_open=True),
              default=50.0, show_default=True,
              help="Record a connection in detail when its setup took longer than this many ms.")
@click.option("--all-events", is_flag=True,
              help="Record every state change too (more overhead; for short traces).")
@click.option("-q", "--quiet", is_flag=True, help="No line per event; summaries only.")
@click.option("--summary-interval", "summary_interval_s", type=click.FloatRange(min=1),
              default=10.0, show_default=True, help="Seconds between summary lines.")
@click.option("--flush-interval", "flush_interval_s", type=click.FloatRange(min=1), default=30.0,
              show_default=True,
              help="Seconds between flushes of the counters and meta.json (the tracer's own "
                   "tables reach disk every 5 s).")
@click.option("--print-bpf", is_flag=True, hidden=True,
              help="Print the final BPF source and flags, then exit.")
def command(print_bpf, **kwargs):
    """Trace an existing application's TCP traffic and record a run directory: a daemon that
    runs for minutes to days at low overhead. Filters (port, pid, cgroup, netns) combine;
    without any, all TCP traffic of the host is traced.

    It prints one line per notable event (retransmits, drops, resets, failed connects, long
    accept or run-queue waits, slow connections) and a summary every --summary-interval
    seconds. Stop it with Ctrl-C or SIGTERM; then explain what it saw with
    `spiketrace report`. See docs/trace.md.

    \b
    Examples:
      sudo spiketrace trace --port 8080                      # a server on port 8080
      sudo spiketrace trace --port 5432 --duration 3600 -q   # an hour, summaries only
      sudo spiketrace trace --pid $(pidof myapp) --port 443
      sudo spiketrace trace --cgroup system.slice/nginx.service --port 80
      sudo spiketrace trace --netns blue --port 9999 -o runs/blue
      spiketrace report runs/20261126T140000Z-trace           # afterwards, anywhere
    """
    from rich.console import Console

    opts = TraceOptions(ports=list(kwargs.pop("ports")), pids=list(kwargs.pop("pids")), **kwargs)
    if print_bpf:
        for port in opts.ports:
            if not 1 <= port <= 65535:
                raise SpikeTraceError(f"--port {port}: out of range, a TCP port is 1-65535")
        print_bpf_source(opts)
        return
    validate(opts)
    console = Console(stderr=True)
    daemon = Daemon(opts, console)

    previous = {}

    def on_signal(signum, frame):
        daemon.stop(signal.Signals(signum).name)
        # a second Ctrl-C while stopping falls back to KeyboardInterrupt (still cleaned up)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        run_path = daemon.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    meta = daemon.meta
    console.print(f"{meta.status}: {meta.counts.get('events', 0):,} events, "
                  f"{meta.counts.get('connections_counted', 0):,} connections counted "
                  f"({meta.counts.get('connections_sent', 0):,} slow or anomalous recorded), "
                  f"lost events: {meta.lost_events:,}")
    click.echo(f"Wrote {run_path}")
    click.echo(f"Next: spiketrace report {run_path}   # add --transactions APP.LOG to explain "
               "your application's own slow requests")
    if meta.status != "complete":
        raise SystemExit(130)
