"""The daemon's recording health as its metrics show it: an outage whose first failure is
meta.json's (a full disk: meta.json is rewritten every few seconds, table parts only when rows
come) makes spiketrace_recording_ok 0 at once (it stayed 1 until a table part failed too: the
daemon had already said 'No space left on device'), and 1 again when meta.json is written."""
from __future__ import annotations

import io

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from rich.console import Console

from spiketrace.daemon import Daemon, TraceOptions
from spiketrace.metrics import DaemonCollector


def health(daemon):
    got = {}
    for fam in DaemonCollector(daemon)._health(CounterMetricFamily, GaugeMetricFamily):
        for sample in fam.samples:
            got[sample.name] = sample.value
    return got


def test_a_failing_meta_json_makes_the_recording_not_ok():
    out = io.StringIO()
    daemon = Daemon(TraceOptions(ports=[9999]), Console(file=out, width=200))
    assert health(daemon)["spiketrace_recording_ok"] == 1
    daemon.write_state("meta", "[Errno 28] No space left on device")
    assert "No space left on device" in out.getvalue()
    h = health(daemon)
    assert h["spiketrace_recording_ok"] == 0 and h["spiketrace_write_errors_total"] >= 1
    daemon.write_state("meta", None)
    assert health(daemon)["spiketrace_recording_ok"] == 1
    assert "writing again" in out.getvalue()
