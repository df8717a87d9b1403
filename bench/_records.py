"""Row buffers for per-transaction / per-connection records.

The hot loops append one tuple per record to a plain list (a bound `append` kept in a local).
One `append` call is atomic with respect to Python signal handlers, so a Ctrl-C or SIGTERM that
arrives at any instant either keeps a record whole or never saw it: never half a row. Columns
that are constant for a process (worker, pid, ports) are not stored per row but filled in when
the rows are flushed: then the tuples are turned into columns and handed to
`spiketrace.rundir.TableWriter`, which writes one Parquet part atomically. The list is cleared
in place so the hot loop's bound `append` stays valid.
"""
from __future__ import annotations

import gc
import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

from spiketrace.rundir import SCHEMAS, TableWriter


class RowBuffer:
    def __init__(self, run_dir: Optional[os.PathLike], table: str, prefix: str,
                 fields: Sequence[str], constants: Dict[str, Any], chunk_rows: int = 32768):
        names = SCHEMAS[table].names
        if sorted(list(fields) + list(constants)) != sorted(names):
            raise ValueError(f"fields + constants must be exactly the columns of {table}")
        self.fields = tuple(fields)
        self.constants = dict(constants)
        self.rows: List[tuple] = []
        self.chunk_rows = chunk_rows
        self.writer = (TableWriter(run_dir, table, prefix=prefix, chunk_rows=1 << 62)
                       if run_dir is not None else None)
        self.flushed = 0  # rows written to disk (or dropped when there is no run directory)
        self.outcomes: Counter = Counter()  # outcome -> flushed rows
        self._outcome = self.fields.index("outcome") if "outcome" in self.fields else None
        if self.writer is not None:
            _warm_up(table)

    def __len__(self) -> int:
        return len(self.rows)

    def flush(self) -> None:
        rows = self.rows
        n = len(rows)
        if n == 0:
            return
        columns = list(zip(*rows[:n])) if n else [[] for _ in self.fields]
        if self._outcome is not None:
            self.outcomes.update(columns[self._outcome])
        if self.writer is not None:
            data: Dict[str, Any] = dict(zip(self.fields, columns))
            for name, value in self.constants.items():
                data[name] = [value] * n
            self.writer.append_columns(data)
            self.writer.flush()
        del rows[:n]
        self.flushed += n
        if not gc.isenabled():  # the hot loops run without the cyclic GC (see quiet_gc)
            gc.collect()


def _warm_up(table: str) -> None:
    """Load the Parquet writer and its codec now rather than at the first flush mid-run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(SCHEMAS[table].empty_table(), pa.BufferOutputStream(), compression="zstd")


def quiet_gc() -> None:
    """Keep the cyclic garbage collector out of the hot loops.

    Its collections scan the record tuples of the pending chunk and would add pauses of
    milliseconds to random transactions; the loops create no reference cycles, and
    `RowBuffer.flush` collects between chunks instead.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
