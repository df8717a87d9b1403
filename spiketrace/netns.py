"""Network namespaces for scenarios, and a record of everything a run creates.

Every scenario runs in its own network namespace (`spiketrace-<scenario>-<pid>`) so its sysctls
and injected faults never touch the host. Resources that outlive a killed process -- the
namespace itself (a bind mount under /var/run/netns), tc filters, cgroups with sock_ops
programs attached, child processes -- are recorded *before* they are created in a state file,
`/run/spiketrace/state-<owner pid>.json`, so `cleanup_leftovers()` (`spiketrace cleanup`) can
remove what a SIGKILLed run left behind. It only touches state files whose owner is dead, and
kills only recorded pids that are still the same process (same /proc/<pid>/stat start time).

setns(2) moves only the calling *thread*: everything here that enters a namespace does so on the
current thread and returns to the previous namespace (/proc/thread-self/ns/net) in a `finally`.
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
from typing import Callable, Dict, Iterable, Iterator, List, Optional

from spiketrace.errors import SpikeTraceError

NETNS_DIR = Path("/var/run/netns")
NAME_PREFIX = "spiketrace-"
CLONE_NEWNET = 0x40000000

# Sysctls an older kernel may lack, where their absence already gives the wanted behaviour
# (before 6.5 SYN retransmits always back off exponentially; before 6.13 TIME_WAIT reuse waits
# a fixed 1 s). Namespace.create skips them when missing and lists them in `.skipped_sysctls`.
OPTIONAL_SYSCTLS = frozenset({"net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_tw_reuse_delay"})


def state_dir() -> Path:
    """Where state files live; `SPIKETRACE_STATE_DIR` overrides it (tests use a private one)."""
    return Path(os.environ.get("SPIKETRACE_STATE_DIR", "/run/spiketrace"))


def default_netns_name(tag: str) -> str:
    """`spiketrace-<tag>-<pid>`: the pid lets cleanup tell an orphan from a live run's netns."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", tag)[:40]
    return f"{NAME_PREFIX}{tag}-{os.getpid()}"


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
# entering a namespace

def _libc():
    from pyroute2.netns import _get_libc  # one ctypes CDLL, shared with pyroute2

    return _get_libc()


def _setns(fd: int) -> None:
    import ctypes

    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open_netns(name: str) -> int:
    try:
        return os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SpikeTraceError(f"network namespace {name} does not exist") from None


def enter_netns(name: str) -> None:
    """Move the calling thread (in a fresh child process: the process) into netns `name`.
    Call it before creating any socket."""
    fd = _open_netns(name)
    try:
        _setns(fd)
    except OSError as exc:
        raise SpikeTraceError(f"cannot enter network namespace {name}: {exc.strerror}") from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the body with this thread in netns `name`, then return to where it was."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(back)


def _sysctl_path(key: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or ".." in key:
        raise SpikeTraceError(f"invalid sysctl name {key!r}")
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls(name: str, keys: Iterable[str]) -> Dict[str, str]:
    """The values of sysctls `keys` inside netns `name` (whitespace normalised: "40000 40099").
    A key the kernel does not have is left out."""
    out = {}
    with inside(name):
        for key in keys:
            try:
                out[key] = " ".join(_sysctl_path(key).read_text().split())
            except FileNotFoundError:
                continue
    return out


def _write_sysctls(name: str, sysctls: Dict[str, str]) -> List[str]:
    """Write sysctls inside netns `name`; returns the optional ones the kernel lacks."""
    skipped = []
    with inside(name):
        for key, value in sysctls.items():
            path = _sysctl_path(key)
            try:
                path.write_text(str(value))
            except FileNotFoundError:
                if key in OPTIONAL_SYSCTLS:
                    skipped.append(key)
                    continue
                raise SpikeTraceError(
                    f"sysctl {key} does not exist on this kernel (or is not per-namespace)") from None
            except OSError as exc:
                raise SpikeTraceError(f"cannot set sysctl {key}={value}: {exc.strerror}") from None
    return skipped


def _lo_up(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=name) as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")


def parse_snmp(text: str) -> Dict[str, int]:
    """/proc/net/netstat or /proc/net/snmp text -> {"TcpExt.ListenOverflows": n, ...}."""
    out: Dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        prefix, names = head.split(":", 1)
        _, values = vals.split(":", 1)
        for key, value in zip(names.split(), values.split()):
            with contextlib.suppress(ValueError):
                out[f"{prefix}.{key}"] = int(value)
    return out


# ---------------------------------------------------------------------------------------------
# Namespace

class Namespace:
    """A named network namespace with `lo` up and its sysctls set. Use `Namespace.create`."""

    def __init__(self, name: str, inum: int, sysctls: Optional[Dict[str, str]] = None):
        self.name = name
        self.inum = inum
        self.sysctls = dict(sysctls or {})
        self.skipped_sysctls: List[str] = []
        self.removed = False

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, inum={self.inum})"

    @classmethod
    def create(cls, name: str, sysctls: Optional[Dict[str, str]] = None) -> "Namespace":
        """Create netns `name`, bring `lo` up and write `sysctls` inside it.

        Raises SpikeTraceError if it exists already, or a sysctl is unknown or refused (the
        half-made namespace is removed)."""
        from pyroute2 import netns

        from spiketrace.errors import require_root

        require_root("creating a network namespace")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise SpikeTraceError(f"invalid network namespace name {name!r}")
        if (NETNS_DIR / name).exists():
            raise SpikeTraceError(
                f"network namespace {name} exists already (a leftover? try `spiketrace cleanup`)")
        track("netns", name)
        try:
            netns.create(name)
            ns = cls(name, os.stat(NETNS_DIR / name).st_ino, sysctls)
            _lo_up(name)
            if sysctls:
                ns.skipped_sysctls = _write_sysctls(name, sysctls)
                for key in ns.skipped_sysctls:
                    ns.sysctls.pop(key, None)
        except BaseException:
            _remove_netns(name)
            untrack("netns", name)
            raise
        return ns

    def remove(self) -> None:
        """Remove the namespace (idempotent). Processes still inside keep it alive, unnamed,
        until they exit: stop them first."""
        if not self.removed:
            _remove_netns(self.name)
            untrack("netns", self.name)
            self.removed = True

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def read_sysctls(self, keys: Iterable[str]) -> Dict[str, str]:
        return read_sysctls(self.name, keys)

    def inside(self):
        """Context manager: this thread inside the namespace."""
        return inside(self.name)

    def read_proc_net(self, filename: str) -> str:
        """/proc/net/<filename> as seen inside the namespace (no process needs to live there)."""
        with inside(self.name):
            with open(f"/proc/thread-self/net/{filename}") as fh:
                return fh.read()

    def tcp_counters(self) -> Dict[str, int]:
        """The namespace's TcpExt.* and Tcp.* counters (netstat + snmp), cumulative."""
        with inside(self.name):
            text = ""
            for f in ("netstat", "snmp"):
                with open(f"/proc/thread-self/net/{f}") as fh:
                    text += fh.read()
        return {k: v for k, v in parse_snmp(text).items() if k.startswith(("Tcp.", "TcpExt."))}


def _remove_netns(name: str) -> bool:
    """Unmount and unlink /var/run/netns/<name>; False if it was not there."""
    path = NETNS_DIR / name
    if not path.exists():
        return False
    lib = _libc()
    lib.umount2(str(path).encode(), 2)  # MNT_DETACH; fails harmlessly if not mounted
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


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
        if _remove_netns(name):
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
        if _remove_netns(name):
            removed.append(f"network namespace {name}")
    for f in doc.get("files", []):
        with contextlib.suppress(OSError):
            os.unlink(f)
    return removed
