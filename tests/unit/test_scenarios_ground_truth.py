"""Ground truth written by the configuration-only injectors, from the run's own tables."""
from __future__ import annotations

import errno
import os

import pandas as pd

from common.rundir import SCHEMAS, TableWriter
from spiketrace.scenarios import SCENARIOS
from spiketrace.scenarios.base import write_ground_truth
from spiketrace.scenarios.cpuhog import CpuContention, read_windows
from spiketrace.scenarios.tcfault import FaultRecord


def _tx(i, t_start, t_end, attempts=1, err=0, port=40000):
    return {"id": i, "worker": 0, "pid": 1, "local_addr": "127.0.0.1", "local_port": port + i,
            "remote_addr": "127.0.0.1", "remote_port": 9999, "t_start": t_start,
            "t_connected": t_start + 10, "t_reply1": 0, "t_reply2": 0, "t_end": t_end,
            "connect_attempts": attempts, "last_errno": err, "outcome": "ok"}


def test_seed_writes_an_empty_ground_truth(tmp_path):
    inj = SCENARIOS["seed"].setup(None, tmp_path)
    assert inj.teardown() == 0
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert gt.empty and list(gt.columns) == SCHEMAS["ground_truth"].names


def test_nagle_delack_records_its_configuration(tmp_path):
    inj = SCENARIOS["nagle-delack"].setup(None, tmp_path)
    inj.teardown()
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert len(gt) == 1
    row = gt.iloc[0]
    assert row["kind"] == "delayed_ack" and row["sport"] == 0 and row["dport"] == 9999
    assert "split_writes=1 nodelay=0" in row["detail"]


def test_port_exhaustion_truth_is_the_retried_connects(tmp_path):
    with TableWriter(tmp_path, "transactions", prefix="w0") as w:
        w.append(_tx(0, 100, 200))
        w.append(_tx(1, 300, 900, attempts=5000, err=errno.EADDRNOTAVAIL))
        w.append(_tx(2, 1000, 1100, attempts=3, err=errno.ECONNREFUSED))
    inj = SCENARIOS["port-exhaustion"].setup(None, tmp_path)
    assert inj.teardown() == 1
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert gt["sport"].tolist() == [40001] and gt["t_ns"].tolist() == [300]
    assert gt["kind"].tolist() == ["port_exhaustion"]
    assert gt["detail"].tolist() == ["EADDRNOTAVAIL x4999"]


def test_port_exhaustion_without_transactions_notes_it(tmp_path):
    inj = SCENARIOS["port-exhaustion"].setup(None, tmp_path)
    assert inj.teardown() == 0
    assert any("no transactions" in n for n in inj.notes)


def test_cpu_hog_log_and_overlap(tmp_path):
    log = tmp_path / "hog.log"
    log.write_text("# policy SCHED_FIFO\n1000 1500\n3000 3500\n")
    assert read_windows(str(log)) == ("SCHED_FIFO", [(1000, 1500), (3000, 3500)])
    with TableWriter(tmp_path, "transactions") as w:
        w.append(_tx(0, 900, 1100))    # overlaps burst 1
        w.append(_tx(1, 1600, 2900))   # between bursts
        w.append(_tx(2, 3400, 0))      # unfinished, started in burst 2
    inj = CpuContention.__new__(CpuContention)
    CpuContention.__init__(inj, SCENARIOS["cpu-contention"], None, tmp_path, 9999,
                           dict(SCENARIOS["cpu-contention"].params))

    class FakeProc:  # the log is read from a finished hog
        pid = os.getpid()

        def poll(self):
            return 0

        def wait(self):
            return 0

    inj.cpu, inj.hogs = 1, [(FakeProc(), str(log), [])]
    rows = inj.collect()
    assert [(r["sport"], r["t_ns"]) for r in rows] == [(40000, 1000), (40002, 3400)]
    assert all(r["kind"] == "runq_delay" and "burst_ns=" in r["detail"] for r in rows)


def test_synack_record_is_reported_from_the_client_side():
    r = FaultRecord("synack", "127.0.0.1", 9999, "127.0.0.2", 40001, 1, 0, 0, 2)
    assert r.client_side() == ("127.0.0.2", 40001, "127.0.0.1", 9999)


def test_write_ground_truth_sorts_by_time(tmp_path):
    from spiketrace.scenarios.base import gt_row

    write_ground_truth(tmp_path, [gt_row(5, "reset", "x"), gt_row(1, "reset", "y")])
    assert pd.read_parquet(tmp_path / "ground_truth.parquet")["t_ns"].tolist() == [1, 5]
