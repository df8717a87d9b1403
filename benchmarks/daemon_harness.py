"""What the daemon benchmarks share (daemon_soak.py, daemon_cost.py): a private network
namespace, the C load generator (benchmarks/daemon_load.c, compiled here) serving and
connecting inside it, `spiketrace trace` as a subprocess with its metrics endpoint, and the
readings: the daemon's RSS and CPU from /proc, everything else from a real scrape."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.netns import Namespace  # noqa: E402
from spiketrace.metrics import scrape, value  # noqa: E402

SPIKETRACE = str(Path(sys.executable).with_name("spiketrace"))
PORT = 9999  # inside the namespace


def build_load(tmp: Path) -> Path:
    exe = tmp / "daemon_load"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(ROOT / "benchmarks/daemon_load.c")], check=True)
    return exe


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    """Namespace + server + daemon; `load(rate, seconds)` runs clients; `close()` cleans up."""

    def __init__(self, tag: str, daemon_args: List[str], sysctls: Optional[dict] = None):
        self.tmp = Path(tempfile.mkdtemp(prefix=f"spiketrace-{tag}-"))
        self.exe = build_load(self.tmp)
        self.ns = Namespace.create(f"stbench-{tag}-{os.getpid()}", sysctls or {
            "net.ipv4.ip_local_port_range": "10000 60999", "net.ipv4.tcp_tw_reuse": "1"})
        self.server = subprocess.Popen(["ip", "netns", "exec", self.ns.name, str(self.exe), "server", str(PORT)])
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.out = self.tmp / "rec"
        self.daemon = subprocess.Popen(
            [SPIKETRACE, "trace", "--port", str(PORT), "--netns", self.ns.name, "--out", str(self.out),
             "--metrics", f"127.0.0.1:{self.metrics_port}", "--quiet", *daemon_args],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "daemon.err", "w"))
        self._wait_ready()
        self.loads: List[subprocess.Popen] = []

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise SystemExit("spiketrace trace exited: " + (self.tmp / "daemon.err").read_text())
            if "Tracing TCP" in (self.tmp / "daemon.err").read_text():
                return
            time.sleep(0.2)
        raise SystemExit("spiketrace trace did not become ready")

    def load(self, rate: float, seconds: float, per_child: int = 200) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns.name, str(self.exe), "client", str(PORT),
                              str(rate), str(seconds), str(per_child)], stdout=subprocess.PIPE, text=True)
        self.loads.append(p)
        return p

    def scrape(self) -> dict:
        return scrape(self.url)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.daemon.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_s(self) -> float:
        """The daemon's user + system CPU, every thread (/proc/<pid>/stat)."""
        with open(f"/proc/{self.daemon.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> str:
        for p in self.loads:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.daemon.terminate()
        try:
            self.daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()
        self.server.kill()
        self.server.wait()
        self.ns.remove()
        return (self.tmp / "daemon.err").read_text()


def bpf_seconds(samples: dict) -> float:
    """Total CPU in the tracer's BPF programs (spiketrace_bpf_run_seconds_total, --bpf-stats)."""
    return sum(v for (name, _labels), v in samples.items() if name == "spiketrace_bpf_run_seconds_total")


__all__ = ["Bench", "bpf_seconds", "value", "ROOT"]
