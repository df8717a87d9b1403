"""Which container, pod or systemd unit a process belongs to, from its cgroup path.

The kernel records the pid that connected or accepted a socket; its cgroup v2 path
(`/proc/<pid>/cgroup`) names the workload. The shapes met in practice:

    /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope
    /kubepods/burstable/pod<uid>/<id>                         (kubelet's cgroupfs driver)
    /system.slice/docker-<id>.scope, /docker/<id>             (Docker)
    /machine.slice/libpod-<id>.scope                          (Podman)
    /system.slice/nginx.service                               (a systemd service)

A cgroup path knows the pod's UID and the container's ID, not their names. The names come from
what the node itself keeps: the kubelet's log links `/var/log/containers/<pod>_<namespace>_
<container>-<id>.log` (mounted read-only into the DaemonSet, deploy/kubernetes/), and Docker's
`/var/lib/docker/containers/<id>/config.v2.json`. Lookups are cached by pid (a pid is looked up
once, when its connection is first seen, so a short-lived client is still named) and the
cache is bounded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional

_ID = r"([0-9a-f]{64})"
_K8S_SYSTEMD = re.compile(r"kubepods[^/]*-pod([0-9a-f_]{36})\.slice(?:/(?:cri-containerd|crio|docker)-"
                          + _ID + r"\.scope)?")
_K8S_CGROUPFS = re.compile(r"/kubepods(?:/[a-z]+)?/pod([0-9a-f-]{36})(?:/" + _ID + r")?")
_RUNTIME_SCOPE = re.compile(r"(docker|libpod|cri-containerd|crio)-" + _ID + r"\.scope")
_DOCKER_CGROUPFS = re.compile(r"/docker/" + _ID)
_UNIT = re.compile(r"/([^/]+\.service)(?:/|$)")


@dataclasses.dataclass(frozen=True)
class Workload:
    """What owns a process: a pod's container, a bare container, a systemd unit, or only a
    cgroup path. Names are empty where the node does not say them."""

    cgroup: str
    kind: str = "cgroup"  # pod | container | unit | cgroup | host
    pod_uid: str = ""
    pod: str = ""  # namespace/name
    container: str = ""  # container name
    container_id: str = ""
    unit: str = ""

    def label(self) -> str:
        """`pod default/web-7f9 container nginx`, `container web`, `unit nginx.service`."""
        if self.kind == "pod":
            pod = self.pod or f"uid {self.pod_uid}"
            who = self.container or (self.container_id[:12] if self.container_id else "")
            return f"pod {pod}" + (f" container {who}" if who else "")
        if self.kind == "container":
            return f"container {self.container or self.container_id[:12]}"
        if self.kind == "unit":
            return f"unit {self.unit}"
        return "" if self.kind == "host" else f"cgroup {self.cgroup}"

    def to_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "pod": self.pod, "pod_uid": self.pod_uid,
                "container": self.container, "container_id": self.container_id,
                "unit": self.unit, "cgroup": self.cgroup}


def parse_cgroup_file(text: str) -> str:
    """The cgroup v2 path of a /proc/<pid>/cgroup (`0::/path`), else the systemd v1 one."""
    v1: Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            return parts[2]
        v1.setdefault(parts[1], parts[2])
    return v1.get("name=systemd") or v1.get("pids") or ""


def classify(cgroup: str) -> Workload:
    """The workload a cgroup path names (no names looked up: see `Resolver`)."""
    m = _K8S_SYSTEMD.search(cgroup)
    if m:
        return Workload(cgroup, "pod", pod_uid=m.group(1).replace("_", "-"), container_id=m.group(2) or "")
    m = _K8S_CGROUPFS.search(cgroup)
    if m:
        return Workload(cgroup, "pod", pod_uid=m.group(1), container_id=m.group(2) or "")
    m = _RUNTIME_SCOPE.search(cgroup) or _DOCKER_CGROUPFS.search(cgroup)
    if m:
        return Workload(cgroup, "container", container_id=m.group(m.lastindex))
    m = _UNIT.search(cgroup)
    if m:
        return Workload(cgroup, "unit", unit=m.group(1))
    return Workload(cgroup, "host" if cgroup in ("", "/", "/init.scope") else "cgroup")


class Resolver:
    """pid -> Workload, with the names the node keeps (see the module docstring). `root`
    prefixes every path read (tests use a fake tree)."""

    def __init__(self, root: str = "/", max_entries: int = 65536, log_dirs_refresh_s: float = 10.0):
        self.root = Path(root)
        self.max_entries = max_entries
        self.refresh_s = log_dirs_refresh_s
        self._by_pid: "OrderedDict[int, Optional[Workload]]" = OrderedDict()
        self._k8s_names: Dict[str, tuple] = {}  # container id -> (namespace/pod, container)
        self._k8s_pods: Dict[str, str] = {}  # pod uid -> namespace/pod
        self._k8s_read = -1e9
        self._lock = threading.Lock()  # called from the tracer's thread and the main loop

    def __call__(self, pid: int) -> Optional[Workload]:
        """The workload of a live process (None if it is gone or pid is 0). Cached."""
        pid = int(pid)
        if pid <= 0:
            return None
        with self._lock:
            return self._lookup(pid)

    def _lookup(self, pid: int) -> Optional[Workload]:
        if pid in self._by_pid:
            self._by_pid.move_to_end(pid)
            return self._by_pid[pid]
        try:
            text = (self.root / f"proc/{pid}/cgroup").read_text()
        except OSError:
            return None  # gone already: not cached, a reused pid may come
        w = self._named(classify(parse_cgroup_file(text)))
        self._by_pid[pid] = w
        while len(self._by_pid) > self.max_entries:
            self._by_pid.popitem(last=False)
        return w

    def forget(self, pid: int) -> None:
        with self._lock:
            self._by_pid.pop(int(pid), None)

    def forget_gone(self) -> int:
        """Drop the processes that exited (their pid may be reused by another workload)."""
        with self._lock:
            pids = list(self._by_pid)
        gone = [pid for pid in pids if not (self.root / f"proc/{pid}").exists()]
        with self._lock:
            for pid in gone:
                self._by_pid.pop(pid, None)
        return len(gone)

    def _named(self, w: Workload) -> Workload:
        if w.kind == "pod":
            names = self._k8s(w.container_id, w.pod_uid)
            return dataclasses.replace(w, pod=names[0], container=names[1])
        if w.kind == "container":
            return dataclasses.replace(w, container=self._docker_name(w.container_id))
        return w

    def _k8s(self, container_id: str, pod_uid: str) -> tuple:
        for attempt in range(2):
            if container_id in self._k8s_names:
                return self._k8s_names[container_id]
            if not container_id and pod_uid in self._k8s_pods:
                return (self._k8s_pods[pod_uid], "")
            if attempt or time.monotonic() - self._k8s_read < self.refresh_s:
                break
            self._read_k8s_logs()
        return (self._k8s_pods.get(pod_uid, ""), "")

    def _read_k8s_logs(self) -> None:
        """`/var/log/containers/<pod>_<ns>_<container>-<id>.log` and `/var/log/pods/<ns>_<pod>_<uid>`."""
        self._k8s_read = time.monotonic()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.root / "var/log/containers"):
                m = re.fullmatch(r"(.+)_(.+)_(.+)-" + _ID + r"\.log", name)
                if m:
                    self._k8s_names[m.group(4)] = (f"{m.group(2)}/{m.group(1)}", m.group(3))
        with contextlib.suppress(OSError):
            for name in os.listdir(self.root / "var/log/pods"):
                parts = name.split("_")
                if len(parts) == 3:
                    self._k8s_pods[parts[2]] = f"{parts[0]}/{parts[1]}"

    def _docker_name(self, container_id: str) -> str:
        path = self.root / f"var/lib/docker/containers/{container_id}/config.v2.json"
        try:
            return str(json.loads(path.read_text()).get("Name", "")).lstrip("/")
        except (OSError, ValueError, AttributeError):
            return ""

