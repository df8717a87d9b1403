"""The run directory: one documented format (docs/run-directory.md), one writer, one reader.

A run directory holds `meta.json` and tables. Each table `<name>.parquet` is a *directory* of
Parquet part files written atomically (`.tmp` then rename) as the run goes, so memory stays
flat and a run that is interrupted, even by SIGKILL, keeps every part it flushed. pandas and
pyarrow read such a directory as one table (`pandas.read_parquet("transactions.parquet")`).
Parts carry page checksums (CRC32), verified on read: a flipped bit is an error, not data.

All timestamps are CLOCK_MONOTONIC nanoseconds (`time.monotonic_ns()` == `bpf_ktime_get_ns()`);
0 means "this phase was not reached".

Over 400 lines on purpose: the writer and the reader hold the format's rules between them
(part names, atomic writes, versions, the count warnings); kept in one module they cannot drift.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import SpikeTraceError
from common.meta import Meta, new_meta, now_wall  # noqa: F401  (the reader's and writers' types)
from common.schema import SCHEMAS

# What a run directory may hold besides its tables; `create_run_dir(force=True)` removes these
# and the tables (and nothing else) so an old run's parts never mix with a new run's.
RUN_FILES = ("meta.json", "summary.json", "report.md", "report.html")


def default_run_dir(base: os.PathLike | str, scenario: str) -> Path:
    """`<base>/<UTC timestamp>-<scenario>`, made unique if two runs start in one second."""
    import datetime as dt

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(base) / f"{stamp}-{scenario}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{scenario}-{n}"
    return path


def create_run_dir(path: os.PathLike | str, force: bool = False, keep: Sequence[str] = ()) -> Path:
    """Create an empty run directory; refuse to reuse a non-empty one without `force`, and with
    it, remove the previous run's files first (but the tables in `keep`: the bench client keeps
    the records its server writes into the same directory)."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise SpikeTraceError(f"{path} exists and is not a directory (choose another --out)")
        if path.exists() and any(path.iterdir()):
            if not force:
                raise SpikeTraceError(f"{path} already exists and is not empty (use --force to overwrite)")
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
            for table in SCHEMAS:
                if table not in keep:
                    remove_table(path, table)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError:
        raise SpikeTraceError(f"cannot write to {path}: permission denied (choose another --out)")
    except OSError as exc:
        raise SpikeTraceError(f"cannot create run directory {path}: {exc.strerror}")
    return path


def remove_table(run_dir: os.PathLike | str, table: str) -> None:
    target = Path(run_dir) / f"{table}.parquet"
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_meta(run_dir: os.PathLike | str, meta: Meta) -> None:
    """Write `meta.json` atomically (a reader never sees half a file)."""
    text = json.dumps(meta.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
    try:
        _atomic_write(Path(run_dir) / "meta.json", text.encode())
    except OSError as exc:
        raise SpikeTraceError(f"cannot write {Path(run_dir) / 'meta.json'}: {exc.strerror}")


def _write_part(table: pa.Table, part: Path) -> None:
    tmp = part.with_name(f".{part.name}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
        os.replace(tmp, part)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SpikeTraceError(f"cannot write {part}: {exc.strerror or exc}")


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
        # keep_going: a part that cannot be written (a full disk) is dropped and counted rather
        # than raised, so a days-long trace goes on (the parts written before stay intact)
        self.keep_going = False
        self.write_errors = 0
        self.rows_dropped = 0
        self.last_error: Optional[str] = None

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
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_part(table, part)
        except (SpikeTraceError, OSError) as exc:
            if not self.keep_going:
                raise
            self.write_errors += 1
            self.rows_dropped += n
            self.last_error = str(exc)
            part = None
        else:
            self.last_error = None
        self.columns = {name: [] for name in self.schema.names}
        self._arrow, self._arrow_rows = [], 0
        self.rows_written += n if part is not None else 0
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
    schema = SCHEMAS.get(table)
    if not isinstance(data, pa.Table):
        if schema is not None:  # a column the writer does not know gets the reader's default
            missing = {f.name: ("" if pa.types.is_string(f.type) else 0) for f in schema
                       if f.name not in data.columns}
            data = data.assign(**missing) if missing else data
        data = pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    _write_part(data, target / f"{prefix}-000001.parquet")


def table_parts(run_dir: os.PathLike | str, table: str) -> List[Path]:
    """The part files of a table, in name order (a single-file table is its own part)."""
    target = Path(run_dir) / f"{table}.parquet"
    if target.is_file():
        return [target]
    if not target.is_dir():
        return []
    return sorted(target.glob("*.parquet"))


def table_rows(run_dir: os.PathLike | str, table: str) -> int:
    """Rows on disk, from the parts' footers (no data read); a damaged part counts 0."""
    total = 0
    for part in table_parts(run_dir, table):
        try:
            total += pq.ParquetFile(part).metadata.num_rows
        except Exception:  # pyarrow raises several types for a damaged footer
            continue
    return total


def read_meta(run_dir: os.PathLike | str) -> Meta:
    """`meta.json` of a run directory, validated (see Meta.from_dict)."""
    meta_path = Path(run_dir) / "meta.json"
    try:
        data = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise SpikeTraceError(f"{meta_path}: missing; is {meta_path.parent} a spiketrace run directory?")
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise SpikeTraceError(f"{meta_path}: unreadable or truncated ({exc})")
    return Meta.from_dict(data, source=str(meta_path))


# table -> its row count in meta.json `counts` (spiketrace.recording counts them from disk)
COUNTED_TABLES = {"transactions": "transactions", "server": "server_connections",
                  "events": "events", "connections": "connections"}


def count_warnings(run_dir: os.PathLike | str, meta: Meta) -> List[str]:
    """Where the tables on disk disagree with meta.json's counts: a part missing or damaged
    (fewer rows), or rows added after a finished run (more). A run still recording (`running`)
    may hold more rows than its last checkpoint counted."""
    out = []
    counts = meta.counts or {}
    for table, key in COUNTED_TABLES.items():
        expected = counts.get(key)
        if expected is None:
            continue
        have = table_rows(run_dir, table)
        if have == expected or (have > expected and meta.status == "running"):
            continue
        if table == "transactions" and have == 0 and meta.kind in ("run", "bench"):
            out.append(f"transactions.parquet: no transaction on disk, but meta.json counts {expected:,} "
                       f"(a `spiketrace {meta.kind}` run): its bench records are missing or damaged, so "
                       "only the kernel's view is left")
        elif have < expected:
            out.append(f"{table}.parquet: {have:,} rows on disk, but meta.json counts {expected:,} "
                       f"({key}): {expected - have:,} are missing (a part deleted or damaged?); "
                       "analysing what is there")
        else:
            out.append(f"{table}.parquet: {have:,} rows on disk, more than the {expected:,} meta.json "
                       f"counts ({key}): parts were added after the run ended?")
    if meta.kind in ("run", "bench") and meta.status == "running" and "transactions" not in counts \
            and not table_parts(run_dir, "transactions"):
        out.append("transactions.parquet: none on disk and meta.json has no counts (the run was "
                   "killed before its bench records reached the disk?)")
    return out


@dataclasses.dataclass
class RunDir:
    """A run directory opened for reading. `warnings` says what is missing or incomplete."""

    path: Path
    meta: Meta
    warnings: List[str] = dataclasses.field(default_factory=list)

    @classmethod
    def open(cls, path: os.PathLike | str) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            raise SpikeTraceError(f"{path}: no such run directory")
        run = cls(path=path, meta=read_meta(path))
        if run.meta.status != "complete":
            run.warnings.append(
                f"the run is marked '{run.meta.status}': it did not finish, so its tables may "
                "end early; analysing what is there")
        run.warnings += count_warnings(path, run.meta)
        return run

    def has(self, table: str) -> bool:
        return bool(table_parts(self.path, table))

    def parts(self, table: str) -> List[Path]:
        return table_parts(self.path, table)

    def rows(self, table: str) -> int:
        return table_rows(self.path, table)

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
        parts = [self._read_part(f, schema, columns, categories) for f in self.parts(name)]
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
            table = pq.read_table(f, columns=present, read_dictionary=strings or None,
                                  page_checksum_verification=True)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            why = " ".join(str(exc).split())  # pyarrow's text spans lines: one line for the user
            raise SpikeTraceError(f"{f}: unreadable, truncated or damaged Parquet file ({why})")
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


class MemoryRun:
    """A run held in memory, read like a `RunDir` (`meta`, `table()`, `has()`, `warnings`,
    `path`): the trace daemon's live explanations run the same analysis as `spiketrace report`
    on a window of recent rows (spiketrace.live). `tables` maps a table name to columns
    (lists, in the table's schema: common.schema.SCHEMAS)."""

    def __init__(self, path: os.PathLike | str, meta: Meta, tables: Dict[str, Dict[str, list]]):
        self.path = Path(path)
        self.meta = meta
        self.warnings: List[str] = []
        self._tables = {name: pa.Table.from_pydict({c: cols.get(c, []) for c in SCHEMAS[name].names},
                                                   schema=SCHEMAS[name])
                        for name, cols in tables.items() if len(next(iter(cols.values()), []))}

    def has(self, table: str) -> bool:
        return table in self._tables

    def rows(self, table: str) -> int:
        return self._tables[table].num_rows if table in self._tables else 0

    def table(self, name: str, columns: Optional[List[str]] = None, categories: bool = False):
        """As `RunDir.table`: the documented columns (empty if absent), strings as pandas
        Categoricals with `categories=True`."""
        schema = SCHEMAS.get(name)
        table = self._tables.get(name, schema.empty_table() if schema is not None else pa.table({}))
        if columns:
            table = table.select(columns)
        if categories:
            table = pa.table([c.dictionary_encode() if pa.types.is_string(c.type) else c
                              for c in table.columns], names=table.column_names)
        return table.to_pandas()
