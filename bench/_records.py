"""Row buffers for per-transaction / per-connection records.

The hot loops append one tuple per record to a plain list (a bound `append` kept in a local).
One `append` call is atomic with respect to Python signal handlers, so a Ctrl-C or SIGTERM that
arrives at any instant either keeps a record whole or never saw it: never half a row.

Writing must not stall the loop: a single-threaded server that spent 150 ms writing a Parquet
part would itself cause the latency spikes this tool is meant to explain. So the work is split:
- every `slice_rows` records (a few hundred), the loop calls `convert()`: the tuples become one
  Arrow record batch (~0.5 us per row, a fraction of a millisecond per call);
- every `chunk_rows` records, the batches go to a writer thread, which hands them to
  `common.rundir.TableWriter` (`append_arrow` + `flush`: Arrow concatenation, zstd and
  file I/O, all of which release the GIL) and writes one part atomically;
- with `flush_interval_s`, records also reach disk by time: when nothing was handed over for
  that long, the writer thread converts what is pending itself and writes it, also while the
  loop is blocked (a connect() waiting 3 s for a SYN retransmit). A SIGKILL then loses at
  most the last interval's records, however slow the load;
- `close()` converts the rest, drains the writer thread and writes the last part.
Columns that are constant for a process (worker, pid, ports) are not stored per row but added
as whole columns at conversion.
"""
from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa

from common.rundir import SCHEMAS, TableWriter


class RowBuffer:
    def __init__(self, run_dir: Optional[os.PathLike], table: str, prefix: str,
                 fields: Sequence[str], constants: Dict[str, Any], chunk_rows: int = 32768,
                 slice_rows: int = 512, flush_interval_s: Optional[float] = None):
        self.schema = SCHEMAS[table]
        if sorted(list(fields) + list(constants)) != sorted(self.schema.names):
            raise ValueError(f"fields + constants must be exactly the columns of {table}")
        self.fields = tuple(fields)
        self.constants = dict(constants)
        self.rows: List[tuple] = []
        self.chunk_rows = chunk_rows
        self.slice_rows = min(slice_rows, chunk_rows)
        self.writer = (TableWriter(run_dir, table, prefix=prefix, chunk_rows=1 << 62)
                       if run_dir is not None else None)
        self.converted = 0  # rows turned into Arrow (or dropped when there is no run directory)
        self.outcomes: Counter = Counter()  # outcome -> converted rows
        self._outcome = self.fields.index("outcome") if "outcome" in self.fields else None
        self._types = [self.schema.field(name).type for name in self.fields]
        # batches carry the columns in record order, constants last; the writer reorders
        self._batch_schema = pa.schema([self.schema.field(name) for name in self.fields]
                                       + [self.schema.field(name) for name in self.constants])
        self._constants_cache: Dict[int, List[pa.Array]] = {}
        self._batches: List[pa.RecordBatch] = []
        self._batched_rows = 0
        # at most 2 chunks wait for the writer: if the disk cannot keep up, the loop waits
        # rather than memory growing
        self._queue: "queue.Queue[Optional[List[pa.RecordBatch]]]" = queue.Queue(maxsize=2)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        # convert() runs in the loop and, by time, in the writer thread: one at a time
        self._lock = threading.Lock()
        self.flush_interval_s = flush_interval_s
        self._handed_at = time.monotonic()
        if self.writer is not None:
            _warm_up(table)
            if flush_interval_s:
                self._start_thread()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def flushed(self) -> int:
        """Rows on disk (or dropped when there is no run directory)."""
        return self.writer.rows_written if self.writer is not None else self.converted

    def convert(self) -> None:
        """Turn the pending tuples into one Arrow batch; pass full chunks to the writer thread."""
        with self._lock:
            self._convert()
            if self._batched_rows >= self.chunk_rows:
                self._hand_off()

    def _convert(self) -> None:
        rows = self.rows
        n = len(rows)
        if n == 0:
            return
        columns = list(zip(*rows))
        if self._outcome is not None:
            self.outcomes.update(columns[self._outcome])
        if self.writer is not None:
            arrays = [pa.array(col, type=t) for col, t in zip(columns, self._types)]
            arrays.extend(self._constant_arrays(n))
            self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=self._batch_schema))
            self._batched_rows += n
        del rows[:n]
        self.converted += n

    def _constant_arrays(self, n: int) -> List[pa.Array]:
        cached = self._constants_cache.get(n)
        if cached is None:
            cached = [pa.array([value] * n, type=self.schema.field(name).type)
                      for name, value in self.constants.items()]
            if len(self._constants_cache) < 4:
                self._constants_cache[n] = cached
        return cached

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._write_loop, name="bench-writer", daemon=True)
        self._thread.start()

    def _hand_off(self) -> None:
        if not self._batches:
            return
        if self._thread is None:
            self._start_thread()
        self._queue.put(self._batches)
        self._batches, self._batched_rows = [], 0
        self._handed_at = time.monotonic()

    def _write_loop(self) -> None:
        interval = self.flush_interval_s
        while True:
            if interval:
                wait = max(0.01, interval - (time.monotonic() - self._handed_at))
                try:
                    batches = self._queue.get(timeout=wait)
                except queue.Empty:
                    batches = self._due()
                    if not batches:
                        continue
            else:
                batches = self._queue.get()
            if batches is None:
                return
            try:
                self.writer.append_arrow(pa.Table.from_batches(batches))
                self.writer.flush()
            except BaseException as exc:  # reported by close(); keep draining the queue
                self._error = exc

    def _due(self) -> List[pa.RecordBatch]:
        """What is pending once nothing was handed over for `flush_interval_s` (in the writer
        thread). Skipped while the loop converts (it is busy, so it will hand over soon) or
        while older chunks wait in the queue (parts stay in record order)."""
        if not self._lock.acquire(blocking=False):
            return []
        try:
            if not self._queue.empty() or time.monotonic() - self._handed_at < self.flush_interval_s:
                return []
            self._convert()
            batches, self._batches, self._batched_rows = self._batches, [], 0
            self._handed_at = time.monotonic()
            return batches
        finally:
            self._lock.release()

    def close(self) -> None:
        """Convert what is pending and wait until every row is on disk."""
        with self._lock:
            self._convert()
            self._hand_off()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    flush = close  # a full, synchronous flush


def _warm_up(table: str) -> None:
    """Load the Parquet writer and its codec now rather than at the first flush mid-run."""
    import pyarrow.parquet as pq

    pq.write_table(SCHEMAS[table].empty_table(), pa.BufferOutputStream(), compression="zstd")
    pa.array([0], type=pa.int64())
    pa.array([""], type=pa.string())


def hot_loop_mode() -> None:
    """Settings for a process that runs a hot loop with a writer thread beside it.

    - No cyclic garbage collector: its collections scan every young object and would add
      pauses of milliseconds to random transactions (also from the writer thread: a collection
      holds the GIL). The loops and the Arrow conversion create no reference cycles, so memory
      stays flat without it (a client worker stays near 100 MB RSS from 40k to 200k
      transactions).
    - A short GIL switch interval (0.2 ms instead of 5 ms): each socket call releases the GIL;
      while the writer thread holds it, getting it back waits for the writer's next release or
      for the switch interval. So the writer costs the loop at most ~0.2 ms at a time.
    """
    import sys

    gc.collect()
    gc.freeze()
    gc.disable()
    sys.setswitchinterval(0.0002)
