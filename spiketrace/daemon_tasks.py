"""The trace daemon's periodic work, called from its main loop (spiketrace.daemon): live
explanations about once a second, summaries, meta.json checkpoints, the sweep of the kernel
maps, segment rotation and pruning, SIGHUP, the systemd watchdog, and saying once what went
wrong (a full disk) while the tracing goes on."""
from __future__ import annotations

import copy
import time
from typing import Dict, List

from common.errors import SpikeTraceError

LIVE_PERIOD_S = 1.0
HIST_PERIOD_S = 10.0  # the median of all connections moves slowly
SEGMENT_CHECK_S = 5.0
TRIM_PERIOD_S = 10.0


class Tasks:
    def __init__(self, daemon):
        from spiketrace.service import Watchdog

        self.d = daemon
        o = daemon.opts
        now = time.monotonic()
        self.next = {"live": now + LIVE_PERIOD_S, "summary": now + o.summary_interval_s,
                     "flush": now + o.flush_interval_s, "expire": now + min(5.0, o.expire_interval_s),
                     "segment": now + SEGMENT_CHECK_S, "scan": now + self._scan_period()}
        self.watchdog = Watchdog()
        self._hists = None
        self._hists_t = -1e9
        self._open_rows = None
        self._next_trim = 0.0

    def _scan_period(self) -> float:
        # a read of the whole connection map (11 MB) costs ~15 ms: every --open-after, at least 2 s
        return max(2.0, self.d.opts.open_after_s) if self.d.opts.open_after_s > 0 else 30.0

    def _due(self, name: str, now: float, period: float) -> bool:
        if now < self.next[name]:
            return False
        self.next[name] = now + period
        return True

    def run(self, now: float, final: bool = False) -> None:
        """One round of the periodic work. A task that fails unexpectedly is reported once
        and skipped: the recording, which runs in its own threads, goes on."""
        try:
            self._run(now, final)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a bug in a periodic task must not end a days-long trace
            self.d.problem(f"task-{type(exc).__name__}", f"internal error in the daemon's periodic "
                           f"work ({type(exc).__name__}: {exc}); tracing goes on")

    def _run(self, now: float, final: bool) -> None:
        d, o = self.d, self.d.opts
        self.watchdog.ping()
        if d.hup.is_set():
            d.hup.clear()
            self.hangup()
        if d.explainer is not None and (final or self._due("live", now, LIVE_PERIOD_S)):
            # a connection stuck in its handshake or retransmitting sends retransmit events
            # (backing off up to a minute apart): without one lately, no connection can be
            # stuck, and the 11 MB read of the connection map is skipped
            stuck = now - d.last_retransmit < max(60.0, 2 * o.open_after_s)
            if stuck and o.open_after_s > 0 and self._due("scan", now, self._scan_period()):
                self.scan()
            self.live(final)
        if final:
            return
        if self._due("summary", now, o.summary_interval_s):
            d.summary()
        if self._due("expire", now, o.expire_interval_s):
            self.expire()
        if self._due("flush", now, o.flush_interval_s):
            self.checkpoint()
        if d.segments is not None and self._due("segment", now, SEGMENT_CHECK_S):
            if d.segments.due(d.rec.path):
                self.rotate("its size or age limit")
        self.health()

    # ---- live explanations ----
    def scan(self) -> None:
        """The connections tracked now: map fill, and the slow ones still open (live)."""
        from tracer.upkeep import scan_connections

        d = self.d
        bound = int(d.opts.open_after_s * 1e9) if d.opts.open_after_s > 0 else 1 << 62
        try:
            rows, used = scan_connections(d.rec.tracer, bound)
        except OSError as exc:
            d.problem("scan", f"cannot read the tracer's connection map: {exc}")
            return
        d.map_fill["conns"] = (used, d.rec.tracer._bpf[b"conns"].max_entries if d.rec.tracer._bpf else 0)
        self._open_rows = rows if d.opts.open_after_s > 0 else None

    def live(self, final: bool = False) -> None:
        from spiketrace.live import dumps, spike_json, spike_line

        d = self.d
        now_ns = time.monotonic_ns()
        if final:
            now_ns += d.explainer.grace_ns  # at stop: everything closed so far is due
        open_rows, self._open_rows = self._open_rows, None
        if time.monotonic() >= self._next_trim:  # bounded memory, whether or not spikes come
            self._next_trim = time.monotonic() + TRIM_PERIOD_S
            d.window.trim(now_ns)
        if not d.explainer.due(now_ns, open_rows, final):
            return
        shed = d.explainer.shed
        spikes = d.explainer.tick(d.meta, d.rec.path, now_ns, self.histograms(), open_rows, final)
        if d.explainer.shed > shed and not d.opts.json:
            d.output.write(f"... {d.explainer.shed - shed:,} more slow connections not explained live "
                           "(too many at once; all are recorded, `spiketrace report` explains them)")
        if d.explainer.last_error:
            d.problem("live", f"a live analysis failed ({d.explainer.last_error}); recording goes on")
        for s in spikes:
            s.client_workload = d.resolver(s.client_pid) if s.client_pid else None
            s.server_workload = d.resolver(s.server_pid) if s.server_pid else None
            if s.open:
                d.spikes_open += 1
            else:
                d.spikes_by_cause[s.cause] += 1
            if not d.opts.quiet:
                d.output.write(dumps(spike_json(s, d.meta)) if d.opts.json else spike_line(s, d.meta))
        if spikes and not d.opts.quiet:
            d.output.flush()

    def histograms(self) -> Dict[str, List]:
        """The kernel's histograms (every connection: the median), read every few seconds."""
        now = time.monotonic()
        if self._hists is None or now - self._hists_t >= HIST_PERIOD_S:
            tracer = self.d.rec.tracer
            t = time.monotonic_ns()
            cols = {"t_ns": [], "name": [], "log2_bucket": [], "count": []}
            for name, buckets in tracer.histograms().items():
                for b, c in sorted(buckets.items()):
                    cols["t_ns"].append(t)
                    cols["name"].append(name)
                    cols["log2_bucket"].append(b)
                    cols["count"].append(c)
            self._hists, self._hists_t = cols, now
        return self._hists

    # ---- bounded state ----
    def expire(self) -> None:
        from tracer.upkeep import expire_learned

        d = self.d
        try:
            out = expire_learned(d.rec.tracer)
        except OSError as exc:
            d.problem("expire", f"cannot sweep the tracer's maps: {exc}")
            return
        d.pids_expired += out["pids_cleared"]
        d.map_fill["pids_learned"] = (out["pids_learned"], _pid_capacity())
        d.map_fill["task_slots"] = (out["task_slots_used"], 65536)
        if d.resolver is not None:
            d.resolver.forget_gone()
        self.scan()  # the connection map's fill, for the metrics

    def checkpoint(self) -> None:
        d = self.d
        try:
            d.rec.checkpoint()
        except SpikeTraceError as exc:
            d.write_state("meta", str(exc))
        else:
            d.write_state("meta", None)

    def health(self) -> None:
        d = self.d
        d.write_state("rows", d.write_health()["last_error"])

    # ---- segments and SIGHUP ----
    def hangup(self) -> None:
        d = self.d
        d.output.reopen()
        d.console.print("SIGHUP: reopened the output" + (" and starting a new segment"
                                                         if d.segments is not None else ""),
                        style="dim", highlight=False)
        if d.segments is not None:
            self.rotate("SIGHUP")

    def rotate(self, why: str) -> None:
        """Close the current segment (complete) and go on in a new one, probes attached."""
        from common import rundir
        from common.meta import new_meta

        d, rec, seg = self.d, self.d.rec, self.d.segments
        new = seg.next_path()
        try:
            rundir.create_run_dir(new)
        except SpikeTraceError as exc:
            d.problem("rotate", f"cannot start a new segment ({exc}); going on in {rec.path.name}")
            return
        ended = rec.tracer.rotate(new)
        samples = rec.sampler.rotate(new)
        old, meta = rec.path, rec.meta
        fresh = new_meta("trace", scenario="trace", command=list(meta.command))
        for key in ("bcc_version", "probes", "drop_reasons", "reset_reasons", "sysctls"):
            setattr(fresh, key, copy.deepcopy(getattr(meta, key)))
        fresh.params = copy.deepcopy(meta.params)
        fresh.notes = [n for n in meta.notes if n.startswith("probe ")]
        fresh.notes.append(f"continues segment {old.name}")
        meta.status = "complete"
        meta.ended_wall = fresh.started_wall
        for table, key in rundir.COUNTED_TABLES.items():
            meta.counts[key] = rundir.table_rows(old, table)
        meta.counts.update(lost_events=ended.lost_events, connections_counted=ended.connections_counted,
                           connections_sent=ended.connections_sent, counter_samples=samples)
        meta.counts.update({f"lost_{k}": v for k, v in ended.lost_by_kind.items()})
        meta.notes.append(f"rotated ({why}): continues in {new.name}")
        try:
            rundir.write_meta(old, meta)
            rundir.write_meta(new, fresh)
        except SpikeTraceError as exc:
            d.problem("meta", f"{exc}; tracing goes on")
        rec.path, rec.meta = new, fresh
        seg.started_segment(new)
        for path in seg.prune(current=new):
            d.console.print(f"pruned {path}", style="dim", highlight=False)


def _pid_capacity() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 1 << 22
