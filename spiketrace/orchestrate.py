"""`spiketrace run`: the bench, inside its own network namespace, under the tracer.

Order matters and is kept in one place: namespace -> tracer (all probes attached: the ready
signal) -> fault injection -> server -> counter sampler -> clients. Teardown runs in reverse
through one ExitStack, on a normal end, Ctrl-C, SIGTERM or an error, so nothing is left behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from spiketrace import rundir
from spiketrace.errors import require_root


# Evidence `run` does not probe: the bench server records its own accept times
# (server.parquet t_accept), exact; probing the accept wait too would cost ~1.5% of the seed's
# throughput for nothing (benchmarks/tracer_overhead.py).
TRACER_SKIP = ("accept_wait",)


class Terminated(Exception):
    """A stop was requested (Ctrl-C or SIGTERM) before the load started."""


class StopRequest:
    """SIGINT/SIGTERM handling for the orchestrator. The first signal only sets `event`: set-up
    stops at the next stage boundary (`checkpoint`), the clients stop through `stop_event`, and
    teardown runs normally. Raising KeyboardInterrupt at an arbitrary point instead could leave
    a lock held (rich, a table writer) and hang the teardown. A second signal raises
    KeyboardInterrupt, for a user who does not want to wait.

    Libraries fork helper processes (pyroute2 does, for namespaces) that inherit the handler; in
    those it restores the default and re-raises, so it never unwinds a copied orchestrator."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.event = threading.Event()
        self.owner = os.getpid()
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.event.is_set():
            raise KeyboardInterrupt()
        self.event.set()

    def checkpoint(self) -> None:
        if self.event.is_set():
            raise Terminated()


@dataclasses.dataclass
class RunOptions:
    scenario: str = "seed"
    out: Optional[Path] = None
    runs_dir: Path = Path("runs")
    force: bool = False
    slow_conn_ms: float = 50.0
    threshold_ms: float = 100.0
    analyse: bool = True
    server: Dict[str, Any] = dataclasses.field(default_factory=dict)  # ServerOptions overrides
    client: Dict[str, Any] = dataclasses.field(default_factory=dict)  # ClientOptions overrides


@dataclasses.dataclass
class RunOutcome:
    run_dir: Path
    status: str
    transactions: int
    elapsed_s: float
    lost_events: int
    bench_elapsed_s: float = 0.0
    analysis: Any = None
    wrote: List[Path] = dataclasses.field(default_factory=list)


def build_options(opts: RunOptions):
    """Scenario defaults, then the user's explicit options on top."""
    from bench.client import ClientOptions
    from bench.server import ServerOptions
    from spiketrace.scenarios import get_scenario

    scenario = get_scenario(opts.scenario)
    server = ServerOptions(**{**scenario.server_overrides, **opts.server})
    client = ClientOptions(**{**scenario.client_overrides, **opts.client})
    client.port = server.port
    return scenario, server, client


def run(opts: RunOptions, on_progress: Optional[Callable[[int, int, int], None]] = None,
        on_stage: Optional[Callable[[str], None]] = None) -> RunOutcome:
    """Run one scenario end to end and return where its run directory is.

    on_progress(done, total, slow) is called from the client poller; on_stage(text) names each
    step of set-up and teardown for the terminal.
    """
    require_root("spiketrace run")
    stage = on_stage or (lambda text: None)
    scenario, server_opts, client_opts = build_options(opts)

    from bench.client import run_clients
    from bench.server import start_server_process
    from spiketrace.netns import Namespace, cleanup_leftovers, default_netns_name
    from tracer.counters import CounterSampler, read_tcp_sysctls
    from tracer.session import Tracer, TracerConfig

    removed = cleanup_leftovers()
    if removed:
        stage(f"removed leftovers of an earlier run: {', '.join(removed)}")

    run_path = rundir.create_run_dir(opts.out or rundir.default_run_dir(opts.runs_dir, scenario.name),
                                     force=opts.force)
    meta = rundir.new_meta("run", scenario=scenario.name)
    meta.params = {"server": dataclasses.asdict(server_opts), "client": dataclasses.asdict(client_opts),
                   "slow_conn_ms": opts.slow_conn_ms, "threshold_ms": opts.threshold_ms}
    meta.bcc_version = _bcc_version()
    rundir.write_meta(run_path, meta)

    status, started, bench_elapsed = "failed", time.monotonic(), 0.0
    stats_box: List[Any] = []  # the tracer's statistics, filled by its teardown
    stop = StopRequest()
    try:
        with stop, contextlib.ExitStack() as stack:
            stage(f"creating network namespace for scenario '{scenario.name}'")
            ns = Namespace.create(default_netns_name(scenario.name), scenario.sysctls)
            stack.callback(ns.remove)
            if ns.skipped_sysctls:
                meta.notes.append(f"sysctls this kernel lacks, not set: {', '.join(ns.skipped_sysctls)}")

            stop.checkpoint()
            stage("compiling and attaching BPF probes")
            tracer = Tracer(TracerConfig(ports=[server_opts.port], netns_inum=ns.inum,
                                         slow_conn_ms=opts.slow_conn_ms, skip=list(TRACER_SKIP)),
                            run_path)
            tracer.start()

            def stop_tracer() -> None:
                stats_box.append(tracer.stop())
                meta.counts.update({f"lost_{kind}": n for kind, n in tracer.lost_by_kind.items() if n})
            stack.callback(stop_tracer)
            meta.probes = dict(tracer.probes)
            meta.probes["listen_overflow"] = "sampled"  # the counter sampler, below
            meta.drop_reasons = {str(k): v for k, v in tracer.drop_reasons.items()}
            meta.reset_reasons = {str(k): v for k, v in tracer.reset_reasons.items()}

            stop.checkpoint()
            injection = scenario.setup(ns, run_path, port=server_opts.port)
            # teardown reads transactions.parquet (ground truth), so it runs after the clients
            stack.callback(injection.teardown)
            meta.params["injection"] = injection.params

            stop.checkpoint()
            stage("starting the echo server")
            server = start_server_process(server_opts, run_path, netns=ns.name)
            stack.callback(server.stop)
            tracer.add_pids([server.pid])
            injection.add_pids([server.pid], "server")
            meta.sysctls = read_tcp_sysctls(server.pid)
            rundir.write_meta(run_path, meta)

            sampler = CounterSampler(run_path, server.pid, [server_opts.port])
            sampler.start()
            stack.callback(sampler.stop)
            tracer.start_thread()

            def on_start(pids: List[int]) -> None:
                tracer.add_pids(pids)
                injection.add_pids(pids, "client")

            stop.checkpoint()
            stage(f"running {client_opts.n:,} transactions")
            bench_started = time.monotonic()
            progress = None
            if on_progress is not None:
                progress = lambda done, slow: on_progress(done, client_opts.n, slow)  # noqa: E731
            try:
                result = run_clients(client_opts, run_path, netns=ns.name, on_start=on_start,
                                     on_progress=progress, stop_event=stop.event)
                stopped = result.stopped or result.interrupted or stop.event.is_set()
                status = "interrupted" if stopped else "complete"
            finally:
                bench_elapsed = time.monotonic() - bench_started
                stage("stopping and draining")
                meta.notes.extend(injection.notes)
    except (KeyboardInterrupt, Terminated):
        status = "interrupted"
    finally:
        meta = _finish_meta(run_path, meta, status, stats_box[0] if stats_box else None)
    outcome = RunOutcome(run_dir=run_path, status=status, elapsed_s=time.monotonic() - started,
                         transactions=int(meta.counts.get("transactions", 0)),
                         lost_events=meta.lost_events, bench_elapsed_s=bench_elapsed)
    return outcome


def _finish_meta(run_path: Path, meta: rundir.RunMeta, status: str, stats) -> rundir.RunMeta:
    """Record the end of the run; counts come from the tables on disk, so they are true even
    after an interrupt."""
    import datetime as dt

    meta.status = status
    meta.ended_wall = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    run = rundir.RunDir(path=run_path, meta=meta)
    meta.counts["transactions"] = _rows(run, "transactions")
    meta.counts["server_connections"] = _rows(run, "server")
    meta.counts["events"] = _rows(run, "events")
    if stats is not None:
        meta.counts["lost_events"] = int(stats.lost_events)
        meta.counts["connections_counted"] = int(stats.connections_counted)
        meta.counts["connections_sent"] = int(stats.connections_sent)
    else:
        meta.notes.append("the tracer did not report its statistics (it did not start or was interrupted)")
    rundir.write_meta(run_path, meta)
    return meta


def _rows(run: rundir.RunDir, table: str) -> int:
    import pyarrow.parquet as pq

    target = run.path / f"{table}.parquet"
    if not target.is_dir():
        return 0
    return sum(pq.ParquetFile(p).metadata.num_rows for p in target.glob("*.parquet"))


def _bcc_version() -> str:
    try:
        import bcc
    except ImportError:
        return ""
    return str(getattr(bcc, "__version__", ""))
