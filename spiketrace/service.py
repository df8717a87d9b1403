"""The trace daemon as a service: systemd's notify protocol, the config file, and the live
output that SIGHUP reopens (deploy/systemd/ has the unit; docs/deploy.md).

- `notify("READY=1")` sends a datagram to `$NOTIFY_SOCKET` (sd_notify(3), no libsystemd needed):
  READY=1 once every probe is attached, STOPPING=1 when a stop begins, WATCHDOG=1 from the main
  loop when the unit sets WatchdogSec=, STATUS= with what is traced.
- `read_config(path, command)`: `/etc/spiketrace/trace.conf`, an INI file whose `[trace]`
  section holds the command's long options (`port = 5432 8080`, `max-size = 2G`); given with
  `--config`, options on the command line win.
- `Output`: live lines to a stream, or appended to `--log FILE`; `reopen()` (on SIGHUP) lets
  logrotate move the file away. A write that fails (a full disk) is counted, never raised.
"""
from __future__ import annotations

import configparser
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, TextIO

from common.errors import SpikeTraceError


def notify(state: str) -> bool:
    """sd_notify(0, state): False when not run by systemd (no $NOTIFY_SOCKET) or it fails."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError:
        return False


class Watchdog:
    """WATCHDOG=1 at half of $WATCHDOG_USEC (systemd's WatchdogSec=), when that is for us."""

    def __init__(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ok = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.period_s = int(usec) / 2e6 if ok else None
        self._next = 0.0

    def ping(self) -> None:
        if self.period_s is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.period_s
        notify("WATCHDOG=1")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def read_config(path: os.PathLike, command) -> Dict[str, Any]:
    """The `[trace]` section of an INI file as click's default_map for `command` (values are
    converted by the options' own types; repeatable options take several values separated by
    spaces or commas; flags take true/false)."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise SpikeTraceError(f"--config {path}: no such file")
    except (OSError, configparser.Error, UnicodeDecodeError) as exc:
        raise SpikeTraceError(f"--config {path}: unreadable: {str(exc).splitlines()[0]}")
    if not parser.has_section("trace"):
        raise SpikeTraceError(f"--config {path}: no [trace] section (see deploy/systemd/trace.conf)")
    options = {}
    for param in command.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                options[opt[2:]] = param
    out: Dict[str, Any] = {}
    for key, raw in parser.items("trace"):
        param = options.get(key.replace("_", "-"))
        if param is None or key in ("config", "help", "print-bpf"):
            known = ", ".join(sorted(k for k in options if k not in ("config", "help", "print-bpf")))
            raise SpikeTraceError(f"--config {path}: unknown option '{key}' (options: {known})")
        raw = raw.strip()
        if getattr(param, "is_flag", False):
            if raw.lower() not in _TRUE | _FALSE:
                raise SpikeTraceError(f"--config {path}: {key} = {raw}: expected true or false")
            out[param.name] = raw.lower() in _TRUE
        elif getattr(param, "multiple", False):
            out[param.name] = [v for v in raw.replace(",", " ").split() if v]
        else:
            out[param.name] = raw
    return out


class Output:
    """Where the live lines go (see the module docstring)."""

    def __init__(self, path: Optional[Path] = None, stream: TextIO = sys.stderr):
        self.path = Path(path) if path is not None else None
        self.stream = stream
        self.errors = 0
        self.last_error: Optional[str] = None
        self._fh: Optional[TextIO] = None
        if self.path is not None:
            self._open()

    def _open(self) -> None:
        try:
            self._fh = open(self.path, "a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise SpikeTraceError(f"--log {self.path}: cannot open for writing: {exc.strerror}")

    @property
    def fh(self) -> TextIO:
        return self._fh if self._fh is not None else self.stream

    def write(self, line: str) -> None:
        try:
            self.fh.write(line + "\n")
        except (OSError, ValueError) as exc:
            self.errors += 1
            self.last_error = str(exc)

    def flush(self) -> None:
        try:
            self.fh.flush()
        except (OSError, ValueError) as exc:
            self.errors += 1
            self.last_error = str(exc)

    def reopen(self) -> None:
        """SIGHUP: close and reopen --log (after logrotate moved it); no-op for a stream."""
        if self.path is None:
            return
        old, self._fh = self._fh, None
        try:
            if old is not None:
                old.close()
        except OSError:
            pass
        try:
            self._open()
        except SpikeTraceError as exc:
            self.errors += 1
            self.last_error = str(exc)
            self._fh = None  # to the stream until the next SIGHUP

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
