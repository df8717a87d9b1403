"""The C reference pair of benchmarks/bench_vs_c.py compiles and speaks the bench's protocol,
with the Python programs on the other side too (same framing, same payload)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.client import ClientOptions, run_clients
from bench.server import ServerOptions, start_server_process

C_DIR = Path(__file__).resolve().parents[2] / "bench" / "c"
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed (scripts/install.sh)")


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    out = tmp_path_factory.mktemp("c")
    for name in ("echo_server", "echo_client"):
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out / name), str(C_DIR / f"{name}.c")],
                       check=True)
    return out


def _fields(stdout: str) -> dict:
    words = stdout.split()
    return dict(zip(words[0::2], words[1::2]))


def test_c_client_against_c_server(binaries):
    server = subprocess.Popen([str(binaries / "echo_server"), "0", "1", "3000"], stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().split()[1]
        out = subprocess.run([str(binaries / "echo_client"), "127.0.0.1", port, "200", "3000"],
                             capture_output=True, text=True, timeout=60)
    finally:
        server.kill()
        server.wait()
    assert out.returncode == 0, out.stderr
    fields = _fields(out.stdout)
    assert fields["transactions"] == "200" and fields["ok"] == "200"
    assert float(fields["tx_per_s"]) > 0


def test_c_client_against_python_server(binaries, tmp_path):
    import pandas as pd

    with start_server_process(ServerOptions(port=0), tmp_path) as server:
        out = subprocess.run([str(binaries / "echo_client"), "127.0.0.1", str(server.port), "50", "3000"],
                             capture_output=True, text=True, timeout=60)
        server_port = server.port
    assert out.returncode == 0 and _fields(out.stdout)["ok"] == "50"
    sv = pd.read_parquet(tmp_path / "server.parquet")
    assert len(sv) == 50 and (sv["outcome"] == "ok").all() and (sv["local_port"] == server_port).all()


def test_python_client_against_c_server(binaries, tmp_path):
    server = subprocess.Popen([str(binaries / "echo_server"), "0", "1", "3000"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        result = run_clients(ClientOptions(port=port, n=50, split_writes=True), tmp_path)
    finally:
        server.kill()
        server.wait()
    assert result.ok == 50
