"""The tracer: compile and attach the BPF probes, consume their records, write the tables.

    tracer = Tracer(TracerConfig(ports=[9999], netns_inum=ns.inum), run_dir)
    tracer.start()           # returns once every probe is attached: start the workload now
    tracer.start_thread()    # background consumer: output buffer -> events/connections.parquet
    ...
    stats = tracer.stop()    # drain, histograms.parquet, flush, detach (idempotent)

Filtering and aggregation happen in the kernel (tracer/bpf/common.h): user space receives only
evidence (retransmits, resets, drops, connect-error streaks, long waits, slow connections) and
reads log2 histograms of everything else. Every record that does not fit the output buffer is
counted in the kernel and reported as `TracerStats.lost_events`.

Over 400 lines on purpose: start, consumption, pause/resume and stop share one BPF object and
its lock; what stands alone is in tracer/compile.py (the source) and tracer/upkeep.py (maps).
"""
from __future__ import annotations

import ctypes as ct
import dataclasses
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from common.errors import SpikeTraceError
from common.meta import TracerParams
from tracer import btf, events, host, probes
from tracer.compile import compile_bpf, load_probe, output_backend, pages, render_source

POLL_INTERVAL_S = 0.05     # consumer period (records are sent without wakeups)
FLUSH_INTERVAL_S = 5.0     # tables reach disk at least this often
HIST_INTERVAL_S = 30.0     # histogram snapshots


class TracerConfig(TracerParams):
    """What to trace and the thresholds of what is sent in detail (the fields are
    common.meta.TracerParams, recorded as meta.json `params.tracer`)."""


@dataclasses.dataclass
class TracerStats:
    events: int
    lost_events: int
    connections_counted: int
    connections_sent: int
    lost_by_kind: Dict[str, int] = dataclasses.field(default_factory=dict)  # see Tracer.stats


class Tracer:
    """Kernel evidence of TCP latency spikes for one run (see module docstring)."""

    def __init__(self, config: TracerConfig, run_dir: Optional[Path],
                 on_event: Optional[Callable[[dict], None]] = None,
                 force: Optional[Dict[str, str]] = None):
        self.config = config
        self.force = force  # evidence -> backend, to test a fallback where the default works
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_event = on_event
        self.probes: Dict[str, str] = {}
        self.notes: List[str] = []
        self.output = output_backend()
        self.drop_reasons: Dict[int, str] = {}
        self.reset_reasons: Dict[int, str] = {}
        self._bpf = None
        self._progs: Dict[str, object] = {}  # BPF function name -> bcc function (fd)
        self._plan: Optional[probes.Plan] = None
        self._writers: Dict[str, object] = {}
        self._ev_raw: List[bytes] = []
        self._conn_raw: List[bytes] = []
        self._events = 0
        self._perf_lost = 0
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stats: Optional[TracerStats] = None
        self._last_flush = self._last_hist = 0.0

    # ---- start ----
    def start(self) -> None:
        """Compile, load and attach every probe; return once all are attached."""
        host.require_tracing("tracing")

        self._plan = probes.plan(disabled=self.config.skip, force=self.force,
                                 function_only=self.config.function_only)
        if self.config.exact_accept and self._plan.backends.get("accept_wait") == "raw_tracepoint":
            # no function probe here: the accept syscalls' exit is the only exact end of the wait
            exact = probes.plan(disabled=self.config.skip,
                                force=dict(self.force or {}, accept_wait="tracepoint"))
            if exact.backends.get("accept_wait") == "tracepoint":
                self._plan = exact
                self._plan.notes.append("accept_wait: the accept syscalls' exit tracepoint "
                                        "(--exact-accept): every syscall takes the kernel's slow "
                                        "path while tracing")
            else:
                self._plan.notes.append("accept_wait: --exact-accept: this kernel has no accept "
                                        "syscall tracepoint; the wait ends at the server's first "
                                        "read or write")
        self.probes = dict(self._plan.backends)
        self.notes = list(self._plan.notes)
        kernel = btf.vmlinux()
        self.drop_reasons = btf.drop_reason_names(kernel)
        self.reset_reasons = btf.reset_reason_names(kernel)
        text, cflags = render_source(self.config, output=self.output, plan=self._plan)
        self._bpf = compile_bpf(text, cflags)
        try:
            self._fill_config_maps()
            for evidence, backend, target, fn in self._plan.attachments():
                self._attach(evidence, backend, target, fn)
            self._open_output()
        except BaseException:
            self._bpf.cleanup()
            self._bpf = None
            raise
        if self.run_dir is not None:
            from common.rundir import TableWriter

            for table in ("events", "connections", "histograms"):
                self._writers[table] = TableWriter(self.run_dir, table, prefix="tracer")
        self._last_flush = self._last_hist = time.monotonic()

    # backend -> BCC's attach and detach methods and their target keyword
    _BCC_CALLS = {"tracepoint": ("attach_tracepoint", "detach_tracepoint", "tp"),
                  "raw_tracepoint": ("attach_raw_tracepoint", "detach_raw_tracepoint", "tp"),
                  "kprobe": ("attach_kprobe", "detach_kprobe", "event"),
                  "kretprobe": ("attach_kretprobe", "detach_kretprobe", "event")}

    def _attach(self, evidence: str, backend: str, target: str, fn: str) -> None:
        from bcc import BPF

        what = f"{evidence} via {backend} {target}"
        if backend in ("fentry", "fexit"):
            self._attach_kfunc(backend, fn, what)
            return
        prog_type = {"tracepoint": BPF.TRACEPOINT,
                     "raw_tracepoint": BPF.RAW_TRACEPOINT}.get(backend, BPF.KPROBE)
        self._progs[fn] = load_probe(self._bpf, fn, prog_type, what)
        attach, _detach, key = self._BCC_CALLS[backend]
        try:
            getattr(self._bpf, attach)(**{key: target.encode()}, fn_name=fn.encode())
        except Exception as exc:
            raise SpikeTraceError(f"could not attach probe {fn} ({what}): {exc}")

    def _attach_kfunc(self, backend: str, fn: str, what: str) -> None:
        """BCC attached every KFUNC_PROBE/KRETFUNC_PROBE as it built the program (its autoload);
        attach again only what pause() detached."""
        fds = self._bpf.kfunc_entry_fds if backend == "fentry" else self._bpf.kfunc_exit_fds
        if fn.encode() not in fds:
            try:
                getattr(self._bpf, "attach_kfunc" if backend == "fentry" else "attach_kretfunc")(
                    fn_name=fn.encode())
            except Exception as exc:
                raise SpikeTraceError(f"could not attach probe {fn} ({what}): {exc}")
        self._progs[fn] = self._bpf.funcs[fn.encode()]

    def pause(self) -> None:
        """Detach every probe, keeping the programs, maps and output: the workload runs as if
        untraced (benchmarks/tracer_overhead.py alternates pause() and resume()). Detaching
        takes a while (~25 ms per perf tracepoint here), so connection tracking goes last:
        until then the other probes still find every connection they see."""
        for _evidence, backend, target, fn in reversed(self._plan.attachments()):
            if backend in ("fentry", "fexit"):
                getattr(self._bpf, "detach_kfunc" if backend == "fentry" else "detach_kretfunc")(
                    fn_name=fn.encode())
                continue
            _attach, detach, key = self._BCC_CALLS[backend]
            getattr(self._bpf, detach)(**{key: target.encode()})

    def resume(self) -> None:
        """Attach again what pause() detached."""
        for evidence, backend, target, fn in self._plan.attachments():
            self._attach(evidence, backend, target, fn)

    def _fill_config_maps(self) -> None:
        ports = self._bpf[b"ports"]
        for p in self.config.ports:
            if not 0 < int(p) < 65536:
                raise SpikeTraceError(f"port {p} is not a TCP port (1-65535)")
            ports[ct.c_int(int(p))] = ct.c_uint8(1)
        self.add_pids(self.config.pids)
        if self.config.pids:  # their workers are theirs too (tracer/pidscope.py)
            from tracer import pidscope

            self.add_pids(sorted(pidscope.descendants(self.config.pids)))
        cgroup_dir = None
        if self.config.cgroup:
            cgroup_dir = host.resolve_cgroup(self.config.cgroup)
            self._bpf[b"cgroup_filter"][0] = cgroup_dir
        if not self.config.ports and (self.config.pids or cgroup_dir):
            self._seed_served_ports(cgroup_dir)

    def _seed_served_ports(self, cgroup_dir: Optional[str]) -> None:
        """Task filters without ports: the traced processes' listeners now (tracer/pidscope.py)."""
        from tracer import pidscope

        pids = set(int(p) for p in self.config.pids)
        pids |= pidscope.descendants(pids)
        if cgroup_dir:
            pids |= pidscope.cgroup_pids(cgroup_dir)
        served = self._bpf[b"served"]
        for port in sorted(pidscope.served_ports(pids)):
            served[ct.c_int(port)] = ct.c_uint8(1)

    def add_pids(self, pids: Sequence[int]) -> None:
        """Trace these processes too: run-queue delay of their threads, their syscalls."""
        if self._bpf is None:
            self.config.pids = list(self.config.pids) + [p for p in pids if p not in self.config.pids]
            return
        table = self._bpf[b"pids"]  # bitmaps by tgid (common.h, struct pid_word)
        for pid in pids:
            key = ct.c_int(int(pid) >> 6)
            word = table[key]
            word.user |= 1 << (int(pid) & 63)
            table[key] = word

    def _open_output(self) -> None:
        if self.output == "ringbuf":
            self._bpf[b"events"].open_ring_buffer(self._on_ring_record)
        else:
            self._bpf[b"events"].open_perf_buffer(
                self._on_perf_record, page_cnt=pages(self.config.ringbuf_pages),
                lost_cb=self._on_perf_lost)

    # ---- consumption ----
    def _on_ring_record(self, _ctx, data, size) -> int:
        self._store(ct.string_at(data, size), size)
        return 0

    def _on_perf_record(self, _cpu, data, size) -> None:
        self._store(ct.string_at(data, size), size)

    def _on_perf_lost(self, lost) -> None:
        self._perf_lost += lost

    def _store(self, raw: bytes, size: int) -> None:
        # perf pads records to 8 bytes + 4: tell them apart by size, then trim
        if size >= events.CONN_SIZE:
            self._conn_raw.append(raw[:events.CONN_SIZE])
        else:
            self._ev_raw.append(raw[:events.EVENT_SIZE])

    def poll(self) -> int:
        """Read what the kernel sent, decode and write it; returns the events decoded."""
        with self._lock:
            if self._bpf is None:
                return 0
            if self.output == "ringbuf":
                self._bpf.ring_buffer_consume()
            else:
                self._bpf.perf_buffer_poll(timeout=0)
            n = self._decode()
            now = time.monotonic()
            if now - self._last_flush >= FLUSH_INTERVAL_S:
                self._last_flush = now
                for w in self._writers.values():
                    w.flush()
            if now - self._last_hist >= HIST_INTERVAL_S:
                self._last_hist = now
                self._write_histograms()
            return n

    def _decode(self) -> int:
        n = 0
        if self._ev_raw:
            raw, self._ev_raw = b"".join(self._ev_raw), []
            n = self._deliver_events(events.decode_events(raw))
        if self._conn_raw:
            raw, self._conn_raw = b"".join(self._conn_raw), []
            cols = events.decode_conns(raw)
            if "connections" in self._writers:
                self._writers["connections"].append_columns(cols)
            if self.on_rows is not None:
                self.on_rows("connections", cols)
        return n

    def _deliver_events(self, cols: Dict[str, list]) -> int:
        n = len(cols["t_ns"])
        self._events += n
        if "events" in self._writers:
            self._writers["events"].append_columns(cols)
        if self.on_rows is not None:
            self.on_rows("events", cols)
        if self.on_event is not None:
            for row in events.rows(cols):
                self.on_event(row)
        return n

    def start_thread(self) -> None:
        """Consume in a background thread until stop()."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="spiketrace-tracer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.poll()
            self._stopping.wait(POLL_INTERVAL_S)

    # ---- kernel-side aggregates ----
    def counters(self) -> List[int]:
        """The per-CPU `counters` array summed over CPUs (slots CTR_* of spiketrace.h)."""
        table = self._bpf[b"counters"]
        return [int(sum(table[ct.c_int(i)])) for i in range(events.CTR_MAX)]

    def histograms(self) -> Dict[str, Dict[int, int]]:
        """name -> {log2 bucket: count} since start (cumulative)."""
        table = self._bpf[b"hists"]
        out: Dict[str, Dict[int, int]] = {}
        for h, name in enumerate(events.HIST_NAMES):
            buckets = {}
            for b in range(events.HIST_BUCKETS):
                c = int(sum(table[ct.c_int(h * events.HIST_BUCKETS + b)]))
                if c:
                    buckets[b] = c
            out[name] = buckets
        return out

    def recursion_misses(self) -> Dict[str, int]:
        """Probe runs the kernel skipped because the CPU was already in a BPF program
        (`recursion_misses` in the program's fdinfo): evidence lost, so counted as lost."""
        out = {}
        for fn, prog in self._progs.items():
            try:
                with open(f"/proc/self/fdinfo/{prog.fd}") as fh:
                    for line in fh:
                        if line.startswith("recursion_misses:") and int(line.split()[1]):
                            out[fn] = int(line.split()[1])
            except (OSError, ValueError):
                continue
        return out

    def _write_histograms(self) -> None:
        w = self._writers.get("histograms")
        if w is None:
            return
        t = time.monotonic_ns()
        for name, buckets in self.histograms().items():
            for b, c in sorted(buckets.items()):
                w.append({"t_ns": t, "name": name, "log2_bucket": b, "count": c})

    def _flush_pending(self) -> None:
        """What the kernel still holds at stop becomes events too: connect-error streaks still
        running, and folded repeats of resets and drops not yet carried by an event."""
        streaks = []
        for key, s in self._bpf[b"streaks"].items():
            if not s.count:
                continue  # a free slot (an array: every slot is listed)
            streaks.append(_streak_event(s))
        for _key, f in self._bpf[b"folds"].items():
            if f.pending:
                ev = events.Event.from_buffer_copy(bytes(f.last))
                ev.value2 = f.pending
                streaks.append(bytes(ev))
        if streaks:
            self._deliver_events(events.decode_events(b"".join(streaks)))

    # ---- counts ----
    def stats(self, total: bool = False) -> TracerStats:
        """The tracer's counts so far, from the kernel's counters. The one computation of lost
        evidence: records that did not fit the output buffer (per kind, and connection
        records), perf-buffer losses, connections left untracked (every slot of their
        `conns` bucket held), and probe runs the kernel skipped (recursion misses, and tracked
        connections whose state changes show one missed: CONN_GAP). After stop(), the final
        counts. Since the last `rotate()` (the current segment), or since start if `total`."""
        if self._bpf is None:
            if total and self._stats is not None:
                return self._final_total or self._stats
            return self._stats or TracerStats(0, 0, 0, 0)
        ctr = self.counters()
        lost = {name: ctr[events.CTR_LOST_BASE + k] for k, name in events.EVENT_KINDS.items()
                if ctr[events.CTR_LOST_BASE + k]}
        if ctr[events.CTR_CONN_LOST]:
            lost["connection"] = ctr[events.CTR_CONN_LOST]
        if ctr[events.CTR_CONN_UNTRACKED]:
            lost["untracked_connection"] = ctr[events.CTR_CONN_UNTRACKED]
        if ctr[events.CTR_STATE_GAP]:
            lost["missed_state_change"] = ctr[events.CTR_STATE_GAP]
        if self._perf_lost:
            lost["perf_buffer"] = self._perf_lost
        for fn, n in self.recursion_misses().items():
            lost[f"missed:{fn}"] = n
        raw = TracerStats(events=self._events, lost_events=sum(lost.values()),
                          connections_counted=ctr[events.CTR_CONN_COUNTED],
                          connections_sent=ctr[events.CTR_CONN_SENT], lost_by_kind=lost)
        return raw if total else _since(raw, self._segment_base)

    # ---- stop ----
    def stop(self) -> TracerStats:
        """Drain, write histograms, flush the tables, detach everything. Idempotent."""
        if self._stats is not None:
            return self._stats
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._bpf is None:
            self._stats = TracerStats(0, 0, 0, 0)
            return self._stats
        try:
            self.poll()
            self._flush_pending()
            self._write_histograms()
            self._stats = self.stats()
            self._final_total = self.stats(total=True)
        finally:
            for w in self._writers.values():
                w.flush()
            self._bpf.cleanup()
            self._bpf = None
        return self._stats

    def __enter__(self) -> "Tracer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- long-running traces (spiketrace trace): segments, learned-state expiry, map fill ----
    # Kept apart at the end: the daemon's needs on top of the recording above (the map sweeps
    # are tracer/upkeep.py).
    on_rows: Optional[Callable[[str, Dict[str, list]], None]] = None  # (table, decoded columns)
    _segment_base: Optional[TracerStats] = None  # totals when the current segment began
    _final_total: Optional[TracerStats] = None
    _keep_going = False

    def keep_going_on_write_errors(self) -> None:
        """A table part that cannot be written (a full disk) is dropped and counted instead of
        stopping the consumer (common.rundir.TableWriter.keep_going); see `write_health()`."""
        self._keep_going = True
        for w in self._writers.values():
            w.keep_going = True

    def write_health(self) -> Dict[str, object]:
        """Failed part writes, rows dropped with them, and the last error (None if none)."""
        ws = list(self._writers.values())
        return {"errors": sum(w.write_errors for w in ws) + self._retired_errors[0],
                "rows_dropped": sum(w.rows_dropped for w in ws) + self._retired_errors[1],
                "last_error": next((w.last_error for w in ws if w.last_error), None)}

    _retired_errors = (0, 0)

    def rotate(self, run_dir: Path) -> TracerStats:
        """End the current segment and record into `run_dir` from now on, probes attached
        throughout: what the kernel sent so far and a histogram snapshot go to the old
        directory. Returns the ended segment's stats; `stats()` restarts from zero.
        (Histograms stay cumulative since the tracer started.)"""
        from common.rundir import TableWriter

        with self._lock:
            if self._bpf is None:
                raise SpikeTraceError("the tracer is not running")
            if self.output == "ringbuf":
                self._bpf.ring_buffer_consume()
            else:
                self._bpf.perf_buffer_poll(timeout=0)
            self._decode()
            self._write_histograms()
            ended = self.stats()
            for w in self._writers.values():
                w.flush()
            health = self.write_health()
            self._retired_errors = (int(health["errors"]), int(health["rows_dropped"]))
            self.run_dir = Path(run_dir)
            self._writers = {t: TableWriter(self.run_dir, t, prefix="tracer")
                             for t in self._writers}
            for w in self._writers.values():
                w.keep_going = self._keep_going
            self._segment_base = self.stats(total=True)
            self._last_flush = self._last_hist = time.monotonic()
        return ended

def _streak_event(s) -> bytes:
    """A connect-error streak (struct streak of tracer/bpf/handlers.h) as its event record."""
    ev = events.Event()
    ev.t_ns, ev.kind, ev.netns, ev.pid = s.last_ns, 7, s.netns, s.tgid
    ev.reason, ev.value, ev.value2 = s.err, s.count, s.start_ns
    ev.family, ev.dport = s.family, s.dport
    ct.memmove(ev.daddr, bytes(s.daddr), 16)
    ev.comm = bytes(s.comm).split(b"\0")[0]
    return bytes(ev)


def _since(now: TracerStats, base: Optional[TracerStats]) -> TracerStats:
    """The counts of `now` that grew since `base` (a segment's own counts)."""
    if base is None:
        return now
    lost = {k: v - base.lost_by_kind.get(k, 0) for k, v in now.lost_by_kind.items()
            if v - base.lost_by_kind.get(k, 0) > 0}
    return TracerStats(events=now.events - base.events, lost_events=sum(lost.values()),
                       connections_counted=now.connections_counted - base.connections_counted,
                       connections_sent=now.connections_sent - base.connections_sent,
                       lost_by_kind=lost)
