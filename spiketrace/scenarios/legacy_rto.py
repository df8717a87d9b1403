"""The 3 s initial RTO of Linux < 3.1 (CentOS 5), emulated with a sock_ops program
(tracer/bpf/legacy_rto.c) on a cgroup v2 that holds the bench clients."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from common import leftovers
from common.errors import SpikeTraceError
from spiketrace.scenarios.tcfault import SynLoss, bpf_source


def cgroup2_mount() -> Path:
    """Where the unified (v2) hierarchy is mounted."""
    from tracer.host import mounts

    for point, fs in mounts():
        if fs == "cgroup2":
            return Path(point)
    raise SpikeTraceError("no cgroup v2 hierarchy is mounted (needed for sock_ops); "
                          "mount one: mount -t cgroup2 none /sys/fs/cgroup/unified")


def kernel_hz() -> int:
    from common import meta

    hz = meta.kernel_hz()
    if not hz:
        raise SpikeTraceError("cannot find the kernel's CONFIG_HZ (no /proc/config.gz or "
                              "/boot/config-*): the sock_ops RTO is in jiffies")
    return hz


class SockOpsRto:
    """A cgroup with legacy_rto.c attached (BPF_CGROUP_SOCK_OPS): TCP sockets created by its
    processes get an initial handshake RTO of `rto_ms`."""

    def __init__(self, name: str, rto_ms: float = 3000.0, port: int = 0, hz: Optional[int] = None):
        self.hz = hz or kernel_hz()
        self.rto_ms = rto_ms
        self.jiffies = max(1, int(round(rto_ms * self.hz / 1000.0)))
        self.port = port
        self.path = cgroup2_mount() / name
        self.bpf = None
        self.fn = None
        self._stats = {"timeout_init": 0, "applied": 0}

    def attach(self) -> "SockOpsRto":
        from bcc import BPF, BPFAttachType

        src = bpf_source("legacy_rto.c")
        try:
            self.bpf = BPF(src_file=str(src).encode(),
                           cflags=[f"-DRTO_JIFFIES={self.jiffies}", f"-DPORT={int(self.port)}"])
            self.fn = self.bpf.load_func(b"legacy_rto", BPF.SOCK_OPS)
        except Exception as exc:
            raise SpikeTraceError(f"sock_ops program {src.name} failed to load: {exc}")
        leftovers.track("cgroups", str(self.path))
        try:
            self.path.mkdir(exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                BPF.attach_func(self.fn, fd, BPFAttachType.CGROUP_SOCK_OPS)
            finally:
                os.close(fd)
        except Exception as exc:
            self.detach()
            raise SpikeTraceError(f"cannot attach sock_ops program to {self.path}: {exc}")
        return self

    def add_pids(self, pids: Iterable[int]) -> None:
        """Move processes (all their threads) into the cgroup; sockets they create from now
        on get the legacy RTO."""
        for pid in pids:
            try:
                (self.path / "cgroup.procs").write_text(str(int(pid)))
            except ProcessLookupError:
                continue
            except OSError as exc:
                raise SpikeTraceError(f"cannot move pid {pid} into {self.path}: {exc.strerror}")

    def stats(self):
        if self.bpf is not None:
            self._stats = {"timeout_init": int(self.bpf[b"stats"][0].value),
                           "applied": int(self.bpf[b"stats"][1].value)}
        return dict(self._stats)

    def detach(self) -> None:
        """Detach, move processes left in the cgroup out, remove it (idempotent)."""
        from bcc import BPF, BPFAttachType

        if self.bpf is not None:
            self.stats()
            if self.fn is not None and self.path.is_dir():
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    BPF.detach_func(self.fn, fd, BPFAttachType.CGROUP_SOCK_OPS)
                except Exception:
                    pass  # not attached (attach failed); rmdir below releases it anyway
                finally:
                    os.close(fd)
        try:
            leftovers.remove_cgroup(str(self.path))
        finally:
            leftovers.untrack("cgroups", str(self.path))
            if self.bpf is not None:
                self.bpf.cleanup()
                self.bpf = None

    def __enter__(self) -> "SockOpsRto":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()


class LegacyRto(SynLoss):
    """syn-loss's dropper plus the 3 s initial RTO for the clients: a lost SYN costs 3 s."""

    DETAIL = "drop+legacy_rto"

    def install(self) -> None:
        super().install()
        self.rto = SockOpsRto(f"{self.ns.name}-legacy-rto", float(self.params["rto_ms"]),
                              self.port).attach()
        self.cgroup = str(self.rto.path)
        self.initial_rto_ms = float(self.params["rto_ms"])
        self.params.update(rto_jiffies=self.rto.jiffies, hz=self.rto.hz)

    def on_pids(self, pids, role):
        if role == "client" or self.params.get("server_too"):
            self.rto.add_pids(pids)

    def collect(self):
        rows = super().collect()
        self.params["sock_ops_stats"] = self.rto.stats()
        return rows

    def uninstall(self) -> None:
        try:
            rto = getattr(self, "rto", None)
            if rto is not None:
                rto.detach()
        finally:
            super().uninstall()
