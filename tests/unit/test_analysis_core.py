"""Spike detection, option parsing, the decomposition sweep, ground-truth accuracy and the
reader's error cases, on synthetic run directories."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import AnalysisOptions, analyse
from analysis.decompose import attribute
from analysis.facts import syn_retransmit_times_s
from analysis.options import parse_duration_ms, parse_percentile, parse_relative
from common.meta import FORMAT_VERSION
from common import rundir
from common.errors import SpikeTraceError
from common.rundir import RunDir
from tests.helpers.synthetic import MS, S, SyntheticRun


def test_option_parsers():
    assert parse_duration_ms("100ms") == 100 and parse_duration_ms("1s") == 1000
    assert parse_duration_ms("250us") == 0.25 and parse_duration_ms("42") == 42
    assert parse_relative("10x") == 10 and parse_relative("0") == 0
    assert parse_percentile("p99.9") == 99.9 and parse_percentile("off") is None
    for bad, parse in (("fast", parse_duration_ms), ("x10", parse_relative), ("150", parse_percentile)):
        with pytest.raises(SpikeTraceError, match="invalid"):
            parse(bad)


def test_syn_backoff_schedules():
    """FACT syn-backoff: exponential (1, 3, 7, 15; 3, 9, 21, 45 on 2.6) and 6.5's linear start."""
    assert syn_retransmit_times_s(1.0, 0, 4) == [1, 3, 7, 15]
    assert syn_retransmit_times_s(3.0, 0, 4) == [3, 9, 21, 45]
    assert syn_retransmit_times_s(1.0, 4, 7) == [1, 2, 3, 4, 5, 7, 11]


def _latency_run(tmp_path, latencies_ms):
    run = SyntheticRun(tmp_path / "run")
    for ms in latencies_ms:
        run.txn(connect_ms=ms / 3, ex1_ms=ms / 3, ex2_ms=ms / 3, close_ms=0)
    return RunDir.open(run.write())


def test_spikes_must_pass_every_enabled_test(tmp_path):
    lat = [0.3] * 200 + [2.0, 50.0, 150.0, 1000.0]
    run = _latency_run(tmp_path, lat)
    slow = lambda opts: sorted(np.round(analyse(run, opts).explanations["latency_ns"] / 1e6, 1))
    assert slow(AnalysisOptions()) == [150.0, 1000.0]  # >= 100 ms and > 10x the 0.3 ms median
    assert slow(AnalysisOptions(threshold_ms=0)) == [50.0, 150.0, 1000.0]  # > 3 ms only
    assert slow(AnalysisOptions(threshold_ms=1, relative=0)) == [2.0, 50.0, 150.0, 1000.0]
    assert slow(AnalysisOptions(threshold_ms=1, relative=0, percentile=99.9)) == [1000.0]
    # a slow median raises the bar: 120 ms on a 100 ms median is not a spike
    run2 = _latency_run(tmp_path / "b", [100.0] * 50 + [120.0, 1500.0])
    assert sorted(np.round(analyse(run2).explanations["latency_ns"] / 1e6)) == [1500.0]


def test_attribute_gives_each_instant_to_the_highest_priority_cause():
    ti = np.array([0, 0, 0, 1])
    prio = np.array([2, 0, 1, 1])
    a = np.array([0, 50, 80, 10])
    b = np.array([100, 60, 120, 20])
    out = attribute(ti, prio, a, b, 3)
    got = {(int(t), int(p)): int(n) for t, p, n in out.itertuples(index=False)}
    # txn 0: prio 0 owns 50-60, prio 1 owns 80-120, prio 2 the rest of 0-100 (0-50, 60-80)
    assert got == {(0, 0): 10, (0, 1): 40, (0, 2): 70, (1, 1): 10}


def test_ground_truth_precision_and_recall(tmp_path):
    run = SyntheticRun(tmp_path / "run")
    run.normal(30)
    dropped = []
    for _ in range(3):
        t = run.txn(connect_ms=1000.1)
        run.event("retransmit", t["t_start"] + S, t, state=2)
        run.ground_truth("syn_drop", t["t_start"] + 10_000, sport=t["local_port"])
        dropped.append(t)
        run.normal(5)
    # an injected drop that did not slow its transaction: injected, but no miss
    quiet = run.txn()
    run.ground_truth("syn_drop", quiet["t_start"] + 10_000, sport=quiet["local_port"])
    # an injected drop whose slow transaction got another cause: a miss (and a false positive)
    t = run.txn(connect_ms=1000.1)
    run.event("synack_retransmit", t["t_start"] + S, t, side="server", state=3)
    run.ground_truth("syn_retransmit", t["t_start"] + 10_000, sport=t["local_port"])
    # a natural run-queue delay, not injected: named but not scored against syn_retransmit
    t = run.txn(ex1_ms=150.2)
    run.event("runq_delay", t["t_connected"] + 150 * MS, None, pid=run.client_pid, value=150 * MS)
    run.ground_truth("mystery_fault", t["t_start"], sport=t["local_port"])
    result = analyse(RunDir.open(run.write()))
    acc = result.accuracy.set_index("cause")
    assert list(acc.index) == ["syn_retransmit"]
    row = acc.loc["syn_retransmit"]
    assert (row.injected, row.truth, row.predicted, row.tp, row.fp, row.fn) == (5, 4, 3, 3, 0, 1)
    assert row.precision == 1.0 and row.recall == 0.75
    assert any("mystery_fault" in w for w in result.warnings)
    assert result.summary["accuracy"][0]["recall"] == 0.75


def test_ground_truth_for_every_transaction(tmp_path):
    """sport 0 marks every spike (cpu-contention injects into everything)."""
    run = SyntheticRun(tmp_path / "run")
    run.normal(30)
    for _ in range(2):
        t = run.txn(ex1_ms=120.2)
        run.event("runq_delay", t["t_connected"] + 120 * MS, None, pid=run.client_pid, value=119 * MS)
    run.txn(ex1_ms=150.2)  # slow for another reason: a miss of runq_delay's recall
    run.ground_truth("runq_delay", run.cursor, sport=0)
    result = analyse(RunDir.open(run.write()))
    row = result.accuracy.set_index("cause").loc["runq_delay"]
    assert (row.truth, row.tp, row.fn) == (3, 2, 1)


def test_missing_transactions_names_the_file(tmp_path):
    run = SyntheticRun(tmp_path / "run")
    path = run.write()  # no rows at all
    with pytest.raises(SpikeTraceError, match=r"transactions\.parquet: missing or empty"):
        analyse(RunDir.open(path))


def test_truncated_part_names_the_file(tmp_path):
    run = SyntheticRun(tmp_path / "run")
    run.normal(10)
    run.event("retransmit", run.cursor, run.txns[0], state=1)
    path = run.write()
    part = next((path / "events.parquet").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(SpikeTraceError, match=rf"{part.name}: unreadable, truncated or damaged"):
        analyse(RunDir.open(path))


def test_newer_format_version_is_refused(tmp_path):
    run = SyntheticRun(tmp_path / "run")
    run.normal(5)
    path = run.write()
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SpikeTraceError, match=r"meta\.json: format version .* is newer"):
        RunDir.open(path)


def test_interrupted_run_is_analysed_with_warnings(tmp_path):
    run = SyntheticRun(tmp_path / "run", status="interrupted", counts=False)
    run.normal(20)
    t = run.txn(connect_ms=1000.1)
    run.event("retransmit", t["t_start"] + S, t, state=2)
    result = analyse(RunDir.open(run.write()))
    assert result.explanations["cause"].tolist() == ["syn_retransmit"]
    text = " ".join(result.warnings)
    assert "marked 'interrupted'" in text and "no counts" in text and "lost events are unknown" in text
    assert result.summary["counts"]["counts_recorded"] is False


def test_rows_written_without_some_fields_and_old_parts_missing_a_column(tmp_path):
    """TableWriter rows that omit fields (nulls) and a part from an older writer without a
    column: read with defaults, analysed, and the missing column named in a warning."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "run"
    rundir.create_run_dir(path)
    with rundir.TableWriter(path, "transactions", prefix="w0") as w:
        for i in range(20):
            t0 = 10 * S + i * 10 * MS
            lat = 1000 * MS if i == 7 else 300_000
            w.append({"id": i, "pid": 5, "local_addr": "127.0.0.1", "local_port": 40000 + i,
                      "remote_addr": "127.0.0.1", "remote_port": 9999, "t_start": t0, "t_connected": t0 + lat,
                      "t_end": t0 + lat + 1000, "outcome": "ok"})
    old = pa.table({"t_ns": [10 * S + 70 * MS + S], "kind": ["retransmit"], "saddr": ["127.0.0.1"],
                    "sport": pa.array([40007], pa.int32()), "daddr": ["127.0.0.1"],
                    "dport": pa.array([9999], pa.int32()), "state": pa.array([2], pa.int32())})
    (path / "events.parquet").mkdir()
    pq.write_table(old, path / "events.parquet" / "part-000001.parquet")
    meta = rundir.new_meta("bench")
    meta.status = "complete"
    rundir.write_meta(path, meta)
    result = analyse(RunDir.open(path))
    assert result.explanations["cause"].tolist() == ["syn_retransmit"]
    assert any("no column value2" in w for w in result.warnings)


def test_trace_run_without_bench_records_explains_kernel_connections(tmp_path):
    """`spiketrace trace` runs have connections.parquet, not transactions: the kernel's client
    connections (open -> close) are explained the same way."""
    import pandas as pd

    path = tmp_path / "run"
    rundir.create_run_dir(path)
    base = 50 * S
    rows = []
    for i in range(30):
        t0 = base + i * 10 * MS
        slow = i == 12
        est = t0 + (S if slow else 100_000)
        rows.append({"netns": 1, "role": "client", "pid": 77, "comm": "app", "saddr": "10.0.0.1",
                     "sport": 50000 + i, "daddr": "10.0.0.2", "dport": 5432, "t_open": t0,
                     "t_established": est, "t_first_data": est + 50_000, "t_close": est + 200_000,
                     "syn_retrans": int(slow), "retrans": 0, "resets": 0, "flags": 0})
    rundir.write_table(path, "connections", pd.DataFrame(rows))
    rundir.write_table(path, "events", pd.DataFrame([{
        "t_ns": base + 12 * 10 * MS + S, "kind": "retransmit", "pid": 0, "comm": "", "netns": 1,
        "saddr": "10.0.0.1", "sport": 50012, "daddr": "10.0.0.2", "dport": 5432, "state": 2,
        "new_state": 0, "reason": 0, "value": 1, "value2": 0}]))
    meta = rundir.new_meta("trace")
    meta.status = "complete"
    meta.counts = {"events": 1, "lost_events": 0}
    rundir.write_meta(path, meta)
    result = analyse(RunDir.open(path))
    assert result.explanations["cause"].tolist() == ["syn_retransmit"]
    assert result.explanations["local_port"].tolist() == [50012]
    assert result.summary["run"]["source"] == "connections"
    assert any("connections.parquet" in w for w in result.warnings)


def test_a_connection_waiting_for_its_client_thread_is_client_blocked(tmp_path):
    """Head-of-line blocking inside the client (pgbench -j, event loops): thread 4242 sets up
    connection B while connection A, on the same thread, waits; B's SYN is retransmitted, so A's
    request waits ~1 s for the thread. A is explained by the other connection's set-up (its own
    evidence has no SYN retransmit), B by its own SYN retransmit."""
    import pandas as pd

    path = tmp_path / "run"
    rundir.create_run_dir(path)
    base = 50 * S

    def conn(port, t_open, est, first_read, close, syn=0, tid=4242):
        return {"netns": 1, "role": "client", "pid": 77, "comm": "bench", "saddr": "10.0.0.1",
                "sport": port, "daddr": "10.0.0.2", "dport": 5432, "t_open": t_open,
                "t_established": est, "t_first_data": 0, "t_close": close, "syn_retrans": syn,
                "retrans": 0, "resets": 0, "flags": 0, "tid": tid, "t_first_read": first_read}

    rows = [conn(50000 + i, base + i * 10 * MS, base + i * 10 * MS + 100_000, base + i * 10 * MS + 300_000,
                 base + i * 10 * MS + 500_000, tid=5000 + i) for i in range(20)]
    t = base + 300 * MS
    rows.append(conn(51000, t, t + 100_000, t + S + 2 * MS, t + S + 3 * MS))  # A: waits for the thread
    rows.append(conn(51001, t + 200_000, t + S + 200_000, t + S + 1 * MS, t + S + 2 * MS, syn=1))  # B
    rundir.write_table(path, "connections", pd.DataFrame(rows))
    rundir.write_table(path, "events", pd.DataFrame([{
        "t_ns": t + 200_000 + S, "kind": "retransmit", "pid": 0, "comm": "", "netns": 1,
        "saddr": "10.0.0.1", "sport": 51001, "daddr": "10.0.0.2", "dport": 5432, "state": 2,
        "new_state": 0, "reason": 0, "value": 1, "value2": 0}]))
    meta = rundir.new_meta("trace")
    meta.status = "complete"
    meta.counts = {"events": 1, "lost_events": 0}
    rundir.write_meta(path, meta)
    result = analyse(RunDir.open(path), AnalysisOptions(relative=0))
    expl = result.explanations.set_index("local_port")
    a, b = expl.loc[51000], expl.loc[51001]
    assert b.cause == "syn_retransmit"
    assert a.cause == "client_blocked", a.sentence
    assert "client's thread 4242 was busy setting up 1 other connection" in a.sentence
    assert "SYN retransmitted" in a.sentence
    assert a.client_blocked_ns > 0.9 * S


def test_the_server_holding_a_request_is_server_processing_with_its_phases_in_explain(tmp_path):
    """A traced server (conn_life probe) read the request and replied 200 ms later: the slow
    connection is `server_processing`, and `spiketrace explain` shows the read and the reply."""
    import pandas as pd

    from analysis.timeline import explain_transaction

    path = tmp_path / "run"
    rundir.create_run_dir(path)
    base = 50 * S
    rows = []
    for i in range(20):
        t0 = base + i * 300 * MS
        slow = i == 7
        life = 205 * MS if slow else 2 * MS
        est = t0 + 100_000
        common = {"netns": 1, "comm": "x", "saddr": "10.0.0.1", "daddr": "10.0.0.2", "t_first_data": 0,
                  "syn_retrans": 0, "retrans": 0, "resets": 0, "flags": 0}
        rows.append({**common, "role": "client", "pid": 77, "tid": 78, "sport": 50000 + i, "dport": 8080,
                     "t_open": t0, "t_established": est, "t_close": t0 + life})
        read = est + 200_000
        rows.append({**common, "role": "server", "pid": 90, "tid": 91, "saddr": "10.0.0.2", "daddr": "10.0.0.1",
                     "sport": 8080, "dport": 50000 + i, "t_open": est - 50_000, "t_established": est,
                     "t_close": t0 + life, "hold_ns": (200 * MS if slow else 1 * MS),
                     "hold_end": read + (200 * MS if slow else 1 * MS), "hold_tid": 92})
    rundir.write_table(path, "connections", pd.DataFrame(rows))
    meta = rundir.new_meta("trace")
    meta.status = "complete"
    meta.counts = {"events": 0, "lost_events": 0}
    rundir.write_meta(path, meta)
    run = RunDir.open(path)
    result = analyse(run, AnalysisOptions(relative=0))
    e = result.explanations.iloc[0]
    assert len(result.explanations) == 1 and e.local_port == 50007
    assert e.cause == "server_processing" and e.server_processing_ns == 200 * MS
    assert "server held the request 200 ms before replying (thread 92" in e.sentence
    texts = [r["text"] for r in explain_transaction(run, int(e.txn_id), AnalysisOptions(relative=0)).rows]
    assert "read the request (kernel; thread 92)" in texts
    assert "replied after holding it 200 ms (kernel; thread 92)" in texts


def test_a_healthy_trace_is_reported_with_its_counts_and_histograms(tmp_path):
    """`spiketrace trace` on a server with no slow connection: the kernel counted them all and
    sent none in detail. The report says so, with the histograms, and exits 0 (it failed with
    'nothing to analyse' before)."""
    import subprocess
    import sys

    import pandas as pd

    path = tmp_path / "run"
    rundir.create_run_dir(path)
    meta = rundir.new_meta("trace", scenario="trace")
    meta.status = "complete"
    meta.counts = {"events": 0, "connections": 0, "lost_events": 0, "connections_counted": 6000,
                   "connections_sent": 0}
    rundir.write_table(path, "histograms", pd.DataFrame({
        "t_ns": [1, 1], "name": ["lifetime_ns", "connect_ns"], "log2_bucket": [20, 17], "count": [6000, 3000]}))
    rundir.write_meta(path, meta)
    proc = subprocess.run([sys.executable, "-m", "spiketrace.cli", "report", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "the kernel counted 6,000 connections and none was slow" in " ".join(proc.stdout.split())
    assert "connection lifetime" in proc.stdout and "Traceback" not in proc.stderr
    assert (path / "report.html").exists()


def test_connections_that_carried_no_request_are_not_spikes_unless_asked(tmp_path):
    """A load generator's spare connects closed in SYN_SENT at its exit (the full accept queue
    had dropped their SYNs: ListenOverflows grew) and an established connection its client never
    wrote on: neither is a request the server delayed. Left out of the spikes and counted by
    default; with include_idle, explained as idle_connection."""
    import dataclasses

    import pandas as pd

    path = tmp_path / "run"
    rundir.create_run_dir(path)
    base = 50 * S

    def conn(port, est, write, close, role="client"):
        return {"netns": 1, "role": role, "pid": 77, "comm": "ab", "saddr": "10.0.0.1",
                "sport": port, "daddr": "10.0.0.2", "dport": 80, "t_open": base + port * MS,
                "t_established": est, "t_first_data": 0, "t_close": close, "syn_retrans": 0,
                "retrans": 0, "resets": 0, "flags": 2, "tid": 77, "t_first_read": write,
                "t_first_write": write}

    rows = [conn(p, base + p * MS + 50_000, base + p * MS + 60_000, base + p * MS + 300_000) for p in range(1, 40)]
    rows.append(conn(100, 0, 0, base + 100 * MS + 400 * MS))  # abandoned connect
    rows.append(conn(101, base + 101 * MS + 50_000, 0, base + 101 * MS + 2 * S))  # idle
    rows.append(conn(102, base + 102 * MS + 50_000, base + 102 * MS + 60_000, base + 102 * MS + 500 * MS))  # slow, used
    rundir.write_table(path, "connections", pd.DataFrame(rows))
    rundir.write_table(path, "counters", pd.DataFrame([
        {"t_ns": base, "name": "TcpExt.ListenOverflows", "value": 10},
        {"t_ns": base + 100 * MS + 50 * MS, "name": "TcpExt.ListenOverflows", "value": 13}]))
    meta = rundir.new_meta("trace")
    meta.status = "complete"
    meta.probes = {"conn_life": "raw_tracepoint"}
    meta.counts = {"events": 0, "lost_events": 0}
    rundir.write_meta(path, meta)
    opts = AnalysisOptions(relative=0)
    result = analyse(RunDir.open(path), opts)
    assert sorted(result.explanations["local_port"]) == [102]
    assert any("2 slow connection(s) carried no request" in w for w in result.warnings)
    result = analyse(RunDir.open(path), dataclasses.replace(opts, include_idle=True))
    expl = result.explanations.set_index("local_port")
    assert expl.loc[100, "cause"] == "idle_connection" and expl.loc[100, "cause_detail"] == "abandoned"
    assert "gave up connecting after 400 ms" in expl.loc[100, "sentence"]
    assert "ListenOverflows +3" in expl.loc[100, "sentence"]
    assert expl.loc[101, "cause"] == "idle_connection" and expl.loc[101, "cause_detail"] == "no_request"
    assert expl.loc[102, "cause"] == "unexplained"
