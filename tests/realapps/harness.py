"""Real servers from Debian's archive, driven by their own benchmark clients, traced by
`spiketrace trace` as a user would, and scored against what the client itself measured.

Each app runs in a network namespace this harness creates, with a small `net.core.somaxconn`
(so the listen backlog is small and the accept queue overflows under load), the client runs in
the same namespace, `spiketrace trace --netns NS --port P` records, and `spiketrace report
--transactions CLIENT_LOG` explains the client's slow requests from the kernel's evidence.
Every program and loop is bounded in count and time, and everything is stopped by its pid.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

SPIKETRACE = str(Path(sys.executable).with_name("spiketrace"))


def have(*programs: str) -> Optional[str]:
    """None if every program is installed, else the first missing one."""
    for p in programs:
        if shutil.which(p) is None and not Path(p).exists():
            return p
    return None


def pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else name


class Proc:
    """A subprocess inside a network namespace (`ip netns exec`), stopped by its pid."""

    def __init__(self, ns: str, argv: List[str], log: Path, user: Optional[str] = None,
                 cwd: Optional[Path] = None):
        cmd = ["ip", "netns", "exec", ns] + (["runuser", "-u", user, "--"] if user else []) + argv
        self.log = log
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.proc.args} did not finish in {timeout:.0f} s; see {self.log}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with _quiet():
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with _quiet():
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self._fh.close()


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, (ProcessLookupError, PermissionError))


class Trace:
    """`spiketrace trace --netns NS --port P -o OUT` in a subprocess, ready once it says
    `Tracing TCP` (printed only after every probe is attached)."""

    def __init__(self, ns: str, port: int, out: Path, extra: List[str] = ()):
        self.out = out
        self.proc = subprocess.Popen([SPIKETRACE, "trace", "--netns", ns, "--port", str(port), "-q",
                                      "-o", str(out), "--force", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.err: List[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(180) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("trace did not start: " + "".join(self.err))

    def _read(self):
        for line in self.proc.stderr:
            self.err.append(line)
            if line.startswith("Tracing TCP"):
                self.ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def report(run: Path, logs: List[Path], extra: List[str] = ()) -> subprocess.CompletedProcess:
    args = [SPIKETRACE, "report", str(run), "--force", "--format", "json,parquet"]
    for log in logs:
        args += ["-t", str(log)]
    return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


@dataclasses.dataclass
class Score:
    """What the client saw over the threshold vs what the report explained."""

    program: str
    client_slow: int
    found: int
    causes: Dict[str, int]
    expected: Dict[str, int]  # entries whose cause is known independently -> matched count
    wrong: int
    unexplained: int

    def line(self) -> str:
        return (f"{self.program}: client-seen slow {self.client_slow}, found {self.found}, "
                f"causes {json.dumps(self.causes, sort_keys=True)}, expected-right {self.expected}, "
                f"wrong {self.wrong}, unexplained {self.unexplained}")


def score(program: str, run: Path, slow: pd.DataFrame, expect: Optional[Dict[str, str]] = None) -> Score:
    """`slow`: the client's own slow entries, with a `source` column (`file:line`, as the report
    names entries) and optionally `expected` (the cause known independently, e.g. an injected
    stall). Found = the entry is a spike of the report."""
    expl = pd.read_parquet(run / "explanations.parquet")
    by_src = expl.set_index("source")
    found = slow["source"].isin(by_src.index)
    causes = by_src.loc[slow["source"][found], "cause"].value_counts().to_dict() if found.any() else {}
    expected, wrong = {}, 0
    if "expected" in slow:
        for cause in slow["expected"].dropna().unique():
            sel = slow[(slow["expected"] == cause) & found]
            got = by_src.loc[sel["source"], "cause"]
            # named: the primary cause, or one of the others when two added up (a stalled
            # request whose SYN was also dropped: syn_retransmit, "also: the server held it")
            named = by_src.loc[sel["source"], "causes"].astype(str).str.split(",").map(lambda c: cause in c)
            expected[cause] = int(named.sum())
            wrong += int((~named & (got != "unexplained")).sum())
    unexplained = int(causes.get("unexplained", 0))
    return Score(program, int(len(slow)), int(found.sum()), {str(k): int(v) for k, v in causes.items()},
                 expected, wrong, unexplained)


def assert_no_post_close_retransmit(run: Path) -> None:
    """No data_retransmit explanation cites a segment retransmitted after its sender closed (a
    tail loss probe in FIN_WAIT1 that the peer drops as TCP_OLD_DATA is close-time noise)."""
    from common.rundir import RunDir
    from common.vocab import CLOSING_STATES

    expl = pd.read_parquet(run / "explanations.parquet")
    events = RunDir.open(run).table("events")
    for rows in expl.loc[expl["cause"] == "data_retransmit", "evidence_events"]:
        cited = events.iloc[list(rows)]
        assert not cited[cited["kind"] == "retransmit"]["state"].isin(CLOSING_STATES).any(), cited
