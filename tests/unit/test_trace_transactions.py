"""`spiketrace trace` runs without an application log: every kernel connection is a transaction
(client rows preferred, server rows merged or standing in), the spike rule's population comes
from the kernel histograms, and the reports say how many connections were only counted."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from analysis import AnalysisOptions, analyse
from analysis.kernel import hist_median_ns, hist_percentile, kernel_connections, range_text
from common import rundir
from spiketrace.commands.report import command as report_cmd
from common.rundir import RunDir
from tests.helpers.trace_synthetic import (ACCEPTED, GAP, MS, RESET, S, SLOW_LIFETIME, TIME_WAIT, US, ClosedLoopApp,
                                          TraceRun)


def test_report_of_a_trace_run_without_spikes_writes_typed_explanations(tmp_path):
    """The known crash: an empty explanations table reached write_table with a float64
    evidence_events column where the schema wants list<int64> (ArrowNotImplementedError)."""
    run = TraceRun(tmp_path / "run")
    for i in range(3):  # sent because slower than 50 ms, but no spike at 100 ms
        run.conn(cport=41000 + i, t_open=run.meta.clock_monotonic_ns + i * S, est_ns=30 * US, life_ns=60 * MS)
    run.histogram("lifetime_ns", [400 * US] * 500 + [60 * MS] * 3)
    path = run.write()
    res = CliRunner().invoke(report_cmd, [str(path), "--format", "md,json,parquet"])
    assert res.exit_code == 0, res.output
    schema = pq.read_schema(next((path / "explanations.parquet").glob("*.parquet")))
    assert schema.field("evidence_events").type == pa.list_(pa.int64())
    assert RunDir.open(path).table("explanations").empty
    assert json.loads((path / "summary.json").read_text())["counts"]["spikes"] == 0


def test_client_and_server_rows_of_one_connection_make_one_transaction(tmp_path):
    run = TraceRun(tmp_path / "run")
    t0 = run.meta.clock_monotonic_ns
    run.conn(cport=41000, t_open=t0, est_ns=30 * US, life_ns=300 * MS, pid=11)
    run.conn(cport=41000, t_open=t0 + 40 * US, est_ns=5 * US, life_ns=299 * MS, role="server", pid=22,
             flags=SLOW_LIFETIME | ACCEPTED)
    # the same client port reused much later by another connection: not the same one
    run.conn(cport=41000, t_open=t0 + 70 * S, est_ns=5 * US, life_ns=200 * MS, role="server", pid=22)
    # a remote client (not local): only the server side was seen
    run.conn(cport=52000, t_open=t0 + 2 * S, est_ns=5 * US, life_ns=150 * MS, role="server", pid=22)
    run.write()
    k = kernel_connections(RunDir.open(run.path).table("connections"))
    assert sorted(k["seen"]) == ["both", "server", "server"]
    both = k[k["seen"] == "both"].iloc[0]
    assert (both["cport"], both["sport"], both["pid"], both["server_pid"], both["t_open"]) == (41000, 9999, 11, 22, t0)
    result = analyse(RunDir.open(run.path), AnalysisOptions(relative=0))
    assert sorted(result.explanations["local_port"]) == [41000, 41000, 52000]
    assert any("no lifetime histogram" in w for w in result.warnings)
    assert result.summary["trace"]["seen"] == {"both": 1, "server": 2}


def test_a_record_missing_its_established_is_a_slow_connect_not_an_abandoned_one(tmp_path):
    """The kernel skipped the probe runs of a SYN retransmit and of the ESTABLISHED after it (seen
    once on this VM, in a softirq that interrupted another process): the client's record has no
    ESTABLISHED and no retransmit, and no server record stands in. Its next change, from
    ESTABLISHED, tells the tracer one was missed (CONN_GAP); its first write bounds the
    handshake, so it is the SYN retransmit it was, inferred and saying the record is incomplete,
    not a connect the client abandoned."""
    run = TraceRun(tmp_path / "run")
    t0 = run.meta.clock_monotonic_ns
    for i in range(20):
        run.conn(cport=42000 + i, t_open=t0 + i * 10 * MS, est_ns=30 * US, life_ns=60 * MS)
    run.histogram("lifetime_ns", [400 * US] * 500 + [S])
    run.counter("TcpExt.ListenOverflows", t0 + S + 20 * MS, 1)
    row = run.conn(cport=41000, t_open=t0 + S, est_ns=-1, life_ns=1005 * MS, resets=0,
                   flags=SLOW_LIFETIME | TIME_WAIT | GAP)
    row["t_first_write"] = t0 + S + 1001 * MS
    run.write()
    k = kernel_connections(RunDir.open(run.path).table("connections"))
    assert k[k["cport"] == 41000]["t_established"].iloc[0] == t0 + S + 1001 * MS
    result = analyse(RunDir.open(run.path), AnalysisOptions(relative=0))
    e = result.explanations
    assert list(e["local_port"]) == [41000] and not any("carried no request" in w for w in result.warnings)
    assert (e["cause"].iloc[0], e["cause_detail"].iloc[0], bool(e["inferred"].iloc[0])) == \
        ("syn_retransmit", "listen_overflow", True)
    assert "the tracer missed a state change of this connection" in e["sentence"].iloc[0]


def test_spike_rule_takes_the_median_of_every_connection_from_the_histogram(tmp_path):
    """Only slow connections are sent: their own median (1 s here) would hide every spike; the
    kernel's lifetime histogram holds every connection (median ~0.4 ms)."""
    app = ClosedLoopApp(workers=2, n=400, spikes={(0, 50): 1.0, (1, 120): 1.0, (1, 300): 2.0})
    run = TraceRun(tmp_path / "run")
    app.record(run)
    run.write()
    result = analyse(RunDir.open(run.path))
    expl = result.explanations
    assert len(expl) == 3
    assert set(expl["cause"]) == {"syn_retransmit"} and set(expl["cause_detail"]) == {"listen_overflow"}
    assert 0.2 < result.summary["median_ms"] < 1.0
    assert result.summary["run"]["source"] == "connections"
    worst = expl.iloc[0]
    assert worst["latency_ns"] > 2 * S and "2 times" in worst["sentence"]


def test_histogram_percentiles_are_bucket_ranges():
    """Buckets are bpf_log2l's (floor(log2 v) + 1): bucket b holds [2^(b-1), 2^b) ns."""
    h = np.zeros(64, dtype=np.int64)
    h[11], h[21], h[31] = 50, 45, 5  # [1024, 2048) ns, [1.05, 2.1) ms, [1.07, 2.15) s
    assert hist_percentile(h, 50) == (1024.0, 2048.0)
    assert hist_percentile(h, 51) == (2.0 ** 20, 2.0 ** 21)
    assert hist_percentile(h, 99) == (2.0 ** 30, 2.0 ** 31)
    assert 1024 <= hist_median_ns(h) < 2048
    assert range_text(0.524, 1.05) == "524 us-1.05 ms" and range_text(1.07, 2.15) == "1.07-2.15 ms"


def test_trace_reports_say_how_many_connections_were_only_counted(tmp_path):
    app = ClosedLoopApp(workers=1, n=500, spikes={(0, 10): 1.0})
    run = TraceRun(tmp_path / "run")
    app.record(run)
    path = run.write(counted=1000)
    res = CliRunner().invoke(report_cmd, [str(path)])
    assert res.exit_code == 0, res.output
    summary = json.loads((path / "summary.json").read_text())
    tr = summary["trace"]
    assert (tr["connections_counted"], tr["connections_sent"], tr["connections_only_counted"]) == (1000, 1, 999)
    life = {h["name"]: h for h in tr["histograms"]}["lifetime_ns"]
    assert life["count"] == 1000 and life["p50_ms"][0] < 0.5 < life["p50_ms"][1]
    md = (path / "report.md").read_text()
    assert "sent 1 in detail" in md and "999 were only counted" in md
    assert "Kernel histograms (all connections, approximate)" in md and "log2 histograms" in md
    html = (path / "report.html").read_text()
    assert "999 were only counted" in html and "Kernel histograms" in html
    assert "were only counted" in res.output


def test_a_reset_that_ends_a_closed_connection_is_no_cause(tmp_path):
    """The original server closes with SO_LINGER {1, 0}: the client, already in FIN_WAIT1,
    receives a RST. That ends the connection; it delayed nothing."""
    run = TraceRun(tmp_path / "run")
    t0 = run.meta.clock_monotonic_ns
    row = run.conn(cport=41000, t_open=t0, est_ns=30 * US, life_ns=180 * MS, flags=SLOW_LIFETIME | RESET)
    run.event("reset_received", row["t_close"] - 3 * US, cport=41000, state=4)
    run.histogram("lifetime_ns", [400 * US] * 100)
    run.write()
    expl = analyse(RunDir.open(run.path)).explanations
    assert expl["cause"].tolist() == ["unexplained"]
    assert "reset" not in expl["causes"].iloc[0]


def test_refused_connections_are_failed_connects(tmp_path):
    from tests.helpers.trace_synthetic import REFUSED

    run = TraceRun(tmp_path / "run")
    t0 = run.meta.clock_monotonic_ns
    run.conn(cport=41000, t_open=t0, est_ns=-1, life_ns=200 * MS, flags=REFUSED | RESET | SLOW_LIFETIME)
    run.histogram("lifetime_ns", [400 * US] * 100)
    run.write()
    result = analyse(RunDir.open(run.path))
    assert result.summary["counts"]["outcomes"] == {"connect_failed": 1}
    assert rundir.SCHEMAS["explanations"].names == list(
        RunDir.open(run.path).table("explanations").columns)


def test_explain_shows_a_kernel_connection_timeline(tmp_path):
    from analysis.timeline import explain_transaction

    app = ClosedLoopApp(workers=1, n=100, spikes={(0, 10): 1.0})
    run = TraceRun(tmp_path / "run")
    app.record(run)
    run.write()
    tl = explain_transaction(RunDir.open(run.path), 0)
    texts = [r["text"] for r in tl.rows]
    assert texts[0] == "SYN sent (connection opened)" and "connection closed" in texts
    assert any(t.startswith("SYN retransmit") for t in texts)
    assert tl.slow and tl.explanation["cause"] == "syn_retransmit"


def test_a_connection_seen_after_its_open_is_not_a_spike_of_its_past(tmp_path):
    """Tracing started while the connection was open (flag partial, t_open 0): its latency
    counts from when the kernel first knew it, not from the epoch of the monotonic clock."""
    from tests.helpers.trace_synthetic import RETRANS

    run = TraceRun(tmp_path / "run")
    t0 = run.meta.clock_monotonic_ns
    row = run.conn(cport=41000, t_open=t0, est_ns=0, life_ns=3 * MS, flags=0x40 | RETRANS)
    row["t_open"], row["t_established"] = 0, 0
    run.histogram("lifetime_ns", [400 * US] * 100)
    run.write()
    result = analyse(RunDir.open(run.path), AnalysisOptions(relative=0))
    assert result.summary["counts"]["spikes"] == 0 and result.latency_ns.max() == 0
    assert result.summary["counts"]["outcomes"] == {"ok": 1}
