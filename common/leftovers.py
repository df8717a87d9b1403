"""What a run creates that outlives a killed process, recorded so it can be cleaned up.

Resources that outlive a killed process -- a network namespace (a bind mount under
/var/run/netns), tc filters, cgroups with sock_ops programs attached, child processes -- are
recorded *before* they are created in a state file, `/run/spiketrace/state-<owner pid>.json`, so
`cleanup_leftovers()` (`spiketrace cleanup`) can remove what a SIGKILLed run left behind. It only
touches state files whose owner is dead, and kills only recorded pids that are still the same
process (same /proc/<pid>/stat start time).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from common.netns import NAME_PREFIX, NETNS_DIR, remove_netns


def state_dir() -> Path:
    """Where state files live; `SPIKETRACE_STATE_DIR` overrides it (tests use a private one)."""
    return Path(os.environ.get("SPIKETRACE_STATE_DIR", "/run/spiketrace"))


# ---------------------------------------------------------------------------------------------
# process identity

def proc_starttime(pid: int) -> Optional[int]:
    """Start time (clock ticks since boot) of `pid`, None if there is no such process.

    (pid, starttime) names one process for good: a recycled pid has another start time."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rindex(b")") + 2:].split()
    if fields and fields[0] == b"Z":  # a zombie is dead for our purposes
        return None
    return int(fields[19])  # field 22 overall


def same_process(pid: int, starttime: Optional[int]) -> bool:
    now = proc_starttime(pid)
    return now is not None and (starttime is None or now == starttime)


# ---------------------------------------------------------------------------------------------
# the state file

class _State:
    """This process's state file. Items are recorded before the resource is created and
    forgotten after it is removed, so the file always covers what may exist."""

    KINDS = ("netns", "tc", "cgroups", "pids", "files")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = 0
        self.data: Dict[str, list] = {}

    def _path(self) -> Path:
        return state_dir() / f"state-{os.getpid()}.json"

    def _load_for_this_pid(self) -> None:
        if self.pid != os.getpid():  # after fork, a child starts its own file
            self.pid = os.getpid()
            self.data = {kind: [] for kind in self.KINDS}

    def _save(self) -> None:
        path = self._path()
        if not any(self.data.values()):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"owner": {"pid": self.pid, "starttime": proc_starttime(self.pid)}, **self.data}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def add(self, kind: str, item) -> None:
        with self.lock:
            self._load_for_this_pid()
            if item not in self.data[kind]:
                self.data[kind].append(item)
                self._save()

    def remove(self, kind: str, item) -> None:
        with self.lock:
            self._load_for_this_pid()
            if item in self.data[kind]:
                self.data[kind].remove(item)
                self._save()


_STATE = _State()


def track(kind: str, item) -> None:
    """Record a resource to remove if this process dies: kind is `netns` (name), `tc`
    ({"netns", "ifname"}), `cgroups` (path), `pids` ({"pid", "starttime", "role"}) or `files`."""
    _STATE.add(kind, item)


def untrack(kind: str, item) -> None:
    _STATE.remove(kind, item)


def track_pids(pids: Iterable[int], role: str = "") -> List[dict]:
    """Record child processes (server, client workers, hogs) so cleanup can kill them by pid.
    Returns the records, to pass to `untrack_pids` once the processes are reaped."""
    records = []
    for pid in pids:
        rec = {"pid": int(pid), "starttime": proc_starttime(pid), "role": role}
        if rec["starttime"] is not None:
            _STATE.add("pids", rec)
            records.append(rec)
    return records


def untrack_pids(records: Iterable[dict]) -> None:
    for rec in records:
        _STATE.remove("pids", rec)


# ---------------------------------------------------------------------------------------------
# cleanup of leftovers

def _kill_recorded(rec: dict, wait_s: float = 2.0) -> bool:
    pid, start = int(rec["pid"]), rec.get("starttime")
    if not same_process(pid, start):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not same_process(pid, start):
                return True
            time.sleep(0.02)
    return not same_process(pid, start)


def remove_tc(netns_name: str, ifname: str = "lo") -> bool:
    """Delete the clsact qdisc (and so every tc BPF filter) of `ifname` in `netns_name`."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if not (NETNS_DIR / netns_name).exists():  # IPRoute(netns=...) would create it
        return False
    with IPRoute(netns=netns_name) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return False
        try:
            ipr.tc("del", "clsact", idx[0])
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):
                return False
            raise
    return True


def remove_cgroup(path: str) -> bool:
    """rmdir a cgroup we created (its BPF attachments go with it), after moving any process
    still in it to the parent cgroup."""
    p = Path(path)
    if not p.is_dir():
        return False
    with contextlib.suppress(OSError):
        for pid in (p / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (p.parent / "cgroup.procs").write_text(pid)
    try:
        p.rmdir()
    except FileNotFoundError:
        return False
    return True


def _owner_alive(doc: dict) -> bool:
    owner = doc.get("owner", {})
    return bool(owner.get("pid")) and same_process(int(owner["pid"]), owner.get("starttime"))


def cleanup_leftovers(on_warning: Optional[Callable[[str], None]] = None) -> List[str]:
    """Remove what runs that died without cleaning up left behind; return what was removed.

    Only state files whose owner process is gone are acted on: their recorded processes are
    killed (if still the same process), tc filters, cgroups and namespaces removed. Then any
    `spiketrace-*-<pid>` namespace no state file accounts for and whose pid is dead goes too."""
    warn = on_warning or (lambda msg: None)
    removed: List[str] = []
    live_netns = set()
    sdir = state_dir()
    for path in sorted(sdir.glob("state-*.json")) if sdir.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            warn(f"{path}: unreadable state file, left alone")
            continue
        if _owner_alive(doc):
            live_netns.update(doc.get("netns", []))
            continue
        removed += _cleanup_state(doc, warn)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for name in sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []:
        m = re.fullmatch(re.escape(NAME_PREFIX) + r".*-(\d+)", name)
        if not m or name in live_netns or proc_starttime(int(m.group(1))) is not None:
            continue
        if remove_netns(name):
            removed.append(f"network namespace {name} (no state file, creator pid {m.group(1)} is gone)")
    return removed


def _cleanup_state(doc: dict, warn: Callable[[str], None]) -> List[str]:
    owner = doc.get("owner", {}).get("pid")
    removed = []
    for rec in doc.get("pids", []):
        if _kill_recorded(rec):
            removed.append(f"process {rec['pid']} ({rec.get('role') or 'child'} of dead run {owner})")
    for item in doc.get("tc", []):
        try:
            if remove_tc(item["netns"], item.get("ifname", "lo")):
                removed.append(f"tc clsact filters on {item.get('ifname', 'lo')} in {item['netns']}")
        except Exception as exc:  # pyroute2 raises several types
            warn(f"could not remove tc filters in {item['netns']}: {exc}")
    for cg in doc.get("cgroups", []):
        try:
            if remove_cgroup(cg):
                removed.append(f"cgroup {cg} (and its sock_ops program)")
        except OSError as exc:
            warn(f"could not remove cgroup {cg}: {exc.strerror} (processes still inside?)")
    for name in doc.get("netns", []):
        if remove_netns(name):
            removed.append(f"network namespace {name}")
    for f in doc.get("files", []):
        with contextlib.suppress(OSError):
            os.unlink(f)
    return removed
