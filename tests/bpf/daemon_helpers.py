"""`spiketrace trace` as a subprocess for the daemon tests: both streams read as they come,
ready once its probes are attached, stopped by a real signal."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

SPIKETRACE = str(Path(sys.executable).with_name("spiketrace"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TraceProc:
    def __init__(self, args: List[str], env: Optional[dict] = None):
        self.proc = subprocess.Popen([SPIKETRACE, "trace", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.out: List[str] = []
        self.err: List[str] = []
        self.ready = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, stream, into):
        for line in stream:
            into.append(line)
            if line.startswith("Tracing TCP"):
                self.ready.set()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.is_set():
            if self.proc.poll() is not None:
                self.join()
                raise AssertionError("trace exited before ready:\n" + self.stderr)
            assert time.monotonic() < deadline, self.stderr
            time.sleep(0.05)

    def send(self, sig=signal.SIGINT) -> None:
        self.proc.send_signal(sig)

    def finish(self, sig=signal.SIGINT, timeout: float = 60) -> int:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.join()
        return rc

    def join(self) -> None:
        for t in self._threads:
            t.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    def json_lines(self, type_: Optional[str] = None) -> List[dict]:
        objs = [json.loads(line) for line in list(self.out) if line.startswith("{")]
        return [o for o in objs if type_ is None or o.get("type") == type_]

    def wait_for(self, predicate, timeout: float = 20, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"trace exited waiting for {what}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.stderr}"
            time.sleep(0.1)
