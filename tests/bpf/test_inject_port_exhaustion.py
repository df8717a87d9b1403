"""port-exhaustion: with the scenario's sysctls, connect() fails with EADDRNOTAVAIL once the
100 local ports sit in TIME_WAIT -- and only if the server does not use SO_LINGER {1,0}. The
tracer, which infers connect() errors from the client socket's SYN_SENT -> CLOSE (no syscall
tracepoint), must report each stall as one EADDRNOTAVAIL streak of the client's exact count."""
from __future__ import annotations

import errno
import os
import socket
import time

import pandas as pd
import pytest

from netfault_helpers import PORT, Server, private_ns
from common.rundir import TableWriter
from spiketrace.scenarios import SCENARIOS
from tests.bpf.tracer_helpers import read_table, start_tracer
from tracer.session import TracerConfig

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]


def serial_transactions(ns, n, writer=None):
    """The seed's client loop (busy connect retry on the same socket), recording rows."""
    rows = []
    with ns.inside():
        for i in range(n):
            s = socket.socket()
            t0, attempts, last = time.monotonic_ns(), 0, 0
            while True:
                attempts += 1
                err = s.connect_ex(("127.0.0.1", PORT))
                if err == 0:
                    break
                assert err == errno.EADDRNOTAVAIL, os.strerror(err)
                last = err
                assert time.monotonic_ns() - t0 < 5e9, "exhaustion lasted > 5 s"
            t1 = time.monotonic_ns()
            local_port = s.getsockname()[1]
            s.sendall(b"a" * 100)
            s.recv(100)
            s.close()
            row = {"id": i, "worker": 0, "pid": os.getpid(), "local_addr": "127.0.0.1",
                   "local_port": local_port, "remote_addr": "127.0.0.1", "remote_port": PORT,
                   "t_start": t0, "t_connected": t1, "t_reply1": 0, "t_reply2": 0,
                   "t_end": time.monotonic_ns(), "connect_attempts": attempts,
                   "last_errno": last, "outcome": "ok"}
            rows.append(row)
    return rows


def test_exhaustion_with_scenario_settings(tmp_path):
    sc = SCENARIOS["port-exhaustion"]
    assert sc.server_overrides == {"linger": False}
    with private_ns("ports", sc.sysctls) as ns, Server(ns, echo=100, linger=False):
        inj = sc.setup(ns, tmp_path)
        tracer = None
        try:
            (tmp_path / "trace").mkdir()
            tracer = start_tracer(TracerConfig(ports=[PORT], netns_inum=ns.inum),
                                  tmp_path / "trace")
            rows = serial_transactions(ns, 110)
            tw = int(ns.read_proc_net("sockstat").split("tw ")[1].split()[0])
            with TableWriter(tmp_path, "transactions") as w:
                for r in rows:
                    w.append(r)
        finally:
            stats = tracer.stop() if tracer else None
            inj.teardown()
    stalled = [r for r in rows if r["connect_attempts"] > 1]
    # ports 40000-40099: the 101st connection finds them all in TIME_WAIT
    assert [r["id"] for r in stalled][:1] == [100]
    assert tw >= 95
    stall_s = (stalled[0]["t_connected"] - stalled[0]["t_start"]) / 1e9
    assert 0.5 <= stall_s <= 1.5, stall_s  # until the oldest TIME_WAIT is 1 s old
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    assert set(gt["kind"]) == {"port_exhaustion"}
    assert sorted(gt["t_ns"]) == sorted(r["t_start"] for r in stalled)
    assert set(gt["sport"]) == {r["local_port"] for r in stalled}
    assert inj.params["transactions_exhausted"] == len(stalled)
    # the tracer: one streak per stalled transaction, ended by its successful connect()
    assert stats.lost_events == 0
    streaks = read_table(tmp_path / "trace", "events").query("kind == 'connect_error'")
    streaks = streaks.sort_values("t_ns")
    assert list(streaks.reason) == [errno.EADDRNOTAVAIL] * len(stalled)
    assert list(streaks.value) == [r["connect_attempts"] - 1 for r in stalled]
    assert (streaks.pid == os.getpid()).all() and (streaks.dport == PORT).all()
    for (_, e), r in zip(streaks.iterrows(), stalled):
        assert r["t_start"] <= e.value2 <= e.t_ns <= r["t_connected"]


def test_linger_prevents_time_wait_so_no_exhaustion(tmp_path):
    """Why the scenario turns linger off: the server's RST ends the client's FIN_WAIT2."""
    sc = SCENARIOS["port-exhaustion"]
    with private_ns("linger", sc.sysctls) as ns, Server(ns, echo=100, linger=True):
        rows = serial_transactions(ns, 150)
        tw = int(ns.read_proc_net("sockstat").split("tw ")[1].split()[0])
    assert tw == 0
    assert all(r["connect_attempts"] == 1 for r in rows)
