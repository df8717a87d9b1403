"""Every meta.json parameter the analysis reads is written by the command that makes the run.

The analysis reads typed parameters (`meta.params.server.backlog`, ...). `READ` is found by
scanning analysis/ for `params.<part>[.<field>]`; each must have been written, with the value the
run used, by a real `spiketrace run --scenario legacy-rto` (which exercises every part: bench
server and client, tracer, counter sampler, a scenario that changes the initial RTO). A new read
of a parameter fails here until its writer is checked too.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from common.rundir import RunDir

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def params_read_by_analysis():
    """{"server.backlog", "counter_hz", ...}: every `params.X` / `params.X.Y` chain in analysis/."""
    found = set()
    for path in (ROOT / "analysis").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "params":
                found.add(node.attr)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "params":
                found.discard(node.value.attr)
                found.add(f"{node.value.attr}.{node.attr}")
    return found


def test_every_parameter_the_analysis_reads_is_written(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "spiketrace.cli", "run", "--scenario", "legacy-rto",
                           "-n", "60", "--no-report", "-o", str(out)], capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = RunDir.open(out).meta.params
    written = {
        "server.backlog": params.server.backlog == 1,
        "client.split_writes": params.client.split_writes is False,
        "client.nodelay": params.client.nodelay is False,
        "tracer.slow_conn_ms": params.tracer.slow_conn_ms == 50.0,
        "counter_hz": params.counter_hz == 20.0,
        "scenario.initial_rto_ms": params.scenario.initial_rto_ms == 3000.0,
        "client": params.client is not None,
        "server": params.server is not None,
        "tracer": params.tracer is not None,
        "scenario": params.scenario is not None and params.scenario.name == "legacy-rto",
    }
    read = params_read_by_analysis()
    assert read, "the scan found no parameter read: it is broken"
    assert read <= set(written), f"read by the analysis but not checked here: {read - set(written)}"
    assert all(written[k] for k in read), {k: written[k] for k in read}
