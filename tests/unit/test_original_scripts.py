"""The Python 3 port of the original question's scripts (examples/original/) still does what the
original did: one client, N transactions against the listen(1) + SO_LINGER server, one elapsed-
seconds line per transaction. Loopback only, on a port the kernel picks (port 0)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "original"
N = 200


@pytest.fixture
def server():
    """The server on 127.0.0.1, port 0; yields (process, port)."""
    proc = subprocess.Popen([sys.executable, "-u", str(EXAMPLES / "sock_server_linger.py"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()  # "listening on 127.0.0.1:PORT", printed once listen() is done
        assert first.startswith("listening on 127.0.0.1:"), first + proc.stderr.read()
        yield proc, int(first.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_one_client_prints_one_duration_per_transaction(server):
    proc, port = server
    client = subprocess.run([sys.executable, str(EXAMPLES / "sock_client.py"), str(N), "--port", str(port)],
                            capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr
    durations = [float(line) for line in client.stdout.splitlines()]
    assert len(durations) == N
    assert all(0 <= d < 30 for d in durations)

    # the server saw every connection, from the client's side of loopback, and no error
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = out.splitlines()
    connected = [line for line in lines if line.startswith("Connected by ('127.0.0.1', ")]
    assert len(connected) == N, out[-2000:]
    assert len(lines) == N, "the server printed an exception: " + "\n".join(
        line for line in lines if not line.startswith("Connected by"))


def test_client_gives_up_when_nothing_listens():
    """The busy connect() retry of the original is bounded here (--give-up)."""
    with socket.socket() as holder:  # bound, not listening: the port stays ours, connects are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        client = subprocess.run([sys.executable, str(EXAMPLES / "sock_client.py"), "3", "--port", str(port),
                                 "--give-up", "0.5"], capture_output=True, text=True, timeout=30)
    assert client.returncode == 1
    assert client.stdout == ""
    assert f"no connection to 127.0.0.1:{port} after 0.5 s" in client.stderr


def test_port_comes_from_the_environment_too(server):
    _, port = server
    env = dict(os.environ, SPIKETRACE_ORIG_PORT=str(port))
    client = subprocess.run([sys.executable, str(EXAMPLES / "sock_client.py"), "3"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr
    assert len(client.stdout.splitlines()) == 3
