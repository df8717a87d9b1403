"""`spiketrace run`: the bench, inside its own network namespace, under the tracer.

Order matters and is kept in one place: namespace -> tracer (all probes attached) -> fault
injection -> server -> counter sampler -> ready -> clients. Teardown runs in reverse through the
recording (spiketrace.recording), on a normal end, Ctrl-C, SIGTERM or an error, so nothing is
left behind and meta.json ends with the true counts.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from spiketrace.recording import Recording, StopRequested


# Evidence `run` does not probe: the bench server records its own accept times and phases
# (server.parquet t_accept, t_request*, t_reply*), exact; probing the conversation too would cost
# throughput for nothing (benchmarks/tracer_overhead.py). The accept wait is timed by the kernel
# only where a function probe does it once per accept (inet_csk_accept: fexit or kretprobe), not
# with the fallbacks that run at every read or syscall (tracer.probes.plan function_only).
TRACER_SKIP = ("conn_life",)
TRACER_FUNCTION_ONLY = ("accept_wait",)


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
            raise StopRequested()


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
    from common.errors import SpikeTraceError
    from spiketrace.scenarios import get_scenario

    scenario = get_scenario(opts.scenario)
    try:
        server = ServerOptions(**{**scenario.server_overrides, **opts.server})
        client = ClientOptions(**{"n": scenario.n, **scenario.client_overrides, **opts.client})
    except TypeError as exc:  # an option name the bench does not have (library callers)
        raise SpikeTraceError(f"bad bench option: {exc}") from None
    client.port = server.port
    return scenario, server, client


def check_options(opts: RunOptions):
    """Every option of a run checked, before anything is set up (no namespace, no BPF, no run
    directory for a bad value). Returns (scenario, server options, client options)."""
    from common.text import check_range

    scenario, server, client = build_options(opts)
    server.validate()
    client.validate()
    check_range(opts.threshold_ms, "--threshold", 0.0, 86_400_000.0, unit="ms")
    check_range(opts.slow_conn_ms, "slow_conn_ms", 0.0, 3_600_000.0, lo_open=True, unit="ms")
    return scenario, server, client


def run(opts: RunOptions, on_progress: Optional[Callable[[int, int, int], None]] = None,
        on_stage: Optional[Callable[[str], None]] = None) -> RunOutcome:
    """Run one scenario end to end and return where its run directory is.

    on_progress(done, total, slow) is called from the client poller; on_stage(text) names each
    step of set-up and teardown for the terminal.
    """
    from tracer.host import require_tracing

    scenario, server_opts, client_opts = check_options(opts)
    require_tracing("spiketrace run")
    stage = on_stage or (lambda text: None)

    from bench.client import run_clients
    from bench.server import start_server_process
    from common.leftovers import cleanup_leftovers
    from common.netns import Namespace, default_netns_name
    from tracer.session import TracerConfig

    removed = cleanup_leftovers()
    if removed:
        stage(f"removed leftovers of an earlier run: {', '.join(removed)}")

    started, bench_elapsed = time.monotonic(), 0.0
    stop = StopRequest()
    rec = Recording.create(opts.out, kind="run", scenario=scenario.name, force=opts.force,
                           runs_dir=opts.runs_dir)
    meta = rec.meta
    meta.params.server, meta.params.client = server_opts, client_opts
    meta.params.threshold_ms = opts.threshold_ms
    meta.bcc_version = bcc_version()
    with stop, rec:
        stage(f"creating network namespace for scenario '{scenario.name}'")
        ns = Namespace.create(default_netns_name(scenario.name), scenario.sysctls)
        rec.callback(ns.remove)
        if ns.skipped_sysctls:
            meta.notes.append(f"sysctls this kernel lacks, not set: {', '.join(ns.skipped_sysctls)}")

        stop.checkpoint()
        stage("compiling and attaching BPF probes")
        tracer = rec.start_tracer(TracerConfig(ports=[server_opts.port], netns_inum=ns.inum,
                                               slow_conn_ms=opts.slow_conn_ms, skip=list(TRACER_SKIP),
                                               function_only=list(TRACER_FUNCTION_ONLY)))

        stop.checkpoint()
        injection = scenario.setup(ns, rec.path, port=server_opts.port)
        # teardown reads transactions.parquet (ground truth), so it runs after the clients
        rec.callback(injection.teardown)
        meta.params.scenario = injection.describe()

        stop.checkpoint()
        stage("starting the echo server")
        server = start_server_process(server_opts, rec.path, netns=ns.name)
        rec.callback(server.stop)
        tracer.add_pids([server.pid])
        injection.add_pids([server.pid], "server")
        rec.start_sampler(server.pid, [server_opts.port])
        rec.callback(lambda: meta.notes.extend(injection.notes))

        def on_start(pids: List[int]) -> None:
            tracer.add_pids(pids)
            injection.add_pids(pids, "client")

        stop.checkpoint()
        rec.ready()
        stage(f"running {client_opts.n:,} transactions")
        bench_started = time.monotonic()
        progress = None
        if on_progress is not None:
            progress = lambda done, slow: on_progress(done, client_opts.n, slow)  # noqa: E731
        try:
            result = run_clients(client_opts, rec.path, netns=ns.name, on_start=on_start,
                                 on_progress=progress, stop_event=stop.event)
            stopped = result.stopped or result.interrupted or stop.event.is_set()
            rec.status = "interrupted" if stopped else "complete"
        finally:
            bench_elapsed = time.monotonic() - bench_started
            meta.params.bench_elapsed_s = bench_elapsed
            stage("stopping and draining")
    return RunOutcome(run_dir=rec.path, status=meta.status, elapsed_s=time.monotonic() - started,
                      transactions=int(meta.counts.get("transactions", 0)),
                      lost_events=meta.lost_events, bench_elapsed_s=bench_elapsed)


def bcc_version() -> str:
    try:
        import bcc
    except ImportError:
        return ""
    return str(getattr(bcc, "__version__", ""))
