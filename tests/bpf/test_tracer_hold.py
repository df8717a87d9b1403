"""The server's hold of a request (conn_life: from its read of the request to its reply) and the
serving thread's own time in it, against what the server thread measured of itself: a handler
that sleeps 200 ms (off the CPU) and then computes for 80 ms of its own CPU time
(time.thread_time)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.bpf.tracer_helpers import private_netns, random_port, read_table, start_tracer
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

SERVER = textwrap.dedent("""
    import json, socket, sys, threading, time
    port, n = int(sys.argv[1]), int(sys.argv[2])
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port)); ls.listen(8)
    print("ready", flush=True)
    for _ in range(n):
        c, _ = ls.accept()
        c.recv(100)
        t0, w0 = time.thread_time_ns(), time.monotonic_ns()
        time.sleep(0.2)
        while time.thread_time_ns() - t0 < 80_000_000:
            pass
        ran, wall = time.thread_time_ns() - t0, time.monotonic_ns() - w0
        c.sendall(b"reply")
        print(json.dumps({"tid": threading.get_native_id(), "ran": ran, "wall": wall}), flush=True)
        c.close()
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"request"); s.recv(100); s.close()
""")

N = 3


def _in(ns, code, *args):
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_hold_and_the_serving_threads_time_in_it(tmp_path):
    with private_netns("hold") as ns:
        port = random_port()
        tracer = server = None
        try:
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns)), tmp_path)
            if tracer.probes.get("conn_life") in (None, "missing"):
                pytest.skip("this kernel has no sock_recv_length / sock_send_length (6.3+)")
            server = _in(ns, SERVER, port, N)
            assert server.stdout.readline().strip() == "ready", server.stderr.read()
            client = _in(ns, CLIENT, port, N)
            assert client.wait(timeout=60) == 0, client.stderr.read()
            truth = [json.loads(server.stdout.readline()) for _ in range(N)]
            assert server.wait(timeout=30) == 0
        finally:
            if tracer is not None:
                stats = tracer.stop()
            if server is not None and server.poll() is None:
                server.kill()
                server.wait()
    assert stats.lost_events == 0
    conns = read_table(tmp_path, "connections")
    held = conns[(conns["role"] == "server") & (conns["hold_ns"] > 0)].sort_values("t_open")
    assert len(held) == N, conns
    for (_, row), t in zip(held.iterrows(), truth):
        assert row["hold_tid"] == t["tid"]
        # the hold spans the handler (read -> reply) and a little more (the recv and send calls)
        assert t["wall"] <= row["hold_ns"] <= t["wall"] + 20_000_000, (row["hold_ns"], t)
        # the scheduler's CPU time is up to a tick stale at each end (4 ms at HZ 250; 10 ms at 100)
        assert abs(row["hold_ran_ns"] - t["ran"]) <= 12_000_000, (row["hold_ran_ns"], t)
        off = row["hold_ns"] - row["hold_ran_ns"] - row["hold_wait_ns"]
        assert 180_000_000 <= off <= row["hold_ns"] - t["ran"] + 12_000_000, (off, row.to_dict(), t)
