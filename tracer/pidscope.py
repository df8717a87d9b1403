"""The ports a traced process already serves when tracing starts (`trace --pid` / `--cgroup`
without `--port`).

With a task filter the kernel side keeps a socket only when a task in scope connects it or
takes it up (tracer/bpf/common.h), and learns a server port from the first connection taken up
there. Evidence about a packet rather than a socket (a SYN dropped by a full accept queue, a
listener's SYN-ACK retransmit) can come before any connection is taken up, so the listeners the
processes hold at start are read here: their socket inodes from /proc/PID/fd, their ports from
/proc/PID/net/tcp{,6} (the process's own network namespace).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Set

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def socket_inodes(pid: int) -> Set[int]:
    """Inodes of the sockets process `pid` holds open (empty if it is gone or unreadable)."""
    out: Set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            out.add(int(link[8:-1]))
    return out


def listening_ports(pid: int) -> Set[int]:
    """Local ports of the TCP listeners process `pid` holds."""
    inodes = socket_inodes(pid)
    ports: Set[int] = set()
    if not inodes:
        return ports
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if len(f) > 9 and f[3] == _LISTEN and int(f[9]) in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def cgroup_pids(cgroup_dir: str) -> Set[int]:
    """The processes of a cgroup v2 directory and its descendants."""
    pids: Set[int] = set()
    for root, _dirs, files in os.walk(cgroup_dir):
        if "cgroup.procs" in files:
            try:
                pids.update(int(x) for x in Path(root, "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
    return pids


def served_ports(pids: Iterable[int]) -> Set[int]:
    ports: Set[int] = set()
    for pid in pids:
        ports |= listening_ports(int(pid))
    return ports


def descendants(pids: Iterable[int]) -> Set[int]:
    """Every process below `pids` now (a forking server's workers); those forked later are
    marked in the kernel as they are created (tracer/bpf/sched.c, common.h inherit_user_pid)."""
    children: dict = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    out: Set[int] = set()
    todo = [int(p) for p in pids]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out
