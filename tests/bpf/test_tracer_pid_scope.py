"""`--pid` scopes sockets by the process that owns them: a traced server's connections are
recorded from its take-up (accept() / first read), with or without `--port`, and a second server
on the same port (SO_REUSEPORT, another process, same namespace) is not recorded.

Ground truth: each server process reports the peer ports it accepted; the client (untraced)
connects, sends, reads the echo and closes. The threshold is tiny so that every connection
tracked is also sent (connections.parquet), and the kernel's count of connections tracked must
equal the traced server's accepts exactly."""
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

CONNECTIONS = 40

SERVER = textwrap.dedent("""
    import json, os, socket, sys
    port = int(sys.argv[1])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    ls.settimeout(0.2)
    print("ready", flush=True)
    peers = []
    os.set_blocking(sys.stdin.fileno(), False)
    idle = 0
    while idle < 150:  # bounded: 30 s without a connection ends it
        try:
            if sys.stdin.read():
                break  # told to stop
        except (TypeError, BlockingIOError):
            pass
        try:
            c, peer = ls.accept()
        except socket.timeout:
            idle += 1
            continue
        idle = 0
        c.settimeout(5)
        data = c.recv(4096)
        if data:
            c.sendall(data)
        c.close()
        peers.append(peer[1])
    print(json.dumps({"pid": os.getpid(), "peers": peers}), flush=True)
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"x" * 100)
        s.recv(4096)
        s.close()
""")


class Server:
    def __init__(self, ns: str, port: int):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER,
                                      str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid  # `ip netns exec` execs the interpreter: same pid

    def finish(self) -> dict:
        out, _ = self.proc.communicate("stop\n", timeout=30)
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_clients(ns: str, port: int, n: int) -> None:
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, str(port), str(n)],
                   check=True, timeout=60)


def traced_connections(config_of, tmp_path, force=None):
    """Two servers on one port, the tracer built by config_of(port, inum, pid of the first);
    returns (connections table, tracer stats, peers of the first, peers of the second)."""
    with private_netns("pidscope") as ns:
        port, inum = random_port(), netns_inum_of(ns)
        first = second = tracer = None
        try:
            first, second = Server(ns, port), Server(ns, port)
            assert first.pid != second.pid
            tracer = start_tracer(config_of(port, inum, first.pid), tmp_path, force=force)
            run_clients(ns, port, CONNECTIONS)
            a, b = first.finish(), second.finish()
            stats = tracer.stop()
        finally:
            for p in (first, second):
                if p is not None:
                    p.kill()
            if tracer is not None:
                tracer.stop()
    assert a["pid"] == first.pid
    assert len(a["peers"]) + len(b["peers"]) == CONNECTIONS
    assert a["peers"] and b["peers"], "SO_REUSEPORT gave every connection to one server"
    return read_table(tmp_path, "connections"), stats, a, b["peers"]


TINY = 0.001  # ms: every connection tracked lives longer, so every one is sent


@pytest.mark.parametrize("with_port", [False, True], ids=["pid", "pid+port"])
@pytest.mark.parametrize("force", [None, {"accept_wait": "tracepoint"}],
                         ids=["first-read", "accept-syscall"])
def test_pid_records_its_server_connections_only(tmp_path, with_port, force):
    def config(port, inum, pid):
        return TracerConfig(pids=[pid], ports=[port] if with_port else [], netns_inum=inum,
                            slow_conn_ms=TINY)

    conns, stats, first, theirs = traced_connections(config, tmp_path, force)
    mine = first["peers"]
    servers = conns[conns["role"] == "server"]
    assert sorted(servers["dport"]) == sorted(mine)  # every one of its connections, once
    assert set(servers["pid"]) == {first["pid"]}  # taken up by it
    assert not set(conns["dport"]) & set(theirs)  # nothing of the other server's
    assert not set(conns["sport"]) & set(theirs)
    assert (conns["role"] == "server").all()  # the client process is not traced
    assert stats.connections_counted == len(mine)


def test_port_alone_records_both_servers(tmp_path):
    """The control: by port, both processes' connections are recorded (so the test above
    tells the pid filter apart from a workload that never reached the second server)."""
    conns, stats, first, theirs = traced_connections(
        lambda port, inum, pid: TracerConfig(ports=[port], netns_inum=inum, slow_conn_ms=TINY),
        tmp_path)
    mine = first["peers"]
    servers = conns[conns["role"] == "server"]
    assert sorted(servers["dport"]) == sorted(mine + theirs)


def test_trace_command_with_pid_alone_shows_the_server(tmp_path):
    """The user's path: `spiketrace trace --pid PID` of a running server, then `report`."""
    from common.rundir import RunDir
    from tests.bpf.test_trace_cmd import SPIKETRACE, Daemon

    out = tmp_path / "run"
    with private_netns("pidcli") as ns:
        port = random_port()
        server = daemon = None
        try:
            server = Server(ns, port)
            daemon = Daemon(["--pid", str(server.pid), "--duration", "8s", "--threshold",
                             "0.001ms", "--out", str(out)])
            daemon.wait_ready()
            run_clients(ns, port, 20)
            truth = server.finish()
            rc, stdout, stderr = daemon.finish()
        finally:
            if daemon is not None:
                daemon.kill()
            if server is not None:
                server.kill()
    assert rc == 0, stderr
    run = RunDir.open(out)
    assert run.meta.counts["connections_counted"] == 20, run.meta.counts
    conns = run.table("connections")
    assert sorted(conns["dport"]) == sorted(truth["peers"])
    assert set(conns["pid"]) == {server.pid}
    report = subprocess.run([SPIKETRACE, "report", str(out)], capture_output=True, text=True,
                            timeout=120)
    assert report.returncode == 0, report.stderr


FORKING = textwrap.dedent("""
    import json, os, socket, sys
    port, mode = int(sys.argv[1]), sys.argv[2]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)

    def serve(c):
        c.settimeout(5)
        data = c.recv(4096)
        if data:
            c.sendall(data)
        c.close()

    if mode == "prefork":  # a worker forked before tracing starts accepts and serves
        worker = os.fork()
        if worker == 0:
            ls.settimeout(30)
            while True:
                c, _ = ls.accept()
                serve(c)
        print("ready", flush=True)
        sys.stdin.readline()
        os.kill(worker, 9)
        os.waitpid(worker, 0)
    else:  # the parent accepts, a child forked per connection reads and replies
        print("ready", flush=True)
        ls.settimeout(30)
        for _ in range(int(sys.argv[3])):
            c, _ = ls.accept()
            if os.fork() == 0:
                serve(c)
                os._exit(0)
            c.close()
            os.wait()
        sys.stdin.readline()
    print(json.dumps({"pid": os.getpid()}), flush=True)
""")


@pytest.mark.parametrize("mode", ["fork-per-connection", "prefork"])
def test_pid_of_a_forking_server_records_its_workers_connections(tmp_path, mode):
    """postgres forks a backend per connection (the parent accepts, the child reads); nginx and
    gunicorn prefork workers: `--pid` of the parent covers its children."""
    n = 20
    with private_netns("fork") as ns:
        port, inum = random_port(), netns_inum_of(ns)
        proc = tracer = None
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", FORKING,
                                     str(port), mode, str(n)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready"
            tracer = start_tracer(TracerConfig(pids=[proc.pid], netns_inum=inum,
                                               slow_conn_ms=TINY), tmp_path)
            run_clients(ns, port, n)
            out, _ = proc.communicate("stop\n", timeout=30)
            stats = tracer.stop()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if tracer is not None:
                tracer.stop()
    assert json.loads(out.strip().splitlines()[-1])["pid"] == proc.pid
    conns = read_table(tmp_path, "connections")
    assert stats.connections_counted == n, conns
    assert len(conns) == n and (conns["role"] == "server").all()
    assert proc.pid not in set(conns["pid"])  # taken up by the workers, not the parent
