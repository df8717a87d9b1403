"""Network-namespace plumbing for the counter sampler: enter a netns from one thread, and read
listener accept queues with sock_diag.

`setns(2)` changes the namespace of the *calling thread* only, so the sampler thread can step
into the traced namespace, open what it needs there (proc files, a netlink socket), and step
back out; the objects it opened stay bound to the namespace they were opened in.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import threading
from typing import Dict, Iterator, List, Optional, Tuple, Union

from spiketrace.errors import SpikeTraceError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"
TCP_LISTEN = 10
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300

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

    Create it while the thread is inside the traced namespace: a netlink socket only sees
    sockets of the namespace it was created in. For a listener the kernel reports the
    accept-queue length in `idiag_rqueue` and the backlog in `idiag_wqueue` (what `ss -lnt`
    shows as Recv-Q / Send-Q); a queue with backlog B holds B+1 connections. Several listeners
    on one port (SO_REUSEPORT, IPv4 + IPv6) are summed.

    The request is built by hand (a raw NETLINK_SOCK_DIAG socket and `struct`) rather than
    through pyroute2's DiagSocket: same kernel interface, but ~50 us per sample instead of
    ~1.6 ms, which matters for a sampler running at 20 Hz for days. The kernel filters the
    dump by source port for listeners, so one request per port and family is cheap.
    """

    _NLMSG = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
    _REQ = struct.Struct("=BBBBI")  # inet_diag_req_v2 head: family, protocol, ext, pad, states
    _SOCKID = struct.Struct("!HH16s16sI8s")  # inet_diag_sockid: sport, dport, src, dst, if, cookie
    _MSG = struct.Struct("=BBBB48sIIIII")  # inet_diag_msg: family, state, timer, retrans, id,
    #                                        expires, rqueue, wqueue, uid, inode

    def __init__(self, ports: List[int]):
        self.ports = sorted(set(int(p) for p in ports))
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_SOCK_DIAG)
        self._sock.bind((0, 0))
        self._seq = 0

    def _dump(self, family: int, port: int) -> List[Tuple[int, int, int]]:
        """(sport, rqueue, wqueue) of the listeners of `family` on `port`."""
        self._seq += 1
        body = self._REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN) + \
            self._SOCKID.pack(port, 0, b"", b"", 0, b"\xff" * 8)
        hdr = self._NLMSG.pack(self._NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                               NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)
        self._sock.send(hdr + body)
        out = []
        while True:
            data = self._sock.recv(65536)
            off = 0
            while off + self._NLMSG.size <= len(data):
                length, mtype, _flags, seq, _pid = self._NLMSG.unpack_from(data, off)
                if length < self._NLMSG.size:
                    return out
                if seq == self._seq:
                    if mtype == NLMSG_DONE:
                        return out
                    if mtype == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, off + self._NLMSG.size)[0]
                        if err == 0:
                            return out
                        raise OSError(err, f"sock_diag: {os.strerror(err)}")
                    if mtype == SOCK_DIAG_BY_FAMILY:
                        fam, state, _t, _r, sockid, _e, rq, wq, _u, _i = \
                            self._MSG.unpack_from(data, off + self._NLMSG.size)
                        sport = struct.unpack_from("!H", sockid)[0]
                        if state == TCP_LISTEN:
                            out.append((sport, rq, wq))
                off += (length + 3) & ~3

    def sample(self) -> Dict[int, Tuple[int, int]]:
        """port -> (queue, backlog) for every requested port that has a listener."""
        out: Dict[int, Tuple[int, int]] = {}
        for port in self.ports:
            for family in (socket.AF_INET, socket.AF_INET6):
                for sport, rq, wq in self._dump(family, port):
                    if sport != port:  # a kernel that ignores the port filter
                        continue
                    q, b = out.get(port, (0, 0))
                    out[port] = (q + rq, b + wq)
        return out

    def close(self) -> None:
        self._sock.close()
