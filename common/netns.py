"""Network namespaces: the one layer that creates, enters and reads them.

A namespace is named by a pid inside it (int), by `ip netns` name or ns-file path (str), or
None for the caller's own (`NetnsRef`). setns(2) moves only the calling *thread*:

- `enter(ref)`        for good, in a fresh child process, before it makes any socket;
- `entered(ref)`      a context manager: this thread inside `ref`, back where it was after;
- `run_in(ref, fn)`   `fn` in a short-lived thread inside `ref` (safe from the main thread).

Net sysctls and /proc/.../net files resolve against the *reader's* namespace, so they are read
from a thread inside it. Entering uses pyroute2's `netns.setns` on a file descriptor we open
(never with O_CREAT: a missing namespace is an error, not a new empty one).

`Namespace` creates a named namespace with `lo` up and sysctls set, recorded first in the
leftovers state file (common.leftovers) so a SIGKILLed run's namespace can be cleaned up.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, TypeVar, Union

from common.errors import SpikeTraceError, require_root

NETNS_DIR = Path("/var/run/netns")
NAME_PREFIX = "spiketrace-"

NetnsRef = Union[int, str, None]
T = TypeVar("T")

# Sysctls an older kernel may lack, where their absence already gives the wanted behaviour
# (before 6.5 SYN retransmits always back off exponentially; before 6.13 TIME_WAIT reuse waits
# a fixed 1 s). Namespace.create skips them when missing and lists them in `.skipped_sysctls`.
OPTIONAL_SYSCTLS = frozenset({"net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_tw_reuse_delay"})


def default_netns_name(tag: str) -> str:
    """`spiketrace-<tag>-<pid>`: the pid lets cleanup tell an orphan from a live run's netns."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", tag)[:40]
    return f"{NAME_PREFIX}{tag}-{os.getpid()}"


def netns_path(ref: NetnsRef) -> Optional[str]:
    """The ns file for `ref` (None for the current namespace). Raises SpikeTraceError if the
    pid or the named namespace does not exist."""
    if ref is None:
        return None
    if isinstance(ref, int):
        if not os.path.exists(f"/proc/{ref}"):
            raise SpikeTraceError(f"no process with pid {ref} (see `spiketrace doctor`)")
        return f"/proc/{ref}/ns/net"
    path = ref if "/" in ref else str(NETNS_DIR / ref)
    if not os.path.exists(path):
        raise SpikeTraceError(
            f"network namespace {ref!r} does not exist (`ip netns list` shows the named ones)")
    return path


def inum(ref: NetnsRef) -> int:
    """The namespace's inode number (what the kernel's `net->ns.inum` holds)."""
    path = netns_path(ref) or thread_proc("ns/net")
    return os.stat(path).st_ino


def thread_proc(rel: str) -> str:
    """A /proc path seen through the calling thread's namespaces."""
    return f"/proc/self/task/{threading.get_native_id()}/{rel}"


def thread_proc_net(name: str) -> str:
    """`/proc/.../net/<name>` of the calling thread's current namespace."""
    return thread_proc(f"net/{name}")


def _setns(fd: int, what: str) -> None:
    from pyroute2 import netns as pyroute2_netns

    try:
        pyroute2_netns.setns(fd, flags=0)
    except OSError as exc:
        raise SpikeTraceError(f"cannot enter network namespace {what}: "
                              f"{os.strerror(exc.errno) if exc.errno else exc} (needs root)") from None


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpikeTraceError(f"cannot open network namespace {path}: {exc.strerror}") from None


def enter(ref: NetnsRef) -> None:
    """Move the calling thread (in a fresh child process: the process) into `ref` for good.
    Call it before creating any socket; None does nothing."""
    path = netns_path(ref)
    if path is None:
        return
    fd = _open(path)
    try:
        _setns(fd, str(ref))
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(ref: NetnsRef) -> Iterator[None]:
    """Run the body with the *calling thread* inside `ref`, then return where it was.

    Everything opened meanwhile (files, sockets) stays bound to `ref`: only use it in a thread
    that does nothing else meanwhile (see `run_in`)."""
    path = netns_path(ref)
    if path is None:
        yield
        return
    back = _open(thread_proc("ns/net"))
    try:
        target = _open(path)
        try:
            _setns(target, str(ref))
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(back, "of origin")
    finally:
        os.close(back)


def run_in(ref: NetnsRef, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call `fn` in a short-lived thread inside `ref` and return its result (or raise its error)."""
    if ref is None:
        return fn(*args, **kwargs)
    box: Dict[str, object] = {}

    def target() -> None:
        try:
            with entered(ref):
                box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    t = threading.Thread(target=target, name="spiketrace-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")  # type: ignore[return-value]


# ---- sysctls and /proc/net ------------------------------------------------------------------
def _sysctl_path(key: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or ".." in key:
        raise SpikeTraceError(f"invalid sysctl name {key!r}")
    return Path("/proc/sys") / key.replace(".", "/")


def _read_sysctls(keys: Iterable[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for key in keys:
        try:
            out[key] = " ".join(_sysctl_path(key).read_text().split())
        except OSError:
            continue  # not on this kernel (e.g. tcp_syn_linear_timeouts before 6.5)
    return out


def read_sysctls(ref: NetnsRef, keys: Iterable[str]) -> Dict[str, str]:
    """The values of sysctls `keys` inside `ref` (whitespace normalised: "40000 40099"). A key
    the kernel does not have is left out."""
    return run_in(ref, _read_sysctls, list(keys))


def _write_sysctls(sysctls: Dict[str, str]) -> List[str]:
    skipped = []
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


def write_sysctls(ref: NetnsRef, sysctls: Dict[str, str]) -> List[str]:
    """Write sysctls inside `ref`; returns the optional ones the kernel lacks."""
    return run_in(ref, _write_sysctls, dict(sysctls))


def parse_snmp(data: Union[bytes, str], sections: Optional[Iterable[str]] = None) -> Dict[str, int]:
    """The header/value line pairs of /proc/net/netstat or /proc/net/snmp ->
    `{"TcpExt.ListenOverflows": 3, ...}`, for the wanted sections (None: all)."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    wanted = None if sections is None else set(sections)
    out: Dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[0::2], lines[1::2]):
        hname, _, hrest = header.partition(":")
        vname, _, vrest = values.partition(":")
        if hname != vname or (wanted is not None and hname not in wanted):
            continue
        for field, value in zip(hrest.split(), vrest.split()):
            try:
                out[f"{hname}.{field}"] = int(value)
            except ValueError:
                continue
    return out


def _read_proc_net(name: str) -> str:
    with open(thread_proc_net(name)) as fh:
        return fh.read()


def read_proc_net(ref: NetnsRef, name: str) -> str:
    """/proc/net/<name> as seen inside `ref` (no process needs to live there)."""
    return run_in(ref, _read_proc_net, name)


def tcp_counters(ref: NetnsRef) -> Dict[str, int]:
    """The namespace's TcpExt.* and Tcp.* counters (netstat + snmp), cumulative."""
    text = read_proc_net(ref, "netstat") + read_proc_net(ref, "snmp")
    return parse_snmp(text, ("TcpExt", "Tcp"))


# ---- named namespaces ---------------------------------------------------------------------------
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
        from pyroute2 import netns as pyroute2_netns

        from common.leftovers import track, untrack

        require_root("creating a network namespace")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise SpikeTraceError(f"invalid network namespace name {name!r}")
        if (NETNS_DIR / name).exists():
            raise SpikeTraceError(
                f"network namespace {name} exists already (a leftover? try `spiketrace cleanup`)")
        track("netns", name)
        try:
            pyroute2_netns.create(name)
            ns = cls(name, os.stat(NETNS_DIR / name).st_ino, sysctls)
            _lo_up(name)
            if sysctls:
                ns.skipped_sysctls = write_sysctls(name, sysctls)
                for key in ns.skipped_sysctls:
                    ns.sysctls.pop(key, None)
        except BaseException:
            remove_netns(name)
            untrack("netns", name)
            raise
        return ns

    def remove(self) -> None:
        """Remove the namespace (idempotent). Processes still inside keep it alive, unnamed,
        until they exit: stop them first."""
        from common.leftovers import untrack

        if not self.removed:
            remove_netns(self.name)
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
        return entered(self.name)

    def read_proc_net(self, filename: str) -> str:
        return read_proc_net(self.name, filename)

    def tcp_counters(self) -> Dict[str, int]:
        return tcp_counters(self.name)


def _lo_up(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=name) as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")


def remove_netns(name: str) -> bool:
    """Unmount and unlink /var/run/netns/<name>; False if it was not there."""
    from pyroute2 import netns as pyroute2_netns

    if not (NETNS_DIR / name).exists():
        return False
    try:
        pyroute2_netns.remove(name)  # umount2(MNT_DETACH) + unlink
    except FileNotFoundError:
        return False
    return True
