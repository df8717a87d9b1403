"""The original question, traced as a real application: examples/original's server (listen(1),
SO_LINGER {1, 0}) in a private network namespace, `spiketrace trace --port --netns` running as
a user would run it, four concurrent original clients, then `spiketrace report --transactions`
with the clients' own output. Every transaction a client saw take over 100 ms must be a spike of
the report, matched to its kernel connection and explained (a 1 s one as a SYN retransmit after
an accept-queue overflow), and the report must count exactly the clients' slow lines.

Two clients print the original's output (one duration per line: matched by order and
duration), two the verbose form (`start duration_s local_port`: matched by port and time).
The server works 2 ms per connection (SPIKETRACE_ORIG_THINK_MS) so that four closed-loop
clients keep its one-slot accept queue full and overflow it several times in a few seconds
(without it they overflow mostly at start-up).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.netns import Namespace, enter as enter_netns
from common.rundir import RunDir
from tests.helpers.lost import assert_kept_up

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
SPIKETRACE = str(Path(sys.executable).with_name("spiketrace"))
SERVER = ROOT / "examples" / "original" / "sock_server_linger.py"
CLIENT = ROOT / "examples" / "original" / "sock_client.py"
PORT = 9999  # inside a private namespace
CLIENTS = 4
PER_CLIENT = int(os.environ.get("SPIKETRACE_TEST_ORIG_N", "500"))  # 2,000 transactions in all
THINK_MS = os.environ.get("SPIKETRACE_TEST_ORIG_THINK_MS", "2")
INITIAL_RTO_S = 1.0


def _in(ns_name):
    return lambda: enter_netns(ns_name)


class Trace:
    """`spiketrace trace` in a subprocess; ready once it prints `Tracing TCP ...` (after every
    probe is attached: trace.py prints it only then)."""

    def __init__(self, args):
        self.proc = subprocess.Popen([SPIKETRACE, "trace", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.err = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.err.append(line)
            if line.startswith("Tracing TCP"):
                self.ready.set()

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError("spiketrace trace exited before it was ready:\n" + "".join(self.err))
            assert time.monotonic() < deadline, "spiketrace trace not ready:\n" + "".join(self.err)

    def stop(self, timeout=60):
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        return self.proc.returncode, out, "".join(self.err)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _slow_lines(path: Path, verbose: bool):
    """(line number, duration, local port or 0) of the client's lines over 0.1 s: the original's
    `grep`, done right (`awk '$1 > 0.1'`)."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        cols = line.split()
        if verbose and n == 1:
            assert cols == ["start", "duration_s", "local_port"]
            continue
        dur = float(cols[1] if verbose else cols[0])
        if dur > 0.1:
            out.append((n, dur, int(cols[2]) if verbose else 0))
    return out


def test_original_clients_slow_transactions_are_explained(tmp_path):
    ns = Namespace.create(f"sttest-origapp-{os.getpid()}")
    procs = []
    trace = None
    try:
        env = dict(os.environ, SPIKETRACE_ORIG_PORT=str(PORT), SPIKETRACE_ORIG_THINK_MS=THINK_MS,
                   PYTHONUNBUFFERED="1")
        server = subprocess.Popen([sys.executable, str(SERVER)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_in(ns.name))
        procs.append(server)
        assert server.stderr.readline().startswith(f"listening on 127.0.0.1:{PORT}")

        run_dir = tmp_path / "trace"
        trace = Trace(["--port", str(PORT), "--netns", ns.name, "--out", str(run_dir), "--quiet"])
        trace.wait_ready()

        logs = []
        clients = []
        pids = {}
        for i in range(CLIENTS):
            verbose = i % 2 == 1
            log = tmp_path / f"client{i}.log"
            logs.append((log, verbose))
            with open(log, "w") as fh:
                clients.append(subprocess.Popen(
                    [sys.executable, str(CLIENT), str(PER_CLIENT)], stdout=fh, text=True,
                    env=dict(env, SPIKETRACE_ORIG_VERBOSE="1" if verbose else "0"), preexec_fn=_in(ns.name)))
        procs += clients
        pids = {log.name: c.pid for (log, _), c in zip(logs, clients)}
        for c in clients:
            assert c.wait(timeout=120) == 0
        time.sleep(0.3)  # the last connections close
        code, out, err = trace.stop()
        assert code == 0, err
        assert f"Wrote {run_dir}" in out
    finally:
        if trace is not None:
            trace.kill()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        ns.remove()

    meta = RunDir.open(run_dir).meta
    assert meta.status == "complete"
    assert_kept_up(meta.counts)
    res = subprocess.run([SPIKETRACE, "report", str(run_dir), "--format", "md,json,parquet"]
                         + [a for log, _ in logs for a in ("-t", str(log))],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout

    slow = {log.name: _slow_lines(log, verbose) for log, verbose in logs}
    for log, verbose in logs:
        lines = log.read_text().splitlines()
        assert len(lines) == PER_CLIENT + (1 if verbose else 0)
    n_slow = sum(len(v) for v in slow.values())
    expl = RunDir.open(run_dir).table("explanations")
    summary = json.loads((run_dir / "summary.json").read_text())
    detail = "\n".join(f"{r.source} {r.latency_ns / 1e6:.1f} ms {r.match} {r.cause}/{r.cause_detail}: "
                       f"{r.sentence}" for r in expl.itertuples())
    print(f"clients' slow lines: {n_slow}; report spikes: {len(expl)}\n{detail}")
    # with the think time, overflows are steady; the original (think 0) overflows mostly at start-up
    assert n_slow >= (3 if float(THINK_MS) > 0 else 1), "too few overflows to test anything: " + json.dumps(slow)

    # the report's spikes are exactly the clients' own slow lines
    assert summary["counts"]["spikes"] == len(expl) == n_slow, detail
    got = {(s.split(":")[0], int(s.split(":")[1])) for s in expl["source"]}
    assert got == {(name, n) for name, rows in slow.items() for n, _, _ in rows}, detail
    # each matched to its kernel connection: by port (verbose) or by order (plain)
    assert (expl["match"] != "none").all(), detail
    by_line = {(s.split(":")[0], int(s.split(":")[1])): r for s, r in zip(expl["source"], expl.itertuples())}
    for (log, verbose) in logs:
        for n, dur, port in slow[log.name]:
            r = by_line[(log.name, n)]
            assert r.match == ("port" if verbose else "order"), detail
            if verbose:
                assert r.local_port == port, detail
            assert r.pid == pids[log.name], detail  # the kernel saw this very client connect
            # a spike of the SYN timer's length: the SYN was dropped by the full accept queue
            if dur >= 0.9 * INITIAL_RTO_S:
                assert (r.cause, r.cause_detail) == ("syn_retransmit", "listen_overflow"), detail
                assert not r.inferred and len(r.evidence_events) >= 1, detail
    assert summary["trace"]["connections_counted"] >= 2 * CLIENTS * PER_CLIENT * 0.99
