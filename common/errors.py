"""The one exception type for failures the user can fix.

Library code (bench, tracer, analysis) raises `SpikeTraceError` with a message that says what
went wrong and what to do; the CLI prints that one line and exits with `exit_code`, never a
traceback.
"""
from __future__ import annotations


class SpikeTraceError(Exception):
    """A failure caused by input or environment, reported to the user as one clear line."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class NeedsRoot(SpikeTraceError):
    """Raised where a command needs root (BPF, network namespaces)."""

    exit_code = 77


def require_root(what: str) -> None:
    """Raise `NeedsRoot` unless running as root, naming what needs it."""
    import os

    if os.geteuid() != 0:
        raise NeedsRoot(f"{what} needs root: run it with sudo (see `spiketrace doctor`)")
