"""`meta.json`: a run's metadata as typed, versioned dataclasses.

Every key has one type and one place: the bench's options are `ServerParams` / `ClientParams`
(bench.server.ServerOptions and bench.client.ClientOptions extend them), the tracer's
`TracerParams` (tracer.session.TracerConfig extends it), the trace daemon's `TraceParams`, a
scenario's `ScenarioParams`. Readers take `meta.params.server.backlog`, never a key found "at
any depth". `Meta.from_dict` validates types (pydantic) and migrates older formats, so a
damaged or hand-edited meta.json gives one clear line, never a traceback.

Format versions: 1 (round one: `params` a free-form dict per command), 2 (typed `Params`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from typing import Any, Dict, List, Literal, Optional

from common.errors import SpikeTraceError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

RunKind = Literal["bench", "run", "trace"]
RunStatus = Literal["running", "complete", "interrupted", "failed"]


@dataclasses.dataclass
class ServerParams:
    """The bench echo server (`bench server`, and the server `spiketrace run` starts)."""

    host: str = "127.0.0.1"
    port: int = 9999  # 0 = any free port
    backlog: int = 1
    linger: bool = True  # SO_LINGER {1, 0} on the listening socket, as the original
    model: str = "blocking"
    think_ms: float = 0.0  # sleep before each accept()
    payload: int = 3000  # request size; must match the client's
    threads: int = 4  # for model "threaded"
    duration_s: Optional[float] = None  # stop after this long (None = until stopped)
    flush_interval_s: float = 1.0  # records reach disk at least this often (a SIGKILL loses less)


@dataclasses.dataclass
class ClientParams:
    """The bench load generator (`bench client`, and the clients of `spiketrace run`)."""

    host: str = "127.0.0.1"
    port: int = 9999
    n: int = 1_000_000
    concurrency: int = 1
    payload: int = 3000
    rate: Optional[float] = None  # transactions/s over all workers (open loop), None = closed
    connect_retry: str = "busy"
    nodelay: bool = False
    split_writes: bool = False
    connect_timeout_s: float = 10.0
    chunk_rows: int = 32768  # rows per Parquet part (per worker), at most
    flush_interval_s: float = 1.0  # records reach disk at least this often (a SIGKILL loses less)


@dataclasses.dataclass
class TracerParams:
    """What the BPF tracer was told to trace and the thresholds of what it sends in detail."""

    ports: List[int] = dataclasses.field(default_factory=list)
    pids: List[int] = dataclasses.field(default_factory=list)
    cgroup: Optional[str] = None
    netns_inum: int = 0
    slow_conn_ms: float = 50.0
    runq_threshold_ms: float = 5.0
    accept_wait_threshold_ms: float = 5.0
    all_events: bool = False
    ringbuf_pages: int = 1024
    # evidence not probed (tracer.probes.EVIDENCE_NAMES): `spiketrace run` skips conn_life, its
    # bench logs each exchange itself
    skip: List[str] = dataclasses.field(default_factory=list)
    # evidence probed only by a function probe (fentry/fexit, kprobe/kretprobe: one run per call),
    # skipped where only a fallback run at every read or syscall exists: `spiketrace run` times
    # accept() where the kernel has a probe on inet_csk_accept (its bench server logs its own
    # accept times too), and does not pay a probe run per read where it has none
    function_only: List[str] = dataclasses.field(default_factory=list)
    # time accept() itself also where only the accept syscalls' exit can (no kprobe, no fentry):
    # exact, but while it is attached every syscall of every process takes the slow path
    exact_accept: bool = False


@dataclasses.dataclass
class TraceParams:
    """The trace daemon's own options (the tracer's are in `Params.tracer`)."""

    netns: Optional[str] = None
    cgroup: Optional[str] = None
    duration_s: Optional[float] = None
    flush_interval_s: float = 30.0


@dataclasses.dataclass
class ScenarioParams:
    """What a scenario injected (`spiketrace run --scenario`). `settings` holds the injector's
    options and what it measured (documented per scenario in `spiketrace scenarios`);
    `initial_rto_ms` is the initial SYN RTO it imposed, if it changed it (legacy-rto)."""

    name: str = "seed"
    initial_rto_ms: Optional[float] = None
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Params:
    """The options a run was made with, by who made it: a part is None when that part did not
    run (a trace has no bench server, a bench run no tracer)."""

    server: Optional[ServerParams] = None
    client: Optional[ClientParams] = None
    tracer: Optional[TracerParams] = None
    trace: Optional[TraceParams] = None
    scenario: Optional[ScenarioParams] = None
    threshold_ms: Optional[float] = None  # the spike threshold the command was given
    counter_hz: Optional[float] = None  # counter sampling rate (None: not sampled)
    bench_elapsed_s: Optional[float] = None  # the clients' time from "go" to their last end


@dataclasses.dataclass
class Meta:
    """`meta.json`. Unknown top-level keys from a newer minor writer land in `extra`."""

    format_version: int = FORMAT_VERSION
    tool_version: str = ""
    command: List[str] = dataclasses.field(default_factory=list)
    kind: RunKind = "bench"
    status: RunStatus = "running"
    scenario: str = "seed"
    kernel: str = ""
    distro: str = ""
    bcc_version: str = ""
    hz: int = 0
    started_wall: str = ""
    ended_wall: str = ""
    # one anchor pair taken at the same instant: wall = clock_wall_ns + (t_ns - clock_monotonic_ns)
    clock_monotonic_ns: int = 0
    clock_wall_ns: int = 0
    probes: Dict[str, str] = dataclasses.field(default_factory=dict)  # evidence -> backend
    # this kernel's enum names for events.reason (the enums change between kernel versions)
    drop_reasons: Dict[str, str] = dataclasses.field(default_factory=dict)  # skb drop reason
    reset_reasons: Dict[str, str] = dataclasses.field(default_factory=dict)  # sk_rst_reason
    sysctls: Dict[str, str] = dataclasses.field(default_factory=dict)
    params: Params = dataclasses.field(default_factory=Params)
    counts: Dict[str, int] = dataclasses.field(default_factory=dict)  # incl. lost_events
    notes: List[str] = dataclasses.field(default_factory=list)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def lost_events(self) -> int:
        return int(self.counts.get("lost_events", 0))

    def wall_time(self, t_ns: int) -> _dt.datetime:
        """The UTC wall-clock time of a monotonic timestamp of this run."""
        wall = self.clock_wall_ns + (int(t_ns) - self.clock_monotonic_ns)
        return _dt.datetime.fromtimestamp(wall / 1e9, tz=_dt.timezone.utc)

    def reason_names(self, kind: str) -> Dict[int, str]:
        """Drop (`drop`) or reset (`reset`) reason code -> this kernel's name."""
        table = self.drop_reasons if kind == "drop" else self.reset_reasons
        out = {}
        for key, value in table.items():
            try:
                out[int(key)] = str(value)
            except ValueError:
                continue
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "meta.json") -> "Meta":
        """Validate and migrate a decoded meta.json; one SpikeTraceError naming the first bad key."""
        if not isinstance(data, dict):
            raise SpikeTraceError(f"{source}: not a JSON object (is this a spiketrace run directory?)")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise SpikeTraceError(f"{source}: no format_version; not a spiketrace run directory")
        if version > FORMAT_VERSION:
            raise SpikeTraceError(f"{source}: format version {version} is newer than this spiketrace "
                                  f"reads ({FORMAT_VERSION}); upgrade spiketrace")
        if version not in READABLE_VERSIONS:
            raise SpikeTraceError(f"{source}: format version {version} is not one this spiketrace reads "
                                  f"({', '.join(map(str, READABLE_VERSIONS))})")
        data = dict(data)
        if version == 1:
            data["params"] = _params_from_v1(data.get("params"), data.get("scenario"), source)
        names = {f.name for f in dataclasses.fields(cls)}
        extra = data.pop("extra", None)
        extra = dict(extra) if isinstance(extra, dict) else {}
        extra.update({k: data.pop(k) for k in list(data) if k not in names})
        meta = _validate(cls, data, source)
        meta.extra = extra
        return meta

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format_version"] = FORMAT_VERSION
        return out


def _validate(cls, data: Dict[str, Any], source: str):
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SpikeTraceError(f"{source}: {where}: {first['msg'].lower()}, got "
                              f"{_short(first.get('input'))}{more}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _known(cls, values: Any) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names} if isinstance(values, dict) else {}


def _params_from_v1(params: Any, scenario: Any, source: str) -> Dict[str, Any]:
    """Format 1 wrote `params` as a dict per command: bench {server, client{elapsed_s}}, run
    {server, client, slow_conn_ms, threshold_ms, injection{scenario, ...}}, trace {tracer,
    netns, cgroup, duration_s, threshold_ms, flush_interval_s}."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise SpikeTraceError(f"{source}: params: expected an object, got {_short(params)}")
    out: Dict[str, Any] = {}
    if isinstance(params.get("server"), dict):
        out["server"] = _known(ServerParams, params["server"])
    if isinstance(params.get("client"), dict):
        out["client"] = _known(ClientParams, params["client"])
        if params["client"].get("elapsed_s") is not None:
            out["bench_elapsed_s"] = params["client"]["elapsed_s"]
    if isinstance(params.get("tracer"), dict):
        out["tracer"] = _known(TracerParams, params["tracer"])
    elif params.get("slow_conn_ms") is not None:
        out["tracer"] = {"slow_conn_ms": params["slow_conn_ms"]}
    if "flush_interval_s" in params or "netns" in params:
        out["trace"] = _known(TraceParams, params)
    if isinstance(params.get("injection"), dict):
        settings = dict(params["injection"])
        name = settings.pop("scenario", scenario or "seed")
        rto = settings.get("rto_ms") if name == "legacy-rto" else None
        out["scenario"] = {"name": name, "initial_rto_ms": rto, "settings": settings}
    if params.get("threshold_ms") is not None:
        out["threshold_ms"] = params["threshold_ms"]
    return out


def new_meta(kind: str, scenario: str = "seed", command: Optional[List[str]] = None) -> Meta:
    """A `Meta` filled with what is known at start: versions, kernel, clock anchor."""
    import platform
    import sys

    from common import __version__

    mono, wall = time.monotonic_ns(), time.time_ns()
    return Meta(
        tool_version=__version__,
        command=list(command if command is not None else sys.argv),
        kind=kind,  # type: ignore[arg-type]
        scenario=scenario,
        kernel=platform.release(),
        distro=_distro(),
        hz=kernel_hz(),
        started_wall=now_wall(),
        clock_monotonic_ns=mono,
        clock_wall_ns=wall,
    )


def now_wall() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _distro() -> str:
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def kernel_hz() -> int:
    """CONFIG_HZ of the running kernel, from /proc/config.gz or /boot/config-*, else 0."""
    import gzip
    import platform

    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as fh:
                for line in fh:
                    if line.startswith("CONFIG_HZ="):
                        return int(line.split("=", 1)[1])
        except OSError:
            continue
    return 0
