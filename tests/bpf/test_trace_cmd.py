"""`spiketrace trace` as a user runs it: a subprocess tracing a small workload in a private
network namespace. Checks the run directory through the one reader, against the namespace's
own counters, and that SIGINT mid-run leaves a complete directory and no BPF program behind."""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.rundir import RunDir
from tracer.counters import read_counters
from common.netns import run_in as run_in_netns

pytestmark = pytest.mark.bpf

SPIKETRACE = str(Path(sys.executable).with_name("spiketrace"))
PORT = 9999  # inside a private namespace




class Daemon:
    """`spiketrace trace` in a subprocess; `wait_ready()` returns once its probes are attached."""

    def __init__(self, args):
        self.proc = subprocess.Popen([SPIKETRACE, "trace", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.err_lines = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.err_lines.append(line)
            if line.startswith("Tracing TCP"):
                self.ready.set()

    def wait_ready(self, timeout=90):
        deadline = time.monotonic() + timeout
        while not self.ready.is_set():
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError("trace exited before ready:\n" + "".join(self.err_lines))
            assert time.monotonic() < deadline, "".join(self.err_lines)
            time.sleep(0.1)

    def finish(self, timeout=60):
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        return self.proc.returncode, out, "".join(self.err_lines)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def overflow_workload(ns, hold_s=1.4, clients=6):
    """A listen(1) server that does not accept for `hold_s`: the extra SYNs overflow its queue
    and are retransmitted after the 1 s initial RTO. Then it serves everyone and closes."""
    def setup():
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", PORT))
        srv.listen(1)
        cs = []
        for _ in range(clients):
            c = socket.socket()
            c.setblocking(False)
            assert c.connect_ex(("127.0.0.1", PORT)) in (0, errno.EINPROGRESS)
            cs.append(c)
        return srv, cs

    srv, cs = run_in_netns(ns, setup)
    try:
        time.sleep(hold_s)
        srv.settimeout(0.2)
        deadline = time.monotonic() + 2.5
        accepted = []
        while len(accepted) < clients and time.monotonic() < deadline:
            try:
                accepted.append(srv.accept()[0])
            except socket.timeout:
                pass
        for c in cs:
            try:
                c.setblocking(True)
                c.settimeout(1)
                c.sendall(b"x" * 100)
            except OSError:
                pass
        for s in accepted:
            s.close()
    finally:
        for c in cs:
            c.close()
        srv.close()


def bpf_perf_attachments(pid):
    """BPF programs this process has attached to tracepoints/kprobes (`bpftool perf`)."""
    import json

    out = subprocess.run(["bpftool", "-j", "perf", "list"], capture_output=True, text=True).stdout
    return [a for a in json.loads(out or "[]") if a.get("pid") == pid]


def prog_ids_of(pid):
    ids = set()
    fd_dir = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as fh:
                for line in fh:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def loaded_prog_ids():
    import json

    out = subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def check_run_dir(out: Path, ns: str):
    run = RunDir.open(out)
    assert run.meta.kind == "trace"
    assert run.meta.status == "complete"
    assert run.meta.probes, "meta.json must say which backend each probe used"
    assert "lost_events" in run.meta.counts
    assert run.meta.sysctls["net.ipv4.tcp_syn_linear_timeouts"] == \
        read_tcp_sysctl_in(ns, "net.ipv4.tcp_syn_linear_timeouts")
    counters = run.table("counters")
    assert len(counters) > 0
    return run, counters


def read_tcp_sysctl_in(ns, key):
    return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_trace_duration_records_a_complete_run(ns, tmp_path):
    out = tmp_path / "run"
    duration = 6.0
    daemon = Daemon(["--port", str(PORT), "--netns", ns, "--duration", str(duration),
                     "--out", str(out), "--summary-interval", "1"])
    try:
        daemon.wait_ready()
        started, started_ns = time.monotonic(), time.monotonic_ns()
        overflow_workload(ns)
        # every socket is closed: nothing more can be retransmitted while the trace runs on
        assert time.monotonic() - started < duration - 0.5, "workload outlived the trace"
        rc, stdout, stderr = daemon.finish()
    finally:
        daemon.kill()
    assert rc == 0, stderr
    assert f"Wrote {out}" in stdout and f"spiketrace report {out}" in stdout
    assert "-- " in stderr  # periodic summary lines
    run, counters = check_run_dir(out, ns)
    overflows = counters[counters["name"] == "TcpExt.ListenOverflows"].sort_values("t_ns")
    truth = read_counters(ns)["TcpExt.ListenOverflows"]
    assert overflows["value"].iloc[-1] == truth > 0
    queue = counters[counters["name"] == f"listen.{PORT}.queue"]
    assert queue["value"].max() == 2  # backlog 1 holds 2
    # the SYNs the full queue dropped were retransmitted, and the tracer saw them
    syn_retrans = read_counters(ns)["TcpExt.TCPSynRetrans"]
    events = run.table("events")
    inum = os.stat(f"/var/run/netns/{ns}").st_ino
    sockets = events[~events["kind"].isin(["runq_delay", "connect_error"])]  # task-scoped kinds
    assert set(sockets["netns"]) == {inum}, events.groupby(["kind", "netns"]).size()
    retrans = events[(events["kind"] == "retransmit") & (events["dport"] == PORT)
                     & (events["state"] == 2)]
    assert syn_retrans > 0
    assert len(retrans) == syn_retrans, (run.meta.counts, sorted(retrans["t_ns"] - started_ns))
    assert "retransmit" in stderr  # printed live


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_a_complete_run_and_no_bpf_programs(ns, tmp_path, sig):
    out = tmp_path / "run"
    daemon = Daemon(["--port", str(PORT), "--netns", ns, "--out", str(out),
                     "--flush-interval", "1"])
    try:
        daemon.wait_ready()
        pid = daemon.proc.pid
        ours = prog_ids_of(pid)
        attached = bpf_perf_attachments(pid)
        assert ours, "the tracer holds no BPF program?"
        assert attached and {a["prog_id"] for a in attached} <= ours
        overflow_workload(ns, hold_s=1.2, clients=3)
        time.sleep(1.2)
        # flushed on a timer while running: a reader sees the counters and the counts so far
        mid = RunDir.open(out)
        assert mid.meta.status == "running" and "events" in mid.meta.counts
        assert len(mid.table("counters")) > 0
        daemon.proc.send_signal(sig)
        rc, stdout, stderr = daemon.finish()
    finally:
        daemon.kill()
    assert rc == 0, stderr
    assert f"Wrote {out}" in stdout
    run, counters = check_run_dir(out, ns)
    assert any(sig.name in note for note in run.meta.notes)
    assert not (ours & loaded_prog_ids()), "BPF programs of the tracer are still loaded"
    import json

    perf = json.loads(subprocess.run(["bpftool", "-j", "perf", "list"], capture_output=True,
                                     text=True).stdout or "[]")
    assert not [a for a in perf if a.get("prog_id") in ours], "a probe is still attached"


def test_print_bpf_shows_source_and_flags(ns):
    proc = subprocess.run([SPIKETRACE, "trace", "--print-bpf", "--port", str(PORT), "--netns", ns,
                           "--threshold", "75"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first, _, source = proc.stdout.partition("\n")
    assert first.startswith("// cflags: ")
    inum = os.stat(f"/var/run/netns/{ns}").st_ino
    assert f"-DNETNS_INUM={inum}" in first.split()
    assert "-DSLOW_CONN_NS=75000000" in first.split()
    assert "TRACEPOINT_PROBE" in source or "int tp_" in source
