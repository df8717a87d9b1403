"""Scenario and Injection: what a scenario is (data) and what its setup returns (a handle)."""
from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional

from common import leftovers

if TYPE_CHECKING:
    from common.netns import Namespace

GT_COLUMNS = ("t_ns", "kind", "saddr", "sport", "daddr", "dport", "detail")


def gt_row(t_ns: int, kind: str, detail: str, saddr: str = "", sport: int = 0,
           daddr: str = "", dport: int = 0) -> Dict[str, Any]:
    """One ground_truth row. `s` is always the client side of the affected connection;
    sport 0 means "every connection" (a fault injected by configuration)."""
    return {"t_ns": int(t_ns), "kind": kind, "saddr": saddr, "sport": int(sport),
            "daddr": daddr, "dport": int(dport), "detail": detail}


def write_ground_truth(run_dir: os.PathLike, rows: List[Dict[str, Any]]) -> Path:
    """Write `ground_truth.parquet` (replacing it); an empty table means "nothing injected"."""
    import pyarrow as pa

    from common.rundir import SCHEMAS, write_table

    schema = SCHEMAS["ground_truth"]
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["t_ns"]), schema=schema)
    write_table(run_dir, "ground_truth", table)
    return Path(run_dir) / "ground_truth.parquet"


def read_transactions(run_dir: os.PathLike, columns: List[str]):
    """The run's transactions table (those columns), or None if the clients wrote none."""
    from common.rundir import RunDir, Meta

    run = RunDir(path=Path(run_dir), meta=Meta())
    if not run.has("transactions"):
        return None
    return run.table("transactions", columns=columns)


class Injection:
    """What `Scenario.setup` installed. Call `add_pids` with the bench processes once they
    exist, and `teardown()` in a `finally` after the load is over: it removes everything that
    was installed and writes `ground_truth.parquet`. Idempotent.

    Attributes for the orchestrator: `cgroup` (a cgroup v2 path the clients were put in, or
    None), `params` (what was injected, for meta.json), `notes` (remarks for meta.json)."""

    def __init__(self, scenario: "Scenario", ns: "Namespace", run_dir: Path,
                 port: int, params: Dict[str, Any]):
        self.scenario = scenario
        self.ns = ns
        self.run_dir = Path(run_dir)
        self.port = port
        self.params: Dict[str, Any] = {"scenario": scenario.name, **params}
        self.notes: List[str] = []
        self.cgroup: Optional[str] = None
        self.ground_truth_rows: Optional[List[Dict[str, Any]]] = None
        self._pid_records: List[dict] = []
        self._lock = threading.Lock()
        self._done = False

    initial_rto_ms: Optional[float] = None  # the initial SYN RTO the injection imposes, if any

    def describe(self):
        """What was injected, for meta.json (`params.scenario`)."""
        from common.meta import ScenarioParams

        settings = {k: v for k, v in self.params.items() if k != "scenario"}
        return ScenarioParams(name=self.scenario.name, initial_rto_ms=self.initial_rto_ms,
                              settings=settings)

    # -- hooks for subclasses ------------------------------------------------------------------
    def install(self) -> None:
        """Install the fault (called by `Scenario.setup`)."""

    def on_pids(self, pids: List[int], role: str) -> None:
        """React to new bench processes (pin them, move them to a cgroup...)."""

    def collect(self) -> List[Dict[str, Any]]:
        """The ground-truth rows (called once by teardown, before `uninstall`)."""
        return []

    def uninstall(self) -> None:
        """Remove what `install` installed; must not raise for things already gone."""

    # -- public --------------------------------------------------------------------------------
    def add_pids(self, pids: Iterable[int], role: str = "client") -> None:
        """Tell the injection about bench processes (`role`: "client" or "server"). They are
        recorded in the state file so `spiketrace cleanup` can kill them after a crash."""
        pids = [int(p) for p in pids]
        with self._lock:
            self._pid_records += leftovers.track_pids(pids, role)
        self.on_pids(pids, role)

    def teardown(self) -> int:
        """Remove the injection and write ground_truth.parquet; returns the number of rows."""
        with self._lock:
            if self._done:
                return len(self.ground_truth_rows or [])
            self._done = True
        try:
            rows = self.collect()
        finally:
            self.uninstall()
            gone = [r for r in self._pid_records
                    if not leftovers.same_process(r["pid"], r["starttime"])]
            leftovers.untrack_pids(gone)
        self.ground_truth_rows = rows
        write_ground_truth(self.run_dir, rows)
        return len(rows)

    def __enter__(self) -> "Injection":
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()


@dataclasses.dataclass
class Scenario:
    """A reproducible spike: namespace sysctls, bench option overrides, an injector, and the
    cause the analysis is expected to name (`expected_cause`, one of the cause names)."""

    name: str
    description: str
    injects: str
    expected_cause: str
    expected_detail: str = ""
    sysctls: Dict[str, str] = dataclasses.field(default_factory=dict)
    server_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    client_overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)  # injector defaults
    injection_class: Callable[..., Injection] = Injection
    # transactions when `run -n` is not given: chosen so that the run takes about a minute on
    # a 2-core VM and shows the scenario's spikes (`spiketrace scenarios` suggests it)
    n: int = 20_000
    # the spike rule the scenario needs (`threshold_ms`, `relative`), unless the user gives one
    analysis: Dict[str, float] = dataclasses.field(default_factory=dict)
    # said when a run of this scenario had no spike: why, and what to run instead
    no_spike_hint: str = ""

    def suggested_command(self) -> str:
        """The command that shows this scenario's spikes explained in about a minute."""
        scenario = "" if self.name == "seed" else f" --scenario {self.name}"
        return f"sudo spiketrace run{scenario} -n {self.n}"

    def setup(self, ns: "Namespace", run_dir: os.PathLike, port: Optional[int] = None,
              **params: Any) -> Injection:
        """Install this scenario's fault in `ns` for a server on `port` (default: the port of
        `server_overrides`, else 9999). `params` override the injector defaults (`self.params`).
        Returns the Injection; call its `teardown()` in a finally."""
        unknown = set(params) - set(self.params)
        if unknown:
            from common.errors import SpikeTraceError

            raise SpikeTraceError(
                f"scenario {self.name} has no parameter {', '.join(sorted(unknown))} "
                f"(it takes: {', '.join(sorted(self.params)) or 'none'})")
        if port is None:
            port = int(self.server_overrides.get("port", 9999))
        inj = self.injection_class(self, ns, Path(run_dir), int(port), {**self.params, **params})
        try:
            inj.install()
        except BaseException:
            inj.uninstall()
            raise
        return inj
