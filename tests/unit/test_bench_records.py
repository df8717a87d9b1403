"""The bench's record buffers: rows stream to Parquet parts in a writer thread, memory does not
grow with the number of rows, and nothing appended is lost or duplicated."""
from __future__ import annotations

import gc

import pandas as pd
import pyarrow as pa

from bench._records import RowBuffer
from bench.client import FIELDS
from common.rundir import SCHEMAS, TableWriter


def _anon_rss_mb() -> float:
    gc.collect()
    pa.default_memory_pool().release_unused()  # Arrow's allocator may keep freed pages
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def _rows_on_disk(run_dir) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows
               for p in (run_dir / "transactions.parquet").glob("*.parquet"))


def _feed(buf: RowBuffer, start: int, n: int) -> None:
    rows, record = buf.rows, buf.rows.append
    t = 10 ** 12
    for i in range(start, start + n):
        record((i, "127.0.0.1", 1024 + i % 60000, t + i, t + i + 1, t + i + 2, t + i + 3,
                t + i + 4, 1, 0, "ok" if i % 1000 else "reset"))
        if len(rows) >= buf.slice_rows:
            buf.convert()


def test_memory_stays_flat_and_every_row_lands_once(tmp_path):
    buf = RowBuffer(tmp_path, "transactions", prefix="w3", fields=FIELDS,
                    constants={"worker": 3, "pid": 4242, "remote_addr": "127.0.0.1",
                               "remote_port": 9999},
                    chunk_rows=20000)
    _feed(buf, 0, 40000)  # two parts: the writer, Arrow and zstd are warm now
    samples = [_anon_rss_mb()]
    for start in range(40000, 360000, 40000):
        _feed(buf, start, 40000)
        samples.append(_anon_rss_mb())
        # what the process holds is bounded by construction: < 1 slice of tuples, < 1 chunk of
        # Arrow batches, <= 2 chunks queued for the writer and 1 being written; the rest is on disk
        assert len(buf.rows) < buf.slice_rows and buf._batched_rows < buf.chunk_rows
        assert buf._queue.qsize() <= 2
        chunk = buf.chunk_rows + buf.slice_rows  # a chunk is handed over at the slice after
        assert _rows_on_disk(tmp_path) >= start + 40000 - buf.slice_rows - 4 * chunk
    buf.close()
    # 320,000 more rows kept in memory would take > 100 MB as tuples; streamed, memory levels
    # off (allocators keep some freed pages: a step or two of ~10 MB, then flat)
    assert max(samples) - samples[0] < 40, f"memory grows: {samples} MB every 40,000 rows"

    parts = sorted((tmp_path / "transactions.parquet").glob("w3-*.parquet"))
    assert len(parts) >= 17 and buf.flushed == _rows_on_disk(tmp_path) == 360000
    tx = pd.read_parquet(tmp_path / "transactions.parquet")
    assert list(tx.columns) == SCHEMAS["transactions"].names
    assert len(tx) == 360000 and sorted(tx["id"]) == list(range(360000))
    assert (tx["worker"] == 3).all() and (tx["pid"] == 4242).all() and (tx["remote_port"] == 9999).all()
    assert (tx["t_end"] - tx["t_start"] == 4).all()
    assert buf.outcomes == {"ok": 359640, "reset": 360}
    assert (tx["outcome"] == "reset").sum() == 360


def test_close_writes_a_partial_chunk_and_is_repeatable(tmp_path):
    buf = RowBuffer(tmp_path, "transactions", prefix="w0", fields=FIELDS,
                    constants={"worker": 0, "pid": 1, "remote_addr": "127.0.0.1", "remote_port": 1})
    _feed(buf, 0, 700)  # one slice converted, 188 rows still as tuples
    assert not list((tmp_path / "transactions.parquet").glob("*.parquet"))
    buf.close()
    buf.close()
    assert len(pd.read_parquet(tmp_path / "transactions.parquet")) == 700


def test_without_a_run_directory_rows_are_counted_and_dropped():
    buf = RowBuffer(None, "transactions", prefix="w0", fields=FIELDS,
                    constants={"worker": 0, "pid": 1, "remote_addr": "127.0.0.1", "remote_port": 1})
    _feed(buf, 0, 1500)
    buf.close()
    assert buf.flushed == 1500 and buf.outcomes["reset"] == 2 and not buf.rows


def test_table_writer_append_arrow_reorders_and_mixes_with_rows(tmp_path):
    schema = SCHEMAS["counters"]
    w = TableWriter(tmp_path, "counters", chunk_rows=10)
    w.append({"t_ns": 1, "name": "a", "value": 10})
    batch = pa.RecordBatch.from_arrays([pa.array(["b", "c"]), pa.array([20, 30], pa.int64()),
                                        pa.array([2, 3], pa.int64())], names=["name", "value", "t_ns"])
    w.append_arrow(batch)
    assert len(w) == 3
    w.flush()
    table = pd.read_parquet(tmp_path / "counters.parquet").sort_values("t_ns")
    assert list(table.columns) == schema.names
    assert table["name"].tolist() == ["a", "b", "c"] and table["value"].tolist() == [10, 20, 30]
