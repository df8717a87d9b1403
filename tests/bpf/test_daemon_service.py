"""`spiketrace trace` as systemd runs it, with the protocol tested directly (this machine's PID 1
is not systemd): READY=1/WATCHDOG=1/STOPPING=1 on a $NOTIFY_SOCKET the test listens on, options
from a config file, SIGHUP reopening --log and starting a new segment, SIGTERM stopping cleanly,
and a second Ctrl-C shortly after the first losing nothing. Real signals to a subprocess."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest

from common.rundir import RunDir
from daemon_helpers import TraceProc
from netfault_helpers import private_ns

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]
PORT = 9999


def refused_connects(ns, n: int, gap_s: float = 0.03) -> None:
    """Connections to a port nobody listens on: a reset and a drop each (recorded events)."""
    with ns.inside():
        socks = [socket.socket() for _ in range(n)]
    for s in socks:
        with s:
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", PORT))
            except OSError:
                pass
        time.sleep(gap_s)


class NotifySocket:
    """What systemd listens on for sd_notify(3) datagrams."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                return self.messages

    def close(self):
        self.sock.close()


def test_notify_config_sighup_and_sigterm(tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    out, log = tmp_path / "rec", tmp_path / "trace.log"
    with private_ns("svc") as ns:
        conf = tmp_path / "trace.conf"
        conf.write_text(f"[trace]\nport = {PORT}\nnetns = {ns.name}\nout = {out}\nlog = {log}\n"
                        "max-size = 50M   # segments\nflush-interval = 1s\n")
        trace = TraceProc(["--config", str(conf)],
                          env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
        try:
            trace.wait_ready()
            ready = [m for m in notify.drain() if "READY=1" in m]
            assert ready and f"MAINPID={trace.proc.pid}" in ready[0]
            first = out / os.readlink(out / "latest")
            refused_connects(ns, 5)
            trace.wait_for(lambda: log.exists() and "reset_received" in log.read_text(), what="log lines")
            os.rename(log, tmp_path / "trace.log.1")  # what logrotate does
            trace.send(signal.SIGHUP)
            trace.wait_for(lambda: (out / "latest").resolve() != first.resolve(), what="a new segment")
            refused_connects(ns, 5)
            trace.wait_for(lambda: log.exists() and "reset_received" in log.read_text(), what="reopened log")
            time.sleep(1.2)  # a watchdog period
            rc = trace.finish(signal.SIGTERM)
            msgs = notify.drain()
        finally:
            trace.kill()
            notify.close()
    assert rc == 0, trace.stderr
    assert any("WATCHDOG=1" in m for m in msgs) and any("STOPPING=1" in m for m in msgs)
    old = RunDir.open(first)
    assert old.meta.status == "complete" and any("rotated (SIGHUP)" in n for n in old.meta.notes)
    assert old.meta.counts["events"] == len(old.table("events")) > 0
    second = out / os.readlink(out / "latest")
    new = RunDir.open(second)
    assert new.meta.status == "complete" and any("SIGTERM" in n for n in new.meta.notes)
    assert new.meta.counts["events"] > 0 and len(new.table("counters")) > 0
    assert new.meta.probes == old.meta.probes and new.meta.sysctls == old.meta.sysctls
    # the rotated file kept what was written before the SIGHUP, the new one what came after
    assert "reset_received" in (tmp_path / "trace.log.1").read_text()
    # one line each into a file (no wrapping at 80 columns, no value cut short)
    for line in log.read_text().splitlines() + (tmp_path / "trace.log.1").read_text().splitlines():
        assert re.match(r"(\d\d:\d\d:\d\d\.\d{3} \S+ +\d+/\S+ .* > .*|TIME +KIND +PID/COMM .*|\.\.\. .*)$", line), line
    for line in trace.err:
        assert re.match(r"(Tracing TCP|-- \d|SIGHUP|complete:|Wrote|Next:|spiketrace: )", line), line


@pytest.mark.parametrize("gap_s", [0.12])
def test_second_ctrl_c_soon_after_the_first_loses_nothing(tmp_path, gap_s):
    out = tmp_path / "run"
    with private_ns("cc") as ns:
        trace = TraceProc(["--port", str(PORT), "--netns", ns.name, "--out", str(out), "--json"])
        try:
            trace.wait_ready()
            refused_connects(ns, 4)
            time.sleep(0.5)
            trace.send(signal.SIGINT)
            time.sleep(gap_s)
            trace.send(signal.SIGINT)
            rc = trace.finish(sig=None)
        finally:
            trace.kill()
    # 0 or 130 when the second Ctrl-C came while stopping; killed by it (-2) when it came after
    # the command had finished and handed SIGINT back: either way nothing is lost (below)
    assert rc in (0, 130, -signal.SIGINT), trace.stderr
    assert "Traceback" not in trace.stderr and "Aborted" not in trace.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] in ("complete", "interrupted")
    run = RunDir.open(out)
    assert run.meta.counts["events"] == len(run.table("events")) > 0
    assert run.meta.counts["counter_samples"] > 0 and len(run.table("counters")) > 0
    assert "lost_events" in run.meta.counts
