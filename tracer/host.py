"""What this machine can trace: the host checks, in one place.

`collect()` computes every check of `spiketrace doctor` as data (`Report`: system checks and, per
evidence, the backend the tracer's own probe selection picks); the doctor command renders it.
`require_tracing()` is what `spiketrace run`, `spiketrace trace` and the tracer check before
anything is attached: root, BCC, tracefs, kernel headers, with the fix in one line.
Works without root and without BCC (it then says so).
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from common.errors import NeedsRoot, SpikeTraceError
from common.meta import kernel_hz

INSTALL = "sudo scripts/install.sh"
DOCTOR = "run `spiketrace doctor` to see what this machine is missing"
# where tracefs is mounted: its own mount point first, the debugfs one on older systems
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclasses.dataclass
class Check:
    """One line of the report. ok: True works, False broken, None works with a caveat."""

    name: str
    ok: Optional[bool]
    value: str
    fix: str = ""
    required: bool = True


@dataclasses.dataclass
class ProbeCheck:
    evidence: str
    backend: str  # tracepoint, raw_tracepoint, kprobe, fentry, sampled, inferred, unavailable, unknown
    detail: str
    required: bool = False
    fix: str = ""
    why: str = ""  # why a preferred backend was not used

    @property
    def ok(self) -> Optional[bool]:
        if self.backend == "unavailable":
            return False
        if self.backend in ("unknown", "inferred"):
            return None
        return True


@dataclasses.dataclass
class Report:
    system: List[Check]
    probes: List[ProbeCheck]

    @property
    def problems(self) -> List[str]:
        """Names of the required pieces that do not work."""
        bad = [c.name for c in self.system if c.required and c.ok is False]
        bad += [f"probe {p.evidence}" for p in self.probes if p.required and p.ok is not True]
        return bad

    def to_dict(self) -> Dict[str, object]:
        return {"system": [dataclasses.asdict(c) for c in self.system],
                "probes": [dataclasses.asdict(p) for p in self.probes],
                "problems": self.problems}


# -- environment -------------------------------------------------------------------------------
def tracefs_dir() -> Optional[str]:
    """The mounted tracefs (events/ inside), or None."""
    for path in TRACEFS_CANDIDATES:
        try:
            if os.path.isdir(os.path.join(path, "events")):
                return path
        except OSError:
            continue
    return None


def tracefs() -> str:
    """The tracefs mount, or a SpikeTraceError saying how to mount it."""
    path = tracefs_dir()
    if path is None:
        raise SpikeTraceError(
            "tracefs is not mounted (no /sys/kernel/tracing/events): mount it with "
            f"`mount -t tracefs nodev /sys/kernel/tracing`; {DOCTOR}")
    return path


def mounts() -> List[Tuple[str, str]]:
    """(mount point, fs type) from /proc/self/mounts."""
    out = []
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3:
                    out.append((fields[1], fields[2]))
    except OSError:
        pass
    return out


def check_kernel() -> Check:
    return Check("kernel", True, f"{platform.release()} ({platform.machine()})", required=False)


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", True, "yes")
    return Check("root", False, "no: loading BPF programs needs root",
                 fix="sudo spiketrace doctor")


def _distro_bcc_hint() -> str:
    for path in ("/usr/lib/python3/dist-packages/bcc", "/usr/lib/python3.9/site-packages/bcc",
                 f"/usr/lib/python3.{sys.version_info[1]}/site-packages/bcc"):
        if os.path.isdir(path):
            return path
    return ""


def check_bcc() -> Check:
    try:
        from bcc import BPF  # noqa: F401  (an empty bcc/ dir imports as a namespace package)
    except Exception as exc:  # ImportError, or a broken libbcc (OSError)
        found = _distro_bcc_hint()
        if found:
            return Check("BCC", False,
                         f"installed ({found}) but not importable from {sys.executable}: {exc}",
                         fix=f"{INSTALL}   # builds .venv on the distro python3 with "
                             "--system-site-packages")
        return Check("BCC", False, f"missing ({exc})",
                     fix=f"{INSTALL}   # or: apt install python3-bpfcc | dnf install python3-bcc")
    import bcc

    return Check("BCC", True, str(getattr(bcc, "__version__", "present")))


def _headers_release(build: Path) -> str:
    """The kernel release the headers in `build` were made for ('' if unknown): UTS_RELEASE,
    what `uname -r` of that build says, first. include/config/kernel.release can differ from
    it: Debian's exact headers for 5.10.0-46-amd64 have `5.10.262` there (6.1.0-57-amd64:
    `6.1.192`), so reading it first called them generic."""
    try:
        text = (build / "include/generated/utsrelease.h").read_text()
        return text.split('"')[1]
    except (OSError, IndexError):
        pass
    try:
        return (build / "include/config/kernel.release").read_text().strip()
    except OSError:
        pass
    real = os.path.realpath(build)
    name = os.path.basename(real)
    return name[len("linux-headers-"):] if name.startswith("linux-headers-") else name


def check_headers(release: Optional[str] = None, modules: str = "/lib/modules") -> Check:
    """Headers BCC can compile against (`release`, `modules`: another kernel's, for tests)."""
    release = release or platform.release()
    build = Path(modules) / release / "build"
    fix = (f"{INSTALL}   # or: apt install linux-headers-{release} | "
           f"dnf install kernel-devel-{release}")
    if (build / "include").is_dir():
        built_for = _headers_release(build)
        if built_for == release:
            return Check("kernel headers", True, f"exact ({os.path.realpath(build)})")
        return Check("kernel headers", None,
                     f"generic-linked: {os.path.basename(os.path.realpath(build))} (built for "
                     f"{built_for or 'another kernel'}); BCC compiles, offsets come from BTF",
                     fix=f"apt install linux-headers-{release}   # exact ones, if they exist",
                     )
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return Check("kernel headers", True, "from the kernel (CONFIG_IKHEADERS)")
    return Check("kernel headers", False, f"missing ({build} has no include/)", fix=fix)


def check_tracefs() -> Check:
    path = tracefs_dir()
    if path:
        return Check("tracefs", True, f"mounted at {path}")
    if any(fs == "tracefs" for _, fs in mounts()):
        return Check("tracefs", False, "mounted but not readable (needs root)",
                     fix="sudo spiketrace doctor")
    return Check("tracefs", False, "not mounted",
                 fix="sudo mount -t tracefs nodev /sys/kernel/tracing")


def check_btf() -> Check:
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        return Check("BTF", True, "/sys/kernel/btf/vmlinux", required=False)
    return Check("BTF", None, "absent: struct offsets cannot be checked at run time",
                 fix="a kernel built with CONFIG_DEBUG_INFO_BTF=y", required=False)


def check_hz() -> Check:
    hz = kernel_hz()
    if hz:
        return Check("HZ", True, str(hz), required=False)
    return Check("HZ", None, "unknown (no /proc/config.gz or /boot/config-*); assuming 250",
                 required=False)


def check_cgroup2() -> Check:
    points = [mp for mp, fs in mounts() if fs == "cgroup2"]
    if points:
        return Check("cgroup v2", True, f"mounted at {points[0]}", required=False)
    return Check("cgroup v2", None, "not mounted: `trace --cgroup` and sock_ops scenarios need it",
                 fix="sudo mkdir -p /sys/fs/cgroup/unified && "
                     "sudo mount -t cgroup2 none /sys/fs/cgroup/unified", required=False)


def _bpf_syscall_nr() -> Optional[int]:
    return {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}.get(platform.machine())


def ringbuf_supported() -> Optional[bool]:
    """Create (and close) a BPF ring buffer map: True/False, None if it cannot be tried here."""
    nr = _bpf_syscall_nr()
    if nr is None or os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[3] = 27, 4096  # BPF_MAP_TYPE_RINGBUF, max_entries = one page
    fd = libc.syscall(nr, 0, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_MAP_CREATE
    if fd < 0:
        return False
    os.close(fd)
    return True


def check_ringbuf() -> Check:
    ok = ringbuf_supported()
    if ok:
        return Check("BPF ring buffer", True, "yes")
    release = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if ok is None:
        likely = release >= (5, 8)
        return Check("BPF ring buffer", None if likely else False,
                     f"not tried without root; kernel {'>=' if likely else '<'} 5.8",
                     fix="sudo spiketrace doctor")
    return Check("BPF ring buffer", False, "map creation refused (needs Linux >= 5.8)",
                 fix="a kernel >= 5.8 (CentOS Stream 9, Debian 11+, Ubuntu 20.10+)")


def kprobes_available() -> bool:
    """True if this kernel can attach kprobes (CONFIG_KPROBES with the perf kprobe PMU)."""
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type")


def check_kprobes() -> Check:
    if kprobes_available():
        return Check("kprobes", True, "enabled", required=False)
    return Check("kprobes", None, "disabled (CONFIG_KPROBES off): tracepoints only",
                 required=False)


# -- probes ------------------------------------------------------------------------------------
REQUIRED_EVIDENCE = ("retransmit", "state_change")  # without these nothing can be explained


# listen_overflow without a function probe (tracer/probes.py): the counter and the queue depth
_SAMPLED = "TcpExt ListenOverflows + sock_diag queue"


def probe_checks() -> List[ProbeCheck]:
    """Rows from the tracer's own probe selection (`tracer.probes.plan`), so doctor and the
    tracer can never disagree; every evidence `unknown` where it cannot plan (no root)."""
    from tracer import probes as tracer_probes

    try:
        plan = tracer_probes.plan()
    except Exception as exc:  # no tracefs access, no BTF, no BCC: say why, evidence by evidence
        why = str(exc).split(";")[0]
        return [ProbeCheck("listen_overflow", "sampled", _SAMPLED)] + [
            ProbeCheck(name, "unknown", f"cannot plan probes here: {why}", name in REQUIRED_EVIDENCE)
            for name in tracer_probes.EVIDENCE_NAMES if name != "listen_overflow"]
    why = {}
    for note in plan.notes:  # "accept_wait: tracepoint (kretprobe: kernel without kprobes)"
        name, _, rest = note.partition(": ")
        why[name] = rest[rest.find("(") + 1:rest.rfind(")")] if "(" in rest else rest
    rows = []
    for name, backend in plan.backends.items():
        cand = plan.chosen.get(name)
        targets = ", ".join(dict.fromkeys(t for t, _fn, _f in cand.attach)) if cand else ""
        if backend == "sampled":
            targets = _SAMPLED
        if backend == "inferred" and cand is not None and cand.needs:
            targets = f"from {cand.needs}"
        fix = "" if backend != "unavailable" else _unavailable_fix(name)
        rows.append(ProbeCheck(name, backend, targets, name in REQUIRED_EVIDENCE, fix,
                               why=why.get(name, "")))
    return rows


def _unavailable_fix(name: str) -> str:
    """What would give an unavailable evidence: its tracepoints, or kprobes where it has a
    function probe (conn_life has none: only its 6.3+ tracepoints give it)."""
    from tracer import probes as tracer_probes

    ev = next(e for e in tracer_probes.EVIDENCE if e.name == name)
    points = dict.fromkeys(t.split(":")[-1] for c in ev.candidates
                           if c.backend in ("raw_tracepoint", "tracepoint") for t, _fn, _f in c.attach)
    ways = [f"a kernel with the tracepoint{'s' if len(points) > 1 else ''} {', '.join(points)}"] if points else []
    if any(c.backend in tracer_probes.FUNCTION_BACKENDS for c in ev.candidates):
        ways.append("CONFIG_KPROBES=y")
    return " or ".join(ways)


def collect() -> Report:
    """Every check of `spiketrace doctor`, as data."""
    system = [check_kernel(), check_root(), check_bcc(), check_headers(), check_tracefs(),
              check_btf(), check_hz(), check_cgroup2(), check_ringbuf(), check_kprobes()]
    return Report(system=system, probes=probe_checks())


# -- what the tracer needs before it starts -----------------------------------------------------
def kernel_headers() -> str:
    """Where BCC finds this kernel's headers; one clear error if nowhere. BCC compiles against
    /lib/modules/$(uname -r)/build, or the kernel's own copy (CONFIG_IKHEADERS)."""
    build = f"/lib/modules/{os.uname().release}/build"
    for candidate in (build, "/sys/kernel/kheaders.tar.xz"):
        if os.path.exists(candidate):
            return candidate
    raise SpikeTraceError(
        f"no kernel headers for {os.uname().release} ({build} is missing): run scripts/install.sh, "
        f"which installs them or links the distro's generic headers; {DOCTOR}")


def require_tracing(what: str) -> None:
    """Raise one clear SpikeTraceError if this machine cannot trace at all: root, the bcc
    module, tracefs, kernel headers, in that order (`what` names the command)."""
    if os.geteuid() != 0:
        raise NeedsRoot(f"{what} needs root (BPF): run it with sudo; {DOCTOR}")
    try:
        from bcc import BPF  # noqa: F401  (an empty bcc/ dir imports as a namespace package)
    except Exception as exc:
        raise SpikeTraceError(
            f"the bcc Python module is not usable from this Python ({exc}): install python3-bpfcc "
            f"/ python3-bcc with scripts/install.sh (it does not come from PyPI); {DOCTOR}")
    tracefs()
    kernel_headers()


def resolve_cgroup(path: str) -> str:
    """An existing cgroup v2 directory: absolute, or relative to a cgroup2 mount."""
    points = [mp for mp, fs in mounts() if fs == "cgroup2"]
    candidates = [path] if os.path.isabs(path) else []
    candidates += [os.path.join(mp, path.lstrip("/")) for mp in points]
    for c in candidates:
        real = os.path.realpath(c)
        in_v2 = any(real == mp or real.startswith(mp.rstrip("/") + "/") for mp in points)
        if in_v2 and os.path.isfile(os.path.join(real, "cgroup.procs")):
            return real
    where = f"cgroup v2 is mounted at {', '.join(points)}" if points else "cgroup v2 is not mounted"
    raise SpikeTraceError(f"--cgroup {path}: no such cgroup v2 directory ({where}; see `spiketrace doctor`)")


