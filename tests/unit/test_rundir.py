"""The run-directory format: the writer and the one reader agree, the doc lists every column,
and damaged or newer directories give one clear error naming the file."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.meta import FORMAT_VERSION
from common import rundir
from common.errors import SpikeTraceError

DOC = Path(__file__).resolve().parents[2] / "docs" / "run-directory.md"


def test_doc_lists_every_column_of_every_table():
    text = DOC.read_text()
    for table, schema in rundir.SCHEMAS.items():
        assert f"{table}.parquet" in text, table
        for column in schema.names:
            assert re.search(rf"`{column}`", text), f"{table}.{column} is not documented"


def test_meta_keys_are_documented():
    text = DOC.read_text()
    for key in rundir.Meta().to_dict():
        if key == "extra":
            continue
        assert f"`{key}`" in text, f"meta.json key {key} is not documented"


def _write_run(path: Path, n: int, chunk_rows: int = 4) -> None:
    meta = rundir.new_meta("bench", command=["test"])
    meta.status = "complete"
    rundir.create_run_dir(path)
    with rundir.TableWriter(path, "transactions", prefix="w0", chunk_rows=chunk_rows) as w:
        for i in range(n):
            w.append({"id": i, "worker": 0, "pid": 1, "local_port": 40000 + i, "t_start": 10 * i,
                      "t_end": 10 * i + 5, "outcome": "ok"})
    rundir.write_meta(path, meta)


def test_round_trip_through_parts(tmp_path):
    run_path = tmp_path / "run"
    _write_run(run_path, 10, chunk_rows=4)
    parts = sorted((run_path / "transactions.parquet").glob("*.parquet"))
    assert len(parts) == 3  # 4 + 4 + 2 rows
    run = rundir.RunDir.open(run_path)
    df = run.table("transactions")
    assert list(df.columns) == rundir.SCHEMAS["transactions"].names
    assert sorted(df["id"].tolist()) == list(range(10))
    assert run.warnings == []
    assert run.table("events").empty  # absent table: empty, with columns
    assert "missing events" in " ".join(run.warnings)


def test_meta_clock_anchor_converts_to_wall_time():
    meta = rundir.Meta(clock_monotonic_ns=1_000_000_000, clock_wall_ns=1_700_000_000_000_000_000)
    assert meta.wall_time(3_000_000_000).timestamp() == pytest.approx(1_700_000_002.0)


def test_newer_format_version_is_refused_naming_the_file(tmp_path):
    run_path = tmp_path / "run"
    _write_run(run_path, 1)
    data = json.loads((run_path / "meta.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (run_path / "meta.json").write_text(json.dumps(data))
    with pytest.raises(SpikeTraceError, match=rf"meta\.json: format version {FORMAT_VERSION + 1} is newer"):
        rundir.RunDir.open(run_path)


def test_missing_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(SpikeTraceError, match="no such run directory"):
        rundir.RunDir.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpikeTraceError, match=r"meta\.json: missing"):
        rundir.RunDir.open(tmp_path / "empty")
    run_path = tmp_path / "run"
    _write_run(run_path, 10)
    part = sorted((run_path / "transactions.parquet").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:40])
    run = rundir.RunDir.open(run_path)
    with pytest.raises(SpikeTraceError, match=re.escape(part.name) + ".*truncated"):
        run.table("transactions")


def test_interrupted_run_is_readable_with_a_warning(tmp_path):
    run_path = tmp_path / "run"
    _write_run(run_path, 3)
    meta = rundir.RunDir.open(run_path).meta
    meta.status = "interrupted"
    rundir.write_meta(run_path, meta)
    run = rundir.RunDir.open(run_path)
    assert len(run.table("transactions")) == 3
    assert any("interrupted" in w for w in run.warnings)


def test_refuses_to_reuse_a_non_empty_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(SpikeTraceError, match="--force"):
        rundir.create_run_dir(tmp_path / "x")
    _write_run(tmp_path / "y", 10)
    (tmp_path / "y" / "mine.txt").write_text("not ours")
    rundir.create_run_dir(tmp_path / "y", force=True)
    assert sorted(p.name for p in (tmp_path / "y").iterdir()) == ["mine.txt"]


def test_sigkilled_writer_keeps_every_flushed_part(tmp_path):
    """A writer killed outright leaves only whole parts (no .tmp is read as data)."""
    code = f"""
import os, signal
from common import rundir
w = rundir.TableWriter({str(tmp_path)!r}, "transactions", chunk_rows=100)
for i in range(250):
    w.append({{"id": i, "outcome": "ok"}})
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    meta = rundir.new_meta("bench")
    rundir.write_meta(tmp_path, meta)
    df = rundir.RunDir.open(tmp_path).table("transactions")
    assert sorted(df["id"]) == list(range(200))
