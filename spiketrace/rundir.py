"""The run directory: one documented format (docs/run-directory.md), one writer, one reader.

A run directory holds `meta.json` and tables. Each table `<name>.parquet` is a *directory* of
Parquet part files written atomically (`.tmp` then rename) as the run goes, so memory stays
flat and a run that is interrupted, even by SIGKILL, keeps every part it flushed. pandas and
pyarrow read such a directory as one table (`pandas.read_parquet("transactions.parquet")`).

All timestamps are CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()` == `bpf_ktime_get_ns()`);
0 means "this phase was not reached".
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from spiketrace.errors import SpikeTraceError

FORMAT_VERSION = 1

_i64, _i32, _str = pa.int64(), pa.int32(), pa.string()

# Table name -> schema. docs/run-directory.md documents every column; tests check they agree.
SCHEMAS: Dict[str, pa.Schema] = {
    "transactions": pa.schema([
        ("id", _i64), ("worker", _i32), ("pid", _i32),
        ("local_addr", _str), ("local_port", _i32), ("remote_addr", _str), ("remote_port", _i32),
        ("t_start", _i64), ("t_connected", _i64), ("t_reply1", _i64), ("t_reply2", _i64),
        ("t_end", _i64), ("connect_attempts", _i32), ("last_errno", _i32), ("outcome", _str),
    ]),
    "server": pa.schema([
        ("conn_id", _i64), ("worker", _i32), ("pid", _i32),
        ("peer_addr", _str), ("peer_port", _i32), ("local_port", _i32),
        ("t_accept", _i64), ("t_request1", _i64), ("t_reply1", _i64), ("t_request2", _i64),
        ("t_reply2", _i64), ("t_eof", _i64), ("t_close", _i64), ("bytes_in", _i64),
        ("outcome", _str),
    ]),
    "events": pa.schema([
        ("t_ns", _i64), ("kind", _str), ("pid", _i32), ("comm", _str), ("netns", pa.uint32()),
        ("saddr", _str), ("sport", _i32), ("daddr", _str), ("dport", _i32),
        ("state", _i32), ("new_state", _i32), ("reason", _i32), ("value", _i64), ("value2", _i64),
    ]),
    "connections": pa.schema([
        ("netns", pa.uint32()), ("role", _str), ("pid", _i32), ("comm", _str),
        ("saddr", _str), ("sport", _i32), ("daddr", _str), ("dport", _i32),
        ("t_open", _i64), ("t_established", _i64), ("t_first_data", _i64), ("t_close", _i64),
        ("syn_retrans", _i32), ("retrans", _i32), ("resets", _i32), ("flags", _i32),
    ]),
    "histograms": pa.schema([
        ("t_ns", _i64), ("name", _str), ("log2_bucket", _i32), ("count", _i64),
    ]),
    "counters": pa.schema([("t_ns", _i64), ("name", _str), ("value", _i64)]),
    "ground_truth": pa.schema([
        ("t_ns", _i64), ("kind", _str), ("saddr", _str), ("sport", _i32),
        ("daddr", _str), ("dport", _i32), ("detail", _str),
    ]),
    # analysis output: one row per slow transaction (docs/reports.md)
    "explanations": pa.schema([
        ("txn_id", _i64), ("worker", _i32), ("pid", _i32), ("local_port", _i32),
        ("t_start", _i64), ("latency_ns", _i64), ("outcome", _str),
        ("cause", _str), ("cause_detail", _str), ("causes", _str),
        ("syn_retransmit_ns", _i64), ("synack_retransmit_ns", _i64), ("data_retransmit_ns", _i64),
        ("port_exhaustion_ns", _i64), ("reset_ns", _i64), ("runq_delay_ns", _i64),
        ("accept_queue_wait_ns", _i64), ("delayed_ack_ns", _i64),
        ("explained_ns", _i64), ("rest_ns", _i64), ("inferred", pa.bool_()),
        ("sentence", _str), ("evidence_events", pa.list_(_i64)), ("server_conn", _i64),
        ("source", _str), ("match", _str), ("match_distance_ns", _i64),
    ]),
}

TABLE_NAMES = tuple(SCHEMAS)


@dataclasses.dataclass
class RunMeta:
    """`meta.json`, as a dataclass. Unknown keys from newer minor writers land in `extra`."""

    format_version: int = FORMAT_VERSION
    tool_version: str = ""
    command: List[str] = dataclasses.field(default_factory=list)
    kind: str = "bench"  # bench | run | trace
    status: str = "running"  # running | complete | interrupted | failed
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
    probes: Dict[str, str] = dataclasses.field(default_factory=dict)  # probe -> backend
    # this kernel's enum names for events.reason (the enums change between kernel versions)
    drop_reasons: Dict[str, str] = dataclasses.field(default_factory=dict)  # skb drop reason
    reset_reasons: Dict[str, str] = dataclasses.field(default_factory=dict)  # sk_rst_reason
    sysctls: Dict[str, str] = dataclasses.field(default_factory=dict)
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)  # bench/tracer options
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

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunMeta":
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = dict(data.get("extra", {}))
        extra.update({k: v for k, v in data.items() if k not in names})
        return cls(**known, extra=extra)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def new_meta(kind: str, scenario: str = "seed", command: Optional[List[str]] = None) -> RunMeta:
    """A `RunMeta` filled with what is known at start: versions, kernel, clock anchor."""
    import platform
    import sys

    from spiketrace import __version__

    mono, wall = time.monotonic_ns(), time.time_ns()
    return RunMeta(
        tool_version=__version__,
        command=list(command if command is not None else sys.argv),
        kind=kind,
        scenario=scenario,
        kernel=platform.release(),
        distro=_distro(),
        hz=_kernel_hz(),
        started_wall=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        clock_monotonic_ns=mono,
        clock_wall_ns=wall,
    )


def _distro() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return ""


def _kernel_hz() -> int:
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


def default_run_dir(base: os.PathLike | str, scenario: str) -> Path:
    """`<base>/<UTC timestamp>-<scenario>`, made unique if two runs start in one second."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(base) / f"{stamp}-{scenario}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{scenario}-{n}"
    return path


# What a run directory may hold besides its tables; `create_run_dir(force=True)` removes these
# and the tables (and nothing else) so an old run's parts never mix with a new run's.
RUN_FILES = ("meta.json", "summary.json", "report.md", "report.html")


def create_run_dir(path: os.PathLike | str, force: bool = False) -> Path:
    """Create an empty run directory; refuse to reuse a non-empty one without `force`, and with
    it, remove the previous run's files first."""
    import shutil

    path = Path(path)
    try:
        if path.exists() and any(path.iterdir()):
            if not force:
                raise SpikeTraceError(f"{path} already exists and is not empty (use --force to overwrite)")
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
            for table in SCHEMAS:
                target = path / f"{table}.parquet"
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError:
        raise SpikeTraceError(f"cannot write to {path}: permission denied (choose another --out)")
    except OSError as exc:
        raise SpikeTraceError(f"cannot create run directory {path}: {exc.strerror}")
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_meta(run_dir: os.PathLike | str, meta: RunMeta) -> None:
    """Write `meta.json` atomically (a reader never sees half a file)."""
    text = json.dumps(meta.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
    _atomic_write(Path(run_dir) / "meta.json", text.encode())


class TableWriter:
    """Append rows of one table and flush them as Parquet part files.

    Rows are buffered column-wise; `flush()` writes one part atomically. `prefix` keeps parts of
    concurrent writers (bench workers, the tracer) apart. Use as a context manager: the buffered
    rows are flushed on exit, including on KeyboardInterrupt.
    """

    def __init__(self, run_dir: os.PathLike | str, table: str, prefix: str = "part",
                 chunk_rows: int = 65536):
        self.schema = SCHEMAS[table]
        self.dir = Path(run_dir) / f"{table}.parquet"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.chunk_rows = chunk_rows
        self.columns: Dict[str, list] = {name: [] for name in self.schema.names}
        self.rows_written = 0
        self._seq = 0
        self._arrow: List[pa.Table] = []  # data appended already converted (append_arrow)
        self._arrow_rows = 0

    def __len__(self) -> int:
        return len(self.columns[self.schema.names[0]]) + self._arrow_rows

    def append(self, row: Dict[str, Any]) -> None:
        for name, col in self.columns.items():
            col.append(row.get(name))
        if len(self) >= self.chunk_rows:
            self.flush()

    def append_columns(self, columns: Dict[str, list]) -> None:
        """Append many rows given column-wise (the fast path)."""
        for name, col in self.columns.items():
            col.extend(columns[name])
        if len(self) >= self.chunk_rows:
            self.flush()

    def append_arrow(self, data) -> None:
        """Append rows already converted to Arrow (a Table or RecordBatch of this schema).

        For writers that convert small slices of rows as they go and want `flush()` to do
        only Arrow work (which releases the GIL, so it can run in a background thread).
        """
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        if not data.schema.equals(self.schema):
            data = data.select(self.schema.names)  # column order; no copy
            if not data.schema.equals(self.schema):
                data = data.cast(self.schema)
        self._arrow.append(data)
        self._arrow_rows += data.num_rows
        if len(self) >= self.chunk_rows:
            self.flush()

    def flush(self) -> Optional[Path]:
        n = len(self)
        if n == 0:
            return None
        tables = list(self._arrow)
        if len(self.columns[self.schema.names[0]]):
            tables.append(pa.Table.from_pydict(self.columns, schema=self.schema))
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        while True:
            self._seq += 1
            part = self.dir / f"{self.prefix}-{self._seq:06d}.parquet"
            if not part.exists():
                break
        tmp = self.dir / f".{part.name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, part)
        self.columns = {name: [] for name in self.schema.names}
        self._arrow, self._arrow_rows = [], 0
        self.rows_written += n
        return part

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def write_table(run_dir: os.PathLike | str, table: str, data, prefix: str = "part") -> None:
    """Write a whole table (a DataFrame or pyarrow Table) as one part, replacing any parts."""
    target = Path(run_dir) / f"{table}.parquet"
    if target.exists():
        for old in target.glob("*.parquet"):
            old.unlink()
    target.mkdir(parents=True, exist_ok=True)
    if not isinstance(data, pa.Table):
        data = pa.Table.from_pandas(data, schema=SCHEMAS.get(table), preserve_index=False)
    tmp = target / f".{prefix}.tmp"
    pq.write_table(data, tmp, compression="zstd")
    os.replace(tmp, target / f"{prefix}-000001.parquet")


@dataclasses.dataclass
class RunDir:
    """A run directory opened for reading. `warnings` says what is missing or incomplete."""

    path: Path
    meta: RunMeta
    warnings: List[str] = dataclasses.field(default_factory=list)

    @classmethod
    def open(cls, path: os.PathLike | str) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            raise SpikeTraceError(f"{path}: no such run directory")
        meta_path = path / "meta.json"
        try:
            data = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise SpikeTraceError(f"{meta_path}: missing; is {path} a spiketrace run directory?")
        except (ValueError, OSError) as exc:
            raise SpikeTraceError(f"{meta_path}: unreadable or truncated ({exc})")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise SpikeTraceError(f"{meta_path}: no format_version; not a spiketrace run directory")
        if version > FORMAT_VERSION:
            raise SpikeTraceError(
                f"{meta_path}: format version {version} is newer than this spiketrace reads "
                f"({FORMAT_VERSION}); upgrade spiketrace")
        run = cls(path=path, meta=RunMeta.from_dict(data))
        if run.meta.status != "complete":
            run.warnings.append(
                f"the run is marked '{run.meta.status}': it did not finish, so its tables may "
                "end early; analysing what is there")
        return run

    def has(self, table: str) -> bool:
        d = self.path / f"{table}.parquet"
        return d.is_dir() and any(d.glob("*.parquet")) or d.is_file()

    def table(self, name: str, columns: Optional[List[str]] = None, categories: bool = False):
        """The table as a pandas DataFrame with the documented columns (empty if absent).

        `categories=True` returns string columns as pandas Categoricals, read straight from
        Parquet's dictionary pages: a million rows of a few distinct addresses or kinds then cost
        a few MB and compare/factorize at integer speed (the analysis uses it)."""
        schema = SCHEMAS.get(name)
        target = self.path / f"{name}.parquet"
        if not self.has(name):
            # a table the run recorded as empty (e.g. no kernel event worth sending) is no gap
            expected_empty = self.meta.counts.get(name) == 0
            if name in ("transactions", "events") and not expected_empty and \
                    not any(w.startswith(f"missing {name}") for w in self.warnings):
                self.warnings.append(f"missing {name}: {target} has no data")
            empty = schema.empty_table() if schema is not None else pa.table({})
            if columns:
                empty = empty.select(columns)
            df = empty.to_pandas()
            if categories:
                for col in df.columns:
                    if pa.types.is_string(empty.schema.field(col).type):
                        df[col] = df[col].astype("category")
            return df
        files = [target] if target.is_file() else sorted(target.glob("*.parquet"))
        parts = [self._read_part(f, schema, columns, categories) for f in files]
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return table.to_pandas()

    def _read_part(self, f: Path, schema: Optional[pa.Schema], columns: Optional[List[str]],
                   categories: bool = False) -> pa.Table:
        """One part file in the documented schema: columns an older writer lacked are added
        (0 or empty, with a warning), nulls of rows appended without a field become 0 / "".
        A damaged file raises one line naming it."""
        try:
            have = pq.read_schema(f)
            wanted = columns or (schema.names if schema is not None else have.names)
            present = [c for c in wanted if c in have.names]
            strings = [c for c in present if pa.types.is_string(have.field(c).type)] if categories else []
            table = pq.read_table(f, columns=present, read_dictionary=strings or None)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise SpikeTraceError(f"{f}: unreadable or truncated Parquet file ({exc})")
        if schema is None:
            return table
        arrays = []
        for name in wanted:
            field = schema.field(name) if name in schema.names else table.schema.field(name)
            string = pa.types.is_string(field.type)
            if name in table.column_names:
                col = table.column(name)
                if categories and string and pa.types.is_dictionary(col.type):
                    if col.null_count:  # rows appended without this field: "" like the others
                        col = col.cast(pa.string()).fill_null("").dictionary_encode()
                    arrays.append(col)
                    continue
                try:
                    col = col.cast(field.type) if col.type != field.type else col
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SpikeTraceError(f"{f}: column {name} is {col.type}, expected {field.type} ({exc})")
            else:
                note = f"{f}: no column {name} (written by an older spiketrace?); using defaults"
                if note not in self.warnings:
                    self.warnings.append(note)
                col = pa.nulls(table.num_rows, type=field.type)
            if col.null_count and (pa.types.is_integer(field.type) or string
                                   or pa.types.is_boolean(field.type)):
                default = "" if string else (False if pa.types.is_boolean(field.type) else 0)
                col = col.fill_null(pa.scalar(default, type=field.type))
            if categories and string:
                col = col.dictionary_encode()
            arrays.append(col)
        return pa.table(arrays, names=list(wanted))
