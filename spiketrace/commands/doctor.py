"""`spiketrace doctor`: what this machine can trace, what is missing, and the command that
fixes each missing piece. Works without root and without BCC (it then says so).

The checks compute plain data (`collect()` -> `Report`); `render()` prints it. The probe rows
come from the tracer's own detection when it is importable, so doctor and the tracer agree.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import click

INSTALL = "sudo scripts/install.sh"

# evidence -> (tracepoints (all needed), kprobe fallback function, inferred fallback, required)
# Mirrors DESIGN.md "Kernel mechanisms"; used only until tracer.probes offers detection.
_FALLBACK_PROBES: List[Tuple[str, Tuple[str, ...], str, str, bool]] = [
    ("retransmit", ("tcp/tcp_retransmit_skb",), "tcp_retransmit_skb", "", True),
    ("synack_retransmit", ("tcp/tcp_retransmit_synack",), "tcp_rtx_synack", "", False),
    ("state_change", ("sock/inet_sock_set_state",), "tcp_set_state", "", True),
    ("time_wait", (), "tcp_time_wait", "state_change + sockstat census", False),
    ("accept_wait", (), "inet_csk_accept",
     "state_change + sock/sock_recv_length (first read), else syscalls/sys_exit_accept4", False),
    ("drop", ("skb/kfree_skb",), "kfree_skb_reason", "", False),
    ("reset_sent", ("tcp/tcp_send_reset",), "tcp_v4_send_reset", "", False),
    ("reset_received", ("tcp/tcp_receive_reset",), "tcp_reset", "", False),
    ("connect_error", (), "", "state_change (SYN_SENT -> CLOSE, sk_err)", False),
    ("runq_delay", ("sched/sched_wakeup_new", "sched/sched_switch"),
     "", "", False),
]


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
    """The mounted tracefs (the same order BCC uses), or None."""
    for path in ("/sys/kernel/debug/tracing", "/sys/kernel/tracing"):
        try:
            if os.path.isdir(os.path.join(path, "events")):
                return path
        except OSError:
            continue
    return None


def _mounts() -> List[Tuple[str, str]]:
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
    """The kernel release the headers in `build` were made for ('' if unknown)."""
    for rel in ("include/config/kernel.release",):
        try:
            return (build / rel).read_text().strip()
        except OSError:
            pass
    try:
        text = (build / "include/generated/utsrelease.h").read_text()
        return text.split('"')[1]
    except (OSError, IndexError):
        pass
    real = os.path.realpath(build)
    name = os.path.basename(real)
    return name[len("linux-headers-"):] if name.startswith("linux-headers-") else name


def check_headers() -> Check:
    release = platform.release()
    build = Path(f"/lib/modules/{release}/build")
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
    if any(fs == "tracefs" for _, fs in _mounts()):
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
    from spiketrace.rundir import _kernel_hz

    hz = _kernel_hz()
    if hz:
        return Check("HZ", True, str(hz), required=False)
    return Check("HZ", None, "unknown (no /proc/config.gz or /boot/config-*); assuming 250",
                 required=False)


def check_cgroup2() -> Check:
    points = [mp for mp, fs in _mounts() if fs == "cgroup2"]
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


def kprobes_enabled(tracefs: Optional[str]) -> Optional[bool]:
    """The tracer's own test (the perf kprobe PMU) where it is importable."""
    try:
        from tracer.probes import kprobes_available

        return kprobes_available()
    except ImportError:
        pass
    if tracefs is None:
        return None
    return os.path.exists(os.path.join(tracefs, "kprobe_events"))


def check_kprobes() -> Check:
    on = kprobes_enabled(tracefs_dir())
    if on:
        return Check("kprobes", True, "enabled", required=False)
    if on is None:
        return Check("kprobes", None, "unknown (tracefs not readable)", required=False)
    return Check("kprobes", None, "disabled (CONFIG_KPROBES off): tracepoints only",
                 required=False)


# -- probes ------------------------------------------------------------------------------------
def _kernel_function_exists(name: str, tracefs: str) -> bool:
    for path in (os.path.join(tracefs, "available_filter_functions"), "/proc/kallsyms"):
        try:
            with open(path) as fh:
                for line in fh:
                    fields = line.split()
                    # available_filter_functions: "name [module]"; kallsyms: "addr type name"
                    if name in fields[:1] or name in fields[2:3]:
                        return True
        except OSError:
            continue
    return False


def _fallback_probe_checks() -> List[ProbeCheck]:
    tracefs = tracefs_dir()
    rows = [ProbeCheck("listen_overflow", "sampled", "TcpExt ListenOverflows + sock_diag queue")]
    for evidence, tps, kfunc, inferred, required in _FALLBACK_PROBES:
        if tracefs is None:
            rows.append(ProbeCheck(evidence, "unknown", "needs root to read tracefs", required))
            continue
        if tps and all(os.path.isdir(os.path.join(tracefs, "events", tp)) for tp in tps):
            rows.append(ProbeCheck(evidence, "tracepoint", ", ".join(t.replace("/", ":")
                                                                     for t in tps), required))
        elif kfunc and kprobes_enabled(tracefs) and _kernel_function_exists(kfunc, tracefs):
            rows.append(ProbeCheck(evidence, "kprobe", kfunc, required))
        elif inferred:
            rows.append(ProbeCheck(evidence, "inferred", f"from {inferred}", required))
        else:
            missing = ", ".join(t.replace("/", ":") for t in tps) or f"kprobe {kfunc}"
            rows.append(ProbeCheck(evidence, "unavailable", f"no {missing}", required,
                                   fix="a newer kernel (tracepoints), or CONFIG_KPROBES=y"))
    return rows


REQUIRED_EVIDENCE = ("retransmit", "state_change")  # without these nothing can be explained


def _tracer_probe_checks() -> Optional[List[ProbeCheck]]:
    """Rows from the tracer's own probe selection (`tracer.probes.plan`), so doctor and the
    tracer can never disagree. None if the tracer cannot plan here (no tracefs access)."""
    try:
        from tracer import probes as tracer_probes

        plan = tracer_probes.plan()
    except Exception:
        return None
    why = {}
    for note in plan.notes:  # "accept_wait: tracepoint (kretprobe: kernel without kprobes)"
        name, _, rest = note.partition(": ")
        why[name] = rest[rest.find("(") + 1:rest.rfind(")")] if "(" in rest else rest
    rows = [ProbeCheck("listen_overflow", "sampled", "TcpExt ListenOverflows + sock_diag queue")]
    for name, backend in plan.backends.items():
        cand = plan.chosen.get(name)
        targets = ", ".join(dict.fromkeys(t for t, _fn, _f in cand.attach)) if cand else ""
        if backend == "inferred" and cand is not None and cand.needs:
            targets = f"from {cand.needs}"
        fix = ""
        if backend == "unavailable":
            fix = "a kernel with the tracepoint, or CONFIG_KPROBES=y"
        rows.append(ProbeCheck(name, backend, targets, name in REQUIRED_EVIDENCE, fix,
                               why=why.get(name, "")))
    return rows


def collect() -> Report:
    system = [check_kernel(), check_root(), check_bcc(), check_headers(), check_tracefs(),
              check_btf(), check_hz(), check_cgroup2(), check_ringbuf(), check_kprobes()]
    probes = _tracer_probe_checks()
    if probes is None:
        probes = _fallback_probe_checks()
    return Report(system=system, probes=probes)


# -- rendering ---------------------------------------------------------------------------------
_MARK = {True: "[green]ok[/]", None: "[yellow]~[/]", False: "[red]NO[/]"}


def render(report: Report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    def table(title: str, columns: List[str], rows: List[List[str]]) -> Table:
        with_fix = any(row[-1] for row in rows)  # no empty "fix" column when all is well
        t = Table(title=title, title_justify="left")
        for col in columns if with_fix else columns[:-1]:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*(row if with_fix else row[:-1]))
        return t

    def label(name: str, required: bool, ok: Optional[bool]) -> str:
        # "(optional)" only where it explains why a gap does not make the machine unready
        return name if required or ok is True else f"{name} [dim](optional)[/]"

    console.print(table("System", ["", "check", "state", "fix"], [
        [_MARK[c.ok], label(c.name, c.required, c.ok), escape(c.value), escape(c.fix)]
        for c in report.system]))
    console.print(table("Probes (evidence -> how it is captured here)",
                        ["", "evidence", "backend", "detail", "fix"], [
        [_MARK[p.ok], label(p.evidence, p.required, p.ok), p.backend,
         escape(p.detail) + (f"\n[dim]not {escape(p.why)}[/]" if p.why else ""), escape(p.fix)]
        for p in report.probes]))
    if report.problems:
        console.print(f"[red]Not ready:[/] {', '.join(report.problems)}. "
                      "Run the fix commands above, then `spiketrace doctor` again.")
    else:
        console.print("[green]Ready:[/] everything `spiketrace run` and `spiketrace trace` need "
                      "works here.")


@click.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def command(ctx, as_json):
    """Check what this machine can trace: kernel, root, BCC, kernel headers, tracefs, BTF, HZ,
    cgroup v2, the BPF ring buffer, and for every probe of the tracer whether it attaches here
    and how (tracepoint, kprobe, inferred, unavailable). Each missing piece comes with the
    command that fixes it. Exits 0 when everything needed works, 1 otherwise.

    \b
    Examples:
      sudo spiketrace doctor          # the full picture
      spiketrace doctor               # without root: what it can see, and that root is missing
      spiketrace doctor --json | jq .problems
    """
    report = collect()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console

        render(report, Console())
    ctx.exit(1 if report.problems else 0)
