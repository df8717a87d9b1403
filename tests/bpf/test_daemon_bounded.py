"""Days in minutes: many short-lived client processes (a new process every 20 connections) and a
recording that fills its --max-size many times over. The kernel's map of learned pids stays
at the processes alive (the sweep forgets the rest), and the disk stays within --max-size plus
about one segment, the oldest segments pruned, every segment left a complete run directory."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from common.rundir import RunDir
from daemon_helpers import TraceProc, free_port
from netfault_helpers import private_ns
from spiketrace.metrics import scrape, value
from spiketrace.segments import dir_bytes

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]
ROOT = Path(__file__).resolve().parents[2]
MAX = 256 * 1024


@pytest.fixture(scope="module")
def load_exe(tmp_path_factory):
    exe = tmp_path_factory.mktemp("load") / "daemon_load"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "benchmarks/daemon_load.c")], check=True)
    return exe


def test_pids_map_and_recording_stay_bounded(tmp_path, load_exe):
    port, out = free_port(), tmp_path / "rec"
    url = f"http://127.0.0.1:{port}/metrics"
    with private_ns("bounded") as ns:
        server = subprocess.Popen(["ip", "netns", "exec", ns.name, str(load_exe), "server", "9999"])
        trace = TraceProc(["--port", "9999", "--netns", ns.name, "--out", str(out), "--quiet",
                           "--metrics", f"127.0.0.1:{port}", "--expire-interval", "1s",
                           "--max-size", str(MAX), "--segment-length", "2s",
                           "--threshold", "0.001ms"])  # every connection recorded: the disk fills
        try:
            trace.wait_ready()
            load = subprocess.run(["ip", "netns", "exec", ns.name, str(load_exe), "client", "9999",
                                   "1500", "6", "20"], capture_output=True, text=True, timeout=60)
            assert load.returncode == 0 and " failed 0 " in load.stdout, load.stdout + load.stderr
            children = int(load.stdout.split("children")[1])
            time.sleep(2.5)  # two sweeps after the last client exited
            m = scrape(url)
            time.sleep(2.5)  # and one more rotation
            rc = trace.finish(signal.SIGTERM)
        finally:
            trace.kill()
            server.kill()
            server.wait()
    assert rc == 0, trace.stderr
    assert children >= 400
    assert value(m, "spiketrace_pids_expired_total") >= children - 5
    assert value(m, "spiketrace_map_slots_used", map="pids_learned") <= 5
    assert value(m, "spiketrace_connections_recorded_total") >= 2 * 9000 * 0.95
    assert value(m, "spiketrace_segments_pruned_total") >= 1
    assert value(m, "spiketrace_lost_events_total", kind="all") == 0
    segments = sorted(p for p in out.iterdir() if p.is_dir() and not p.is_symlink())
    assert dir_bytes(out) <= MAX + MAX // 8 + 64 * 1024, [(p.name, dir_bytes(p)) for p in segments]
    assert int(segments[0].name[:6]) > 1  # the first segments were pruned
    for seg in segments:
        run = RunDir.open(seg)
        assert run.meta.status == "complete", seg
        assert run.meta.counts["connections"] == len(run.table("connections"))
