"""One recording into a run directory: the lifecycle `spiketrace run`, `spiketrace trace` and
`spiketrace bench client` share.

    with Recording.create(out, kind="trace", scenario="trace", force=force) as rec:
        rec.meta.params.trace = ...
        tracer = rec.start_tracer(config)          # every probe attached: the ready signal
        rec.start_sampler(netns_ref, ports)        # counters.parquet
        rec.ready()                                # from here on, the recording is kept
        ...                                        # the workload; rec.checkpoint() now and then
        rec.status = "complete"
    rec.meta                                       # final counts, written to meta.json

On leaving the block, in reverse order of start: the sampler stops (its last full sample), the
tracer drains, flushes and detaches, the tables' rows are counted from disk, the tracer's lost
evidence (one computation: `Tracer.stats`) goes into the counts, and meta.json is written with
the status: the one set, else `interrupted` (KeyboardInterrupt, or a stop request) or `failed`.

A failed start (an exception before `ready()`, or a failure before any row reached the disk)
leaves no half-made run directory: one this recording created is removed; one that existed
(`--force`) keeps a meta.json marked `failed` with the error as a note. The error itself
propagates unchanged (a SpikeTraceError is one line).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from common import rundir
from common.errors import SpikeTraceError
from common.meta import Meta, new_meta, now_wall
from common.rundir import COUNTED_TABLES  # table -> meta.json counts key


class Recording:
    """See the module docstring. Create with `Recording.create`."""

    def __init__(self, path: Path, meta: Meta, created: bool):
        self.path = path
        self.meta = meta
        self.created = created  # this recording made the directory (removed on a failed start)
        self.status: Optional[str] = None  # set by the caller: complete, interrupted, failed
        self.is_ready = False
        self.tracer = None
        self.sampler = None
        self._stack = contextlib.ExitStack()

    @classmethod
    def create(cls, out: Optional[os.PathLike], kind: str, scenario: str, force: bool = False,
               runs_dir: os.PathLike = "runs", keep: Sequence[str] = ()) -> "Recording":
        """Make the run directory (`out`, else runs/<UTC time>-<scenario>) and its meta.json
        (`force`, `keep`: see common.rundir.create_run_dir)."""
        path = Path(out) if out is not None else rundir.default_run_dir(runs_dir, scenario)
        created = not path.exists()
        path = rundir.create_run_dir(path, force=force, keep=keep)
        meta = new_meta(kind, scenario=scenario)
        rec = cls(path, meta, created)
        rundir.write_meta(path, meta)
        return rec

    # ---- parts ----
    def start_tracer(self, config, on_event: Optional[Callable[[dict], None]] = None):
        """Compile and attach every probe (returns once all are attached) and start consuming;
        the probes, their notes and this kernel's reason names go into meta.json."""
        from tracer.session import Tracer

        tracer = Tracer(config, self.path, on_event=on_event)
        tracer.start()
        self.tracer = tracer
        self._stack.callback(self._stop_tracer)
        self.meta.params.tracer = config
        self.meta.probes = dict(tracer.probes)
        self.meta.drop_reasons = {str(k): v for k, v in tracer.drop_reasons.items()}
        self.meta.reset_reasons = {str(k): v for k, v in tracer.reset_reasons.items()}
        self.meta.notes.extend(f"probe {note}" for note in tracer.notes)
        return tracer

    def start_sampler(self, netns_ref, ports: List[int], flush_interval_s: float = 5.0):
        """Sample the namespace's TCP counters, TIME_WAIT census and listener queues."""
        from tracer.counters import CounterSampler, read_tcp_sysctls

        self.meta.sysctls = read_tcp_sysctls(netns_ref)
        sampler = CounterSampler(self.path, netns_ref, ports, flush_interval_s=flush_interval_s)
        sampler.start()
        self.sampler = sampler
        self._stack.callback(self._stop_sampler)
        self.meta.params.counter_hz = sampler.hz
        self.meta.probes["listen_overflow"] = self.meta.probes.get("listen_overflow", "sampled")
        return sampler

    def callback(self, fn: Callable[[], Any]) -> None:
        """Run `fn` at the end, before the parts started so far are stopped (LIFO)."""
        self._stack.callback(fn)

    def ready(self) -> None:
        """Everything is attached and the workload may start: from now on the directory is kept
        whatever happens."""
        if self.tracer is not None:
            self.tracer.start_thread()
        self.is_ready = True
        rundir.write_meta(self.path, self.meta)

    # ---- while recording ----
    def checkpoint(self) -> None:
        """meta.json with the counts so far (a long trace's reader sees progress)."""
        self._count(final=False)
        rundir.write_meta(self.path, self.meta)

    def tracer_stats(self):
        return self.tracer.stats() if self.tracer is not None else None

    # ---- the end ----
    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and (not self.is_ready or self._recorded_nothing(exc_type)):
            self._abandon(exc)
            return
        if self.status is None:
            if exc_type is None:
                self.status = "complete"
            elif issubclass(exc_type, (KeyboardInterrupt, StopRequested)):
                self.status = "interrupted"
            else:
                self.status = "failed"
                self.meta.notes.append(f"failed: {exc}")
        self.finish()

    def finish(self) -> Meta:
        """Stop what runs, count what is on disk, write meta.json. Idempotent."""
        try:
            self._stack.close()
        finally:
            self.meta.status = self.status or "complete"  # type: ignore[assignment]
            self.meta.ended_wall = now_wall()
            self._count(final=True)
            rundir.write_meta(self.path, self.meta)
        return self.meta

    def _recorded_nothing(self, exc_type) -> bool:
        """A failure (not an interrupt) before any row reached the disk is a failed start too
        (e.g. the clients never reached the server)."""
        if issubclass(exc_type, (KeyboardInterrupt, StopRequested)):
            return False
        self._stack.close()  # flush what the parts hold before deciding
        return not any(rundir.table_rows(self.path, t) for t in rundir.SCHEMAS)

    def _abandon(self, exc: BaseException) -> None:
        """A failed start: stop what was started, then remove the directory we made, or mark an
        existing one failed."""
        with contextlib.suppress(Exception):
            self._stack.close()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        self.meta.status = "failed"
        self.meta.ended_wall = now_wall()
        self.meta.notes.append(f"failed to start: {exc}")
        with contextlib.suppress(SpikeTraceError):
            rundir.write_meta(self.path, self.meta)

    def _stop_tracer(self) -> None:
        stats = self.tracer.stop()  # drain, flush, detach: before anything else can fail
        self._tracer_counts(stats)

    def _stop_sampler(self) -> None:
        self.meta.counts["counter_samples"] = self.sampler.stop()
        if self.sampler.errors:
            self.meta.notes.append(f"counter sampler: {self.sampler.errors} failed samples "
                                   f"(first: {self.sampler.first_error})")

    def _tracer_counts(self, stats) -> None:
        counts = self.meta.counts
        for key in [k for k in counts if k.startswith("lost_") and k != "lost_events"]:
            del counts[key]
        counts["lost_events"] = int(stats.lost_events)
        counts.update({f"lost_{kind}": int(n) for kind, n in stats.lost_by_kind.items()})
        counts["connections_counted"] = int(stats.connections_counted)
        counts["connections_sent"] = int(stats.connections_sent)

    def _count(self, final: bool) -> None:
        for table, key in COUNTED_TABLES.items():
            self.meta.counts[key] = rundir.table_rows(self.path, table)
        if not final and self.tracer is not None:
            stats = self.tracer.stats()
            if stats is not None:
                self._tracer_counts(stats)
        if final and self.tracer is None and self.meta.kind != "bench":
            self.meta.notes.append("the tracer did not start: no kernel evidence was recorded")


class StopRequested(Exception):
    """A stop was requested (Ctrl-C or SIGTERM) before the workload started."""
