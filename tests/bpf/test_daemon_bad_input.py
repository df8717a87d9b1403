"""Bad input for the daemon, for real: a --metrics address already in use, an output directory
on a read-only filesystem, and a disk that fills up while tracing (a small tmpfs mounted and
unmounted by the test). Each is one clear line, never a traceback; a full disk keeps the daemon
tracing with the problem in its metrics, and what was on disk before stays readable."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

import pytest

from common.rundir import RunDir
from daemon_helpers import SPIKETRACE, TraceProc, free_port
from netfault_helpers import private_ns
from spiketrace.metrics import scrape, value
from test_daemon_service import PORT, refused_connects

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]


@contextlib.contextmanager
def tmpfs(path, size: str, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "sttest", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_metrics_address_in_use_is_one_line_before_tracing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([SPIKETRACE, "trace", "--port", "80", "--metrics", f"127.0.0.1:{port}",
                               "--out", str(tmp_path / "run"), "--duration", "5s"],
                              capture_output=True, text=True, timeout=60)
    line = one_line_error(proc)
    assert f"--metrics 127.0.0.1:{port}" in line and "address already in use" in line
    assert not (tmp_path / "run").exists()
    line = one_line_error(subprocess.run([SPIKETRACE, "trace", "--metrics", "localhost"],
                                         capture_output=True, text=True, timeout=60))
    assert "ADDRESS:PORT" in line


def test_read_only_output_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        for extra in ([], ["--max-size", "10M"]):
            proc = subprocess.run([SPIKETRACE, "trace", "--port", "80", "--out", str(ro / "run"),
                                   "--duration", "5s", *extra], capture_output=True, text=True, timeout=60)
            line = one_line_error(proc)
            assert str(ro / "run") in line and "Read-only file system" in line
        proc = subprocess.run([SPIKETRACE, "trace", "--port", "80", "--log", str(ro / "x.log"),
                               "--duration", "5s"], capture_output=True, text=True, timeout=60)
        assert "--log" in one_line_error(proc)


def test_full_disk_keeps_tracing_and_keeps_what_was_written(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with private_ns("full") as ns, tmpfs(tmp_path / "small", "2m") as small:
        out = small / "run"
        trace = TraceProc(["--port", str(PORT), "--netns", ns.name, "--out", str(out),
                           "--metrics", f"127.0.0.1:{port}", "--flush-interval", "1s", "-q"])
        try:
            trace.wait_ready()
            refused_connects(ns, 5)
            trace.wait_for(lambda: RunDir.open(out).rows("events") >= 5, timeout=15, what="first parts")
            before = RunDir.open(out).rows("events")
            filler = small / "filler"
            with open(filler, "wb") as fh:  # fill the disk
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * (1 << 16))
                        fh.flush()
            refused_connects(ns, 5)
            trace.wait_for(lambda: "No space left on device" in trace.stderr, timeout=15, what="the error")
            bad = scrape(url)
            assert value(bad, "spiketrace_recording_ok") == 0
            assert value(bad, "spiketrace_write_errors_total") >= 1
            assert value(bad, "spiketrace_events_total", kind="reset_received") >= 10  # still tracing
            assert RunDir.open(out).rows("events") == before  # parts written before: intact
            filler.unlink()  # space again
            refused_connects(ns, 5)
            trace.wait_for(lambda: "writing again" in trace.stderr, timeout=15, what="recovery")
            rc = trace.finish(signal.SIGTERM)
        finally:
            trace.kill()
        assert rc == 0, trace.stderr
        errors = [line for line in trace.err if "No space left on device" in line]
        assert len(errors) == 1 and "Traceback" not in trace.stderr, trace.stderr
        run = RunDir.open(out)
        assert run.meta.status == "complete"
        assert run.rows("events") > before
        assert any("could not be written" in n for n in run.meta.notes)
        len(run.table("events"))  # every part on disk reads back (checksums verified)
        time.sleep(0.1)
    assert not os.path.ismount(tmp_path / "small")
