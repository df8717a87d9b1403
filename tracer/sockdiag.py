"""Network-namespace plumbing for the counter sampler: enter a netns from one thread, and read
listener accept queues with sock_diag (pyroute2 `DiagSocket`).

`setns(2)` changes the namespace of the *calling thread* only, so the sampler thread can step
into the traced namespace, open what it needs there (proc files, a netlink socket), and step
back out; the objects it opened stay bound to the namespace they were opened in.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from typing import Dict, Iterator, List, Optional, Tuple, Union

from spiketrace.errors import SpikeTraceError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"
TCP_LISTEN = 10

# A traced namespace is named by a pid inside it (int), by `ip netns` name or ns-file path (str),
# or None for the namespace of this process.
NetnsRef = Union[int, str, None]

_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(ref: NetnsRef) -> Optional[str]:
    """The ns file for `ref` (None for the current namespace). Raises SpikeTraceError if the
    pid or the named namespace does not exist."""
    if ref is None:
        return None
    if isinstance(ref, int):
        path = f"/proc/{ref}/ns/net"
        if not os.path.exists(f"/proc/{ref}"):
            raise SpikeTraceError(f"no process with pid {ref} (see `spiketrace doctor`)")
        return path
    path = ref if "/" in ref else os.path.join(NETNS_RUN_DIR, ref)
    if not os.path.exists(path):
        raise SpikeTraceError(
            f"network namespace {ref!r} does not exist (`ip netns list` shows the named ones)")
    return path


def _thread_proc(rel: str) -> str:
    """A /proc path seen through this thread's namespaces (`/proc/thread-self` before 3.17)."""
    return f"/proc/self/task/{threading.get_native_id()}/{rel}"


@contextlib.contextmanager
def entered(ref: NetnsRef) -> Iterator[None]:
    """Run the body with the *calling thread* inside network namespace `ref`, then return.

    Only safe in a thread you own (never the main thread of a program that keeps working in the
    host namespace at the same time, since everything it opens meanwhile lands in `ref`)."""
    path = netns_path(ref)
    if path is None:
        yield
        return
    orig = os.open(_thread_proc("ns/net"), os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpikeTraceError(f"cannot open network namespace {path}: {exc.strerror}")
        try:
            try:
                _setns(target)
            except OSError as exc:
                raise SpikeTraceError(
                    f"cannot enter network namespace {path}: {exc.strerror} (needs root)")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(orig)


def run_in_netns(ref: NetnsRef, fn, *args, **kwargs):
    """Call `fn` in a short-lived thread inside namespace `ref` and return its result."""
    if ref is None:
        return fn(*args, **kwargs)
    box: Dict[str, object] = {}

    def target():
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
    return box.get("value")


def thread_proc_net(name: str) -> str:
    """`/proc/.../net/<name>` of the calling thread's current namespace."""
    return _thread_proc(f"net/{name}")


class ListenerProbe:
    """Accept-queue depth and backlog of the listeners on chosen ports, via sock_diag.

    Create it (or call `open`) while the thread is inside the traced namespace: the netlink
    socket only sees sockets of the namespace it was created in. For a listener the kernel
    reports the accept-queue length in `idiag_rqueue` and the backlog in `idiag_wqueue`; a
    queue with backlog B holds B+1 connections. Several listeners on one port (SO_REUSEPORT,
    IPv4 + IPv6) are summed.
    """

    def __init__(self, ports: List[int]):
        from pyroute2 import DiagSocket

        self.ports = sorted(set(int(p) for p in ports))
        self._sock = DiagSocket()
        self._sock.bind()

    def sample(self) -> Dict[int, Tuple[int, int]]:
        """port -> (queue, backlog) for every requested port that has a listener."""
        out: Dict[int, Tuple[int, int]] = {}
        wanted = set(self.ports)
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._sock.get_sock_stats(family=family, states=1 << TCP_LISTEN):
                port = msg.get("idiag_sport")
                if port not in wanted or msg.get("idiag_state") != TCP_LISTEN:
                    continue
                q, b = out.get(port, (0, 0))
                out[port] = (q + int(msg["idiag_rqueue"]), b + int(msg["idiag_wqueue"]))
        return out

    def close(self) -> None:
        try:
            self._sock.close()
        except Exception:
            pass
