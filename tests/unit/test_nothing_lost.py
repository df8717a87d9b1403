"""Nothing measured is lost, and nothing missing goes unsaid:
- bench records reach disk by time as well as by count, so a SIGKILL of the whole process group
  loses at most the last flush interval (also while the loop is blocked);
- `report` on a read-only run directory prints the report and one line about what it could not
  write;
- the reader warns when the tables disagree with meta.json's counts."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench._records import RowBuffer
from bench.client import FIELDS
from bench.server import ServerOptions, start_server_process
from common.rundir import RunDir, TableWriter, read_meta, write_meta
from tests.helpers.synthetic import S, SyntheticRun

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data"


def _rows_on_disk(run_dir: Path, table: str = "transactions") -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (run_dir / f"{table}.parquet").glob("*.parquet"))


def test_records_reach_disk_by_time_even_when_the_loop_is_idle(tmp_path):
    buf = RowBuffer(tmp_path, "transactions", prefix="w0", fields=FIELDS,
                    constants={"worker": 0, "pid": 1, "remote_addr": "127.0.0.1", "remote_port": 1},
                    flush_interval_s=0.2)
    t = 10 ** 12
    for i in range(10):  # far fewer than a slice: the loop never converts, it is "blocked"
        buf.rows.append((i, "127.0.0.1", 1024 + i, t, t + 1, t + 2, t + 3, t + 4, 1, 0, "ok"))
    deadline = time.monotonic() + 5
    while _rows_on_disk(tmp_path) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _rows_on_disk(tmp_path) == 10
    for i in range(10, 2000):  # more, now through the loop's own conversions
        buf.rows.append((i, "127.0.0.1", 1024 + i, t, t + 1, t + 2, t + 3, t + 4, 1, 0, "ok"))
        if len(buf.rows) >= buf.slice_rows:
            buf.convert()
    buf.close()
    tx = pd.read_parquet(tmp_path / "transactions.parquet")
    assert sorted(tx["id"]) == list(range(2000))  # each row once, none lost


def test_sigkill_of_the_whole_client_keeps_what_was_measured(tmp_path):
    """`kill -9` of the process group a few seconds in: before, nothing reached disk before
    32,768 rows per worker; now at most the last second (flush_interval_s) is lost."""
    out = tmp_path / "run"
    with start_server_process(ServerOptions(port=0, backlog=16), None) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spiketrace.cli", "bench", "client", "-n", "1000000", "-c", "2",
             "--rate", "2000", "--port", str(server.port), "--out", str(out)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not (out / "meta.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(3.5)
            assert proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    rows = _rows_on_disk(out)
    # ~3.5 s at 2,000/s, minus the start and at most the last 1 s flush interval
    assert rows >= 2000, rows
    res = subprocess.run([sys.executable, "-m", "spiketrace.cli", "report", str(out), "--format", "terminal"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "marked 'running'" in res.stdout and f"{rows:,} transactions" in res.stdout


def _read_only_report(run: Path):
    """`spiketrace report RUN` with RUN read-only: a read-only bind mount in a private mount
    namespace as root (root ignores file modes), else file modes."""
    cmd = [sys.executable, "-m", "spiketrace.cli", "report", str(run)]
    if os.geteuid() == 0:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount --bind -o ro "$0" "$0" && exec "$@"', str(run)] + cmd
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    for p in [run, *run.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_report_on_a_read_only_run_prints_the_report_and_one_line(tmp_path):
    run = SyntheticRun(tmp_path / "run")
    run.normal(50)
    run.txn(connect_ms=1000.2)
    path = run.write()
    res = _read_only_report(path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "51 transactions" in res.stdout and "Worst spikes" in res.stdout  # the report itself
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"spiketrace: cannot write {path}/report.md: ")
    assert "--out DIR" in lines[0]
    assert not any(p.name.startswith(".") for p in path.iterdir())  # no temporary file left


def _golden(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(GOLDEN / name, dst)
    return dst


def _split(run: Path, table: str, parts: int) -> None:
    """Rewrite a table as `parts` parts of different writers (like bench workers)."""
    df = pd.read_parquet(run / f"{table}.parquet")
    shutil.rmtree(run / f"{table}.parquet")
    size = -(-len(df) // parts)
    for k in range(parts):
        with TableWriter(run, table, prefix=f"w{k}") as w:
            w.append_columns({c: df[c].iloc[k * size:(k + 1) * size].tolist() for c in df.columns})


def test_a_missing_worker_part_is_said(tmp_path):
    run = _golden("cpu-contention", tmp_path)
    _split(run, "transactions", 3)
    (run / "transactions.parquet" / "w2-000001.parquet").unlink()
    rd = RunDir.open(run)
    assert rd.rows("transactions") == 2668
    assert any("2,668 rows on disk, but meta.json counts 4,000 (transactions): 1,332 are missing" in w
               for w in rd.warnings), rd.warnings


def test_a_run_without_its_transactions_is_not_silently_a_trace(tmp_path):
    from analysis import analyse

    run = _golden("cpu-contention", tmp_path)
    shutil.rmtree(run / "transactions.parquet")
    result = analyse(RunDir.open(run))
    assert result.summary["run"]["source"] == "connections"  # the kernel's view is what is left
    assert any("no transaction on disk, but meta.json counts 4,000 (a `spiketrace run` run)" in w
               for w in result.warnings), result.warnings


def test_counts_that_agree_say_nothing_and_a_checkpointed_trace_may_have_more(tmp_path):
    for name in ("cpu-contention", "nagle-delack", "original-trace"):
        assert not [w for w in RunDir.open(GOLDEN / name).warnings if "meta.json counts" in w], name
    run = _golden("original-trace", tmp_path)
    meta = read_meta(run)
    meta.status, meta.counts["events"] = "running", 10  # the last checkpoint saw fewer
    write_meta(run, meta)
    assert not [w for w in RunDir.open(run).warnings if "meta.json" in w]
    meta.status = "complete"
    write_meta(run, meta)
    assert any("more than the 10 meta.json counts (events)" in w for w in RunDir.open(run).warnings)


def test_a_killed_run_with_no_records_says_so(tmp_path):
    run = SyntheticRun(tmp_path / "run", status="running", counts=False)
    run.event("retransmit", 1000 * S, None)
    path = run.write()
    shutil.rmtree(path / "transactions.parquet", ignore_errors=True)
    assert any("killed before its bench records reached the disk" in w for w in RunDir.open(path).warnings)
