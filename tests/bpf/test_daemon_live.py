"""The daemon in production, on a traced load with known spikes (a tc filter drops the first SYN
of every other connection, in a private network namespace): the spikes it explains live are
the ones the post-mortem `spiketrace report` of the same recording explains, in the same words,
and the Prometheus endpoint, scraped with a real HTTP client during the load, ends with the
recording's own counts."""
from __future__ import annotations

import subprocess
import threading
import time

import pandas as pd
import pytest

from common.rundir import RunDir
from daemon_helpers import SPIKETRACE, TraceProc, free_port
from netfault_helpers import Server, connect_concurrently, private_ns
from spiketrace.metrics import scrape, value
from spiketrace.scenarios import SCENARIOS

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]


def _traced_load(tmp_path):
    """The load, traced: (trace process, its recording, the client ports whose SYN was dropped,
    the scrapes during the load, the final scrape, its exit code)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out, port = tmp_path / "run", free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    sc = SCENARIOS["syn-loss"]
    scrapes = []
    with private_ns("live", sc.sysctls) as ns, Server(ns, echo=100):
        trace = TraceProc(["--netns", ns.name, "--port", "9999", "--json", "--out", str(out),
                           "--metrics", f"127.0.0.1:{port}", "--summary-interval", "1s"])
        try:
            trace.wait_ready()
            (tmp_path / "inj").mkdir()
            inj = sc.setup(ns, tmp_path / "inj", drop_every=2)
            try:
                load = threading.Thread(target=connect_concurrently, args=(ns, 8),
                                        kwargs={"send": 100, "stagger_s": 0.05})
                load.start()
                while load.is_alive():  # scraped while the load runs
                    scrapes.append(scrape(url))
                    time.sleep(0.2)
                load.join()
                dropped = {r.sport for r in inj.fault.records()}
            finally:
                inj.teardown()
            trace.wait_for(lambda: len(trace.json_lines("spike")) >= len(dropped)
                           or value(scrape(url), "spiketrace_lost_events_total", kind="missed_state_change"),
                           what="the live spikes")
            time.sleep(1.5)  # one more live tick: nothing else may come
            final = scrape(url)
            rc = trace.finish()
        finally:
            trace.kill()
    return trace, out, dropped, scrapes, final, rc


def _skipped_runs(out) -> int:
    """Probe runs the kernel skipped, as the recording counts them (a connection's missed state
    change, recursion misses): the one loss that is the platform's, not the tracer's."""
    counts = RunDir.open(out).meta.counts
    return sum(int(v) for k, v in counts.items()
               if k == "lost_missed_state_change" or k.startswith("lost_missed:"))


def test_live_spikes_and_metrics_agree_with_the_recording(tmp_path):
    # This VM's kernel once (1 run in ~30) skipped every probe run of a softirq that had
    # interrupted another process: a SYN retransmit and the ESTABLISHED after it went unseen,
    # with no recursion miss counted. The tracer now detects it (the connection's next change
    # starts from a state it never saw) and counts it as lost; such a load's ground truth is
    # incomplete, so it is traced once more, and the second must hold every assertion.
    trace, out, dropped, scrapes, final, rc = _traced_load(tmp_path / "1")
    if rc == 0 and _skipped_runs(out):
        trace, out, dropped, scrapes, final, rc = _traced_load(tmp_path / "2")
    assert rc == 0, trace.stderr
    assert len(dropped) == 4 and len(scrapes) >= 2
    assert all(value(s, "process_cpu_seconds_total") is not None for s in scrapes)

    live = trace.json_lines("spike")
    assert all(not s["open"] for s in live)
    assert {s["client"]["port"] for s in live} == dropped
    report = subprocess.run([SPIKETRACE, "report", str(out), "--format", "parquet,json"],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    expl = pd.read_parquet(out / "explanations.parquet")
    post = {(int(r.local_port), int(r.t_start), r.cause, r.cause_detail, r.sentence) for r in expl.itertuples()}
    now = {(s["client"]["port"], s["t_start_ns"], s["cause"], s["cause_detail"], s["sentence"]) for s in live}
    assert now == post
    assert {s["cause"] for s in live} == {"syn_retransmit"}
    assert all("dropped by a tc ingress filter" in s["sentence"] for s in live)
    assert all(s["client"]["pid"] > 0 and s["latency_ms"] > 900 for s in live)

    run = RunDir.open(out)
    ev = run.table("events")
    syn = int(((ev["kind"] == "retransmit") & (ev["state"] == 2)).sum())
    counters = run.table("counters").sort_values("t_ns")
    kernel_syn = counters[counters["name"] == "TcpExt.TCPSynRetrans"]["value"]
    assert value(final, "spiketrace_spikes_total", cause="syn_retransmit") == len(expl) == 4
    assert value(final, "spiketrace_spikes_total", cause="unexplained") == 0
    assert value(final, "spiketrace_retransmits_total", type="syn") == syn == 4
    assert value(final, "spiketrace_events_total", kind="retransmit") == int((ev["kind"] == "retransmit").sum())
    assert value(final, "spiketrace_kernel_syn_retransmits_total") == kernel_syn.iloc[-1] - kernel_syn.iloc[0]
    assert value(final, "spiketrace_connections_total") == run.meta.counts["connections_counted"] == 16
    assert value(final, "spiketrace_connections_recorded_total") == run.meta.counts["connections_sent"]
    assert value(final, "spiketrace_lost_events_total", kind="all") == run.meta.lost_events == 0
    assert value(final, "spiketrace_probe_up", evidence="retransmit", backend=run.meta.probes["retransmit"]) == 1
    assert value(final, "spiketrace_recording_ok") == 1
    assert value(final, "process_resident_memory_bytes") > 10e6
    # counters only grow, from scrape to scrape
    firsts = [value(s, "spiketrace_connections_total") for s in scrapes + [final]]
    assert firsts == sorted(firsts)
    summaries = trace.json_lines("summary")
    assert summaries and summaries[-1]["spikes"] == {"syn_retransmit": 4}
