"""Process plumbing shared by the bench server and client processes.

- `set_pdeathsig()`: a child gets SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), so a
  killed `spiketrace run` leaves no load generator behind.
- `StopHandler`: SIGINT/SIGTERM/SIGALRM become a `Stop` exception raised where the process is
  (even inside a blocking accept/connect/recv), except inside `critical()` sections (a Parquet
  flush), where the request is remembered and raised when the section ends. So a stop never
  tears a part file and every completed record reaches the disk.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from contextlib import contextmanager
from typing import Optional

PR_SET_PDEATHSIG = 1

# Payload bounds, shared by the server and the client validation.
MAX_PAYLOAD = 16 * 1024 * 1024
DRAIN_ROOM = 65536  # extra buffer room so a server's drain-until-EOF loop reads big chunks
# server.parquet outcomes (common.vocab.SERVER_OUTCOMES)
OK, RESET, SHORT, ERROR = "ok", "reset", "short_request", "error"


class Stop(Exception):
    """A stop was requested (signal, deadline, parent death): finish cleanly."""

    def __init__(self, signum: int = 0):
        super().__init__(signum)
        self.signum = signum


def set_pdeathsig(sig: int = signal.SIGTERM, parent_pid: Optional[int] = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to do
        return
    # The parent may have died before prctl ran: then nobody will ever signal us.
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def quiet_threads() -> None:
    """No OpenBLAS thread pool in the bench processes (numpy comes in with pyarrow).

    Its idle threads spin for a while and take CPU from the single-threaded hot loops on a
    small machine. Must run before numpy is imported, so the bench modules import pyarrow
    lazily.
    """
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")


class _NoPandas:
    """A meta-path finder that makes `import pandas` fail (see `no_pandas`)."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not loaded in bench processes")
        return None


def no_pandas() -> None:
    """Keep pandas out of a bench process: pyarrow imports it, if it can, on its first
    conversion of a Python list, which costs ~30 MB per process and a 0.3 s stall in the middle
    of the load. The bench processes never need it. Call before anything imports pandas."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


class StopHandler:
    """Turn stop signals into `Stop`, deferred while inside `critical()`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)

    def __init__(self) -> None:
        self.requested = 0  # signal number of the first stop request, 0 if none
        self._depth = 0

    def install(self) -> "StopHandler":
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            self.requested = signum
        if self._depth == 0:
            raise Stop(signum)

    @contextmanager
    def critical(self):
        """A section a stop signal must not interrupt (writing a part file)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self._depth == 0 and self.requested:
            raise Stop(self.requested)

    def disarm(self) -> None:
        """From now on only remember stop requests (used once the process is shutting down)."""
        self._depth += 1

    def check(self) -> None:
        if self.requested:
            raise Stop(self.requested)
