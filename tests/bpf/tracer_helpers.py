"""Helpers for the tracer's BPF tests: private network namespaces, workload subprocesses, the
kernel's own counters and bcc's tools as ground truth."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pandas as pd

WORKER = Path(__file__).with_name("tracer_worker.py")


@contextlib.contextmanager
def private_netns(tag: str) -> Iterator[str]:
    """A fresh network namespace with lo up, removed on exit."""
    from common.netns import Namespace

    with Namespace.create(f"sttest-tracer-{tag}-{os.getpid()}") as namespace:
        yield namespace.name


def random_port() -> int:
    return random.randint(20000, 32000)  # below the ephemeral range (32768+)


class Worker:
    """A tracer_worker.py subprocess in a namespace."""

    def __init__(self, netns: str, *args):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), netns, *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 10.0) -> None:
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"worker failed to start: {line!r} {self.proc.stderr.read()}")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 60.0) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"worker gave no result (rc={self.proc.returncode}): {err}")
        return json.loads(lines[-1])

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.result(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def netstat(pid: int) -> Dict[str, int]:
    """TcpExt.* and Tcp.* counters of the namespace of `pid`."""
    out: Dict[str, int] = {}
    for name in ("netstat", "snmp"):
        lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix, keys = head.split(":", 1)
            for k, v in zip(keys.split(), vals.split(":", 1)[1].split()):
                out[f"{prefix}.{k}"] = int(v)
    return out


class BccTool:
    """Run one of bcc's tools (/usr/sbin/<name>-bpfcc) alongside, as an independent witness."""

    def __init__(self, name: str, *args: str, ready: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([f"/usr/sbin/{name}-bpfcc", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.header: List[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name}-bpfcc exited: {''.join(self.header)}")
            self.header.append(line)
            if ready in line:
                return
        raise RuntimeError(f"{name}-bpfcc did not start: {''.join(self.header)}")

    def stop(self) -> List[str]:
        """SIGINT until it exits (a SIGINT that lands in its perf callback is swallowed)."""
        time.sleep(0.5)  # let its perf buffer drain
        for _ in range(10):
            self.proc.send_signal(signal.SIGINT)
            try:
                out, _ = self.proc.communicate(timeout=2)
                return out.splitlines()
            except subprocess.TimeoutExpired:
                continue
        self.proc.kill()
        out, _ = self.proc.communicate()
        return out.splitlines()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_table(run_dir: Path, table: str) -> pd.DataFrame:
    from common.rundir import SCHEMAS

    path = run_dir / f"{table}.parquet"
    if not path.is_dir() or not any(path.glob("*.parquet")):
        return SCHEMAS[table].empty_table().to_pandas()
    return pd.read_parquet(path)


def start_tracer(config, run_dir: Optional[Path], force=None):
    from tracer.session import Tracer

    tracer = Tracer(config, run_dir, force=force)
    tracer.start()
    tracer.start_thread()
    return tracer
