"""Which probe gives each piece of evidence on this kernel, and how to read it.

For each evidence (docs/kernel-facts.md, "Kernel mechanisms") the candidates are tried in order of
preference: a stable tracepoint whose record has the fields the program reads, else a function
probe — fentry/fexit where this kernel and BCC take one (tried, `fentry_available`), else a
kprobe where the kernel has kprobes and the function exists — else an inference, a sampled
counter or nothing. The
choice is reported per evidence (`Plan.backends`, stored as `probes` in meta.json) with the
reason for every fallback (`Plan.notes`).

Tracepoint records are read at offsets parsed from tracefs `format` files at run time and
passed to BPF as `-DTPO_<event>_<field>=<offset>`, so one source works across kernels whose
records differ (6.18 added `err` to tcp_retransmit_skb and changed tcp_send_reset).

Over 400 lines on purpose: the probe table (`EVIDENCE`, the one table doctor and the tracer read)
and the planner that walks it are one contract; the table alone is ~170 lines.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import platform
import re
from typing import Dict, List, Optional, Sequence, Tuple

from common.errors import SpikeTraceError
from tracer.host import kprobes_available, tracefs

# The 4-tuple fields of a tcp/sock record (tcp.c TP_TUPLE). `family` is not among them: the tcp
# records of 5.10 have none (include/trace/events/tcp.h, v5.10; 6.1 has it) and tcp.c then
# derives it from saddr_v6 (TP_TUPLE_NO_FAMILY); sock:inet_sock_set_state has had it since 4.16
# and its program reads it, so that candidate requires it.
_TUPLE = ("sport", "dport", "saddr", "daddr", "saddr_v6", "daddr_v6")


@dataclasses.dataclass(frozen=True)
class Candidate:
    backend: str  # raw_tracepoint | tracepoint | fentry | fexit | kprobe | kretprobe | inferred | sampled
    # tracepoint: ("category:event", fn, required fields, "name:size" where the program reads
    # it with that width); raw_tracepoint: ("event", fn, ());
    # kprobe, fentry: (kernel function, fn, ()); fentry's fn is the name BCC's KFUNC_PROBE /
    # KRETFUNC_PROBE gives it (kfunc__<function> / kretfunc__<function>)
    attach: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = ()
    define: str = ""  # -D<define> compiles this variant in
    needs: str = ""   # another evidence that must be available (inferred / derived)
    min_args: int = 0  # raw_tracepoint: TP_PROTO arguments the program reads
    offsets: Tuple[str, ...] = ()  # BTF offsets (tracer.btf.TRACER_OFFSETS) it reads


def _raw(event: str, define: str, min_args: int, *offsets: str) -> Candidate:
    return Candidate("raw_tracepoint", ((event, f"raw_{event}", ()),), define,
                     min_args=min_args, offsets=offsets)


@dataclasses.dataclass(frozen=True)
class Evidence:
    name: str
    candidates: Tuple[Candidate, ...]


def _tp(event: str, fn: str, fields: Sequence[str]) -> Tuple[str, str, Tuple[str, ...]]:
    return (event, fn, tuple(fields))


def _fentry(define: str, *funcs: str, needs: str = "", exit: bool = False,
            offsets: Tuple[str, ...] = ()) -> Candidate:
    prefix = "kretfunc__" if exit else "kfunc__"
    return Candidate("fexit" if exit else "fentry", tuple((f, prefix + f, ()) for f in funcs),
                     define, needs=needs, offsets=offsets)


FUNCTION_BACKENDS = ("fentry", "fexit", "kprobe", "kretprobe")  # compiled from kprobes.c


# task_struct.sched_info (CONFIG_SCHED_INFO) and the run slice's CPU time
_SCHED_OFFSETS = ("OFF_TASK_SCHED_PCOUNT", "OFF_TASK_RUN_DELAY", "OFF_TASK_SUM_EXEC",
                  "OFF_TASK_PREV_SUM_EXEC")

# the listener's accept queue and the packet's headers (kprobes.c listen_full)
_LISTEN_OFFSETS = ("OFF_SK_ACK_BACKLOG", "OFF_SK_MAX_ACK_BACKLOG", "OFF_SKB_HEAD",
                   "OFF_SKB_NETWORK_HEADER", "OFF_SKB_PROTOCOL")

EVIDENCE: Tuple[Evidence, ...] = (
    Evidence("state_change", (
        _raw("inet_sock_set_state", "USE_RAW_STATE_CHANGE", 3, "OFF_SK_PROTOCOL"),
        # tcp.c reads `protocol` as a u16: it was a __u8 until 5.6 (4.18's and 5.4's record
        # put saddr right after it), so there the record cannot be read as it is
        Candidate("tracepoint", (_tp("sock:inet_sock_set_state", "tp_inet_sock_set_state",
                                     ("skaddr", "oldstate", "newstate", "protocol:2",
                                      "family") + _TUPLE),),
                  "USE_TP_STATE_CHANGE"),
        Candidate("kprobe", (("tcp_set_state", "kp_tcp_set_state", ()),), "USE_KP_STATE_CHANGE"),
    )),
    Evidence("retransmit", (
        _raw("tcp_retransmit_skb", "USE_RAW_RETRANSMIT", 2),
        Candidate("tracepoint", (_tp("tcp:tcp_retransmit_skb", "tp_tcp_retransmit_skb",
                                     ("skaddr", "state") + _TUPLE),), "USE_TP_RETRANSMIT"),
        Candidate("kprobe", (("tcp_retransmit_skb", "kp_tcp_retransmit_skb", ()),),
                  "USE_KP_RETRANSMIT"),
    )),
    Evidence("synack_retransmit", (
        _raw("tcp_retransmit_synack", "USE_RAW_SYNACK_RETRANSMIT", 2),
        Candidate("tracepoint", (_tp("tcp:tcp_retransmit_synack", "tp_tcp_retransmit_synack",
                                     ("skaddr",) + _TUPLE),), "USE_TP_SYNACK_RETRANSMIT"),
        Candidate("kprobe", (("tcp_rtx_synack", "kp_tcp_rtx_synack", ()),),
                  "USE_KP_SYNACK_RETRANSMIT"),
    )),
    Evidence("time_wait", (
        _fentry("USE_FE_TIME_WAIT", "tcp_time_wait", needs="state_change"),
        Candidate("kprobe", (("tcp_time_wait", "kp_tcp_time_wait", ()),), "USE_KP_TIME_WAIT",
                  needs="state_change"),
        Candidate("inferred", (), "", needs="state_change"),
    )),
    # a connection's conversation: first read/write, the longest hold (6.3+; rawtp.c)
    Evidence("conn_life", (
        Candidate("raw_tracepoint", (("sock_recv_length", "raw_conn_recv", ()),
                                     ("sock_send_length", "raw_conn_send", ())),
                  "USE_RAW_CONN_LIFE", needs="state_change", min_args=2),
    )),
    Evidence("accept_wait", (
        _fentry("USE_FE_ACCEPT_WAIT", "inet_csk_accept", needs="state_change", exit=True),
        Candidate("kretprobe", (("inet_csk_accept", "kretp_inet_csk_accept", ()),),
                  "USE_KP_ACCEPT_WAIT", needs="state_change"),
        # the server's first read (6.3+): no syscall tracepoint (rawtp.c)
        Candidate("raw_tracepoint", (("sock_recv_length", "raw_sock_recv_length", ()),),
                  "USE_RAW_ACCEPT_WAIT", needs="state_change", min_args=1),
        Candidate("tracepoint", (_tp("syscalls:sys_exit_accept4", "tp_sys_exit_accept", ("ret",)),
                                 _tp("syscalls:sys_exit_accept", "tp_sys_exit_accept", ("ret",))),
                  "USE_TP_ACCEPT_WAIT", needs="state_change"),
    )),
    Evidence("reset_sent", (
        _raw("tcp_send_reset", "USE_RAW_RESET_SENT", 2, "OFF_SKB_PROTOCOL"),
        Candidate("tracepoint", (_tp("tcp:tcp_send_reset", "tp_tcp_send_reset",
                                     ("skbaddr", "skaddr", "saddr", "daddr")),),
                  "USE_TP_RESET_SENT", offsets=("OFF_SKB_PROTOCOL",)),
    )),
    Evidence("reset_received", (
        _raw("tcp_receive_reset", "USE_RAW_RESET_RECEIVED", 1),
        Candidate("tracepoint", (_tp("tcp:tcp_receive_reset", "tp_tcp_receive_reset",
                                     ("skaddr",) + _TUPLE),), "USE_TP_RESET_RECEIVED"),
    )),
    Evidence("drop", (
        _raw("kfree_skb", "USE_RAW_DROP", 3, "OFF_SKB_PROTOCOL"),
        Candidate("tracepoint", (_tp("skb:kfree_skb", "tp_kfree_skb",
                                     ("skbaddr", "location", "protocol")),),
                  "USE_TP_DROP", offsets=("OFF_SKB_PROTOCOL",)),
    )),
    # a SYN or final ACK meeting a full accept queue, with the listener and the client (kprobes.c);
    # without a function probe, the namespace's ListenOverflows counter and the listeners' queue
    # depth sampled by tracer/counters.py (`sampled`)
    Evidence("listen_overflow", (
        _fentry("USE_FE_LISTEN_OVERFLOW", "tcp_conn_request", "tcp_v4_syn_recv_sock",
                offsets=_LISTEN_OFFSETS),
        Candidate("kprobe", (("tcp_conn_request", "kp_tcp_conn_request", ()),
                             ("tcp_v4_syn_recv_sock", "kp_tcp_v4_syn_recv_sock", ())),
                  "USE_KP_LISTEN_OVERFLOW", offsets=_LISTEN_OFFSETS),
        Candidate("sampled"),
    )),
    # a client socket's SYN_SENT -> CLOSE and its sk_err (handlers.h)
    Evidence("connect_error", (
        Candidate("inferred", (), "", needs="state_change", offsets=("OFF_SK_ERR",)),
    )),
    # the kernel's per-task accounting (sched_info), sampled at each switch-out (sched.c)
    Evidence("runq_delay", (
        Candidate("raw_tracepoint", (("sched_wakeup_new", "raw_sched_wakeup_new", ()),
                                     ("sched_switch", "raw_sched_switch", ())),
                  "USE_RAW_RUNQ_DELAY", min_args=1, offsets=_SCHED_OFFSETS + ("OFF_TASK_PID",)),
        Candidate("tracepoint", (_tp("sched:sched_wakeup_new", "tp_sched_wakeup_new", ("pid",)),
                                 _tp("sched:sched_switch", "tp_sched_switch", ())),
                  "USE_TP_RUNQ_DELAY", offsets=_SCHED_OFFSETS),
    )),
)

_RAW_MIN_ARGS: Dict[str, int] = {}  # per raw tracepoint, where it differs from min_args

EVIDENCE_NAMES = tuple(e.name for e in EVIDENCE)


@dataclasses.dataclass
class Plan:
    """The probes chosen for this kernel."""

    backends: Dict[str, str]  # evidence -> raw_tracepoint | tracepoint | kprobe | kretprobe |
    #                             inferred | unavailable | skipped (TracerConfig.skip,
    #                             .function_only)
    chosen: Dict[str, Candidate]
    defines: Dict[str, int]  # -D flags: USE_* = 1 and TPO_<event>_<field> = offset
    notes: List[str]

    def attachments(self) -> List[Tuple[str, str, str, str]]:
        """(evidence, backend, target, BPF function) for every attach, in order. A raw
        tracepoint takes one program (BCC): where two evidences use one (conn_life and
        accept_wait on sock_recv_length), the first's program does both (rawtp.c)."""
        out, seen = [], set()
        for name, cand in self.chosen.items():
            for target, fn, _ in cand.attach:
                if cand.backend == "raw_tracepoint":
                    if target in seen:
                        continue
                    seen.add(target)
                out.append((name, cand.backend, target, fn))
        return out


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]*);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);")


def tracepoint_fields(event: str, root: Optional[str] = None) -> Optional[Dict[str, Tuple[int, int]]]:
    """Field name -> (offset, size) of tracepoint `category:event`, None if it does not exist."""
    category, name = event.split(":")
    path = os.path.join(root or tracefs(), "events", category, name, "format")
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return None
    fields = {}
    for m in _FIELD_RE.finditer(text):
        decl = re.sub(r"\[.*\]", "", m.group("decl")).strip()
        fname = decl.split()[-1].lstrip("*")
        if not fname.startswith("common_"):
            fields[fname] = (int(m.group("off")), int(m.group("size")))
    return fields


def kernel_function_exists(name: str) -> bool:
    try:
        with open("/proc/kallsyms") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == name:
                    return True
    except OSError:
        pass
    return False


def _tp_defines(event: str, fields: Dict[str, Tuple[int, int]]) -> Dict[str, int]:
    ev = event.split(":")[1]
    return {f"TPO_{ev}_{f}": off for f, (off, _size) in fields.items()
            if re.fullmatch(r"\w+", f)}


@functools.lru_cache(maxsize=None)
def raw_tracepoints_available() -> bool:
    """Raw tracepoint programs (Linux 4.17+) as far as BCC can tell. Asked once a process:
    BCC looks two kernel symbols up by a scan of its symbol table, ~0.35 s each time, and a
    plan asks for every raw candidate (9 times, ~3 s a plan, measured on 6.18)."""
    try:
        from bcc import BPF

        return bool(BPF.support_raw_tracepoint())
    except Exception:
        return False


# BPF_PROG_LOAD / BPF_RAW_TRACEPOINT_OPEN (include/uapi/linux/bpf.h), for the fentry probe below
_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN = 5, 17
_BPF_PROG_TYPE_TRACING, _BPF_TRACE_FENTRY, _BPF_TRACE_FEXIT = 26, 24, 25
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_FENTRY_PROBE_TARGET = "tcp_time_wait"  # any traceable kernel function BTF knows


@functools.lru_cache(maxsize=None)
def fentry_available() -> Tuple[bool, str]:
    """Whether fentry/fexit programs work here, and why not: BCC must have KFUNC_PROBE
    (`attach_kfunc`, 0.14+) and see BPF trampolines (`support_kfunc`, a symbol look-up), and
    the kernel must load and attach a tracing program. The last is tried, with a two-instruction
    fentry program on tcp_time_wait attached and at once closed, since the symbol says nothing
    of it: 6.18 here has the symbol and refuses the load (EPERM). Asked once a process."""
    try:
        from bcc import BPF
    except Exception as exc:
        return False, f"no BCC ({exc})"
    if not hasattr(BPF, "attach_kfunc") or not hasattr(BPF, "support_kfunc"):
        return False, "this BCC has no KFUNC_PROBE (fentry needs BCC 0.14+)"
    try:
        if not BPF.support_kfunc():
            return False, "no BPF trampolines (Linux < 5.5, not x86-64, or no kernel BTF)"
    except Exception as exc:
        return False, f"BCC cannot tell whether fentry works ({exc})"
    return function_attachable(_FENTRY_PROBE_TARGET)


@functools.lru_cache(maxsize=None)
def function_attachable(func: str, exit: bool = False) -> Tuple[bool, str]:
    """Whether an fentry (fexit) program attaches to kernel function `func`, tried as
    `fentry_available` does: a function can be out of reach of trampolines where others are
    not (6.1 refuses some with ENOTSUPP, error 524: more than 6 arguments, or not traceable)."""
    from tracer import btf

    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return False, f"fentry not tried on {platform.machine()}"
    try:
        target = btf.vmlinux().func_id(func)
    except SpikeTraceError as exc:
        return False, str(exc)
    if target is None:
        return False, f"no kernel function {func} in BTF"
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license ... expected_attach_type
    # (offset 68), attach_btf_id (offset 108)
    ctypes.memmove(ctypes.byref(attr, 0), ctypes.byref(ctypes.c_uint32(_BPF_PROG_TYPE_TRACING)), 4)
    ctypes.memmove(ctypes.byref(attr, 4), ctypes.byref(ctypes.c_uint32(2)), 4)
    ctypes.memmove(ctypes.byref(attr, 8), ctypes.byref(ctypes.c_uint64(ctypes.addressof(insns))), 8)
    ctypes.memmove(ctypes.byref(attr, 16), ctypes.byref(ctypes.c_uint64(ctypes.addressof(license))), 8)
    attach_type = _BPF_TRACE_FEXIT if exit else _BPF_TRACE_FENTRY
    ctypes.memmove(ctypes.byref(attr, 68), ctypes.byref(ctypes.c_uint32(attach_type)), 4)
    ctypes.memmove(ctypes.byref(attr, 108), ctypes.byref(ctypes.c_uint32(target)), 4)
    prog = libc.syscall(nr, _BPF_PROG_LOAD, attr, ctypes.sizeof(attr))
    if prog < 0:
        err = ctypes.get_errno()
        return False, f"the kernel refuses fentry programs on {func} ({os.strerror(err)})"
    try:
        link_attr = ctypes.create_string_buffer(16)  # raw_tracepoint: name = 0, prog_fd
        ctypes.memmove(ctypes.byref(link_attr, 8), ctypes.byref(ctypes.c_uint32(prog)), 4)
        link = libc.syscall(nr, _BPF_RAW_TRACEPOINT_OPEN, link_attr, ctypes.sizeof(link_attr))
        if link < 0:
            err = ctypes.get_errno()
            return False, (f"the kernel refuses to attach fentry programs to {func} "
                           f"({os.strerror(err) if err != 524 else 'ENOTSUPP'})")
        os.close(link)
    finally:
        os.close(prog)
    return True, ""


def _try(cand: Candidate, root: str, have_kprobes: bool) -> Tuple[Optional[Dict[str, int]], str]:
    """The defines this candidate needs, or None and why it cannot be used."""
    from tracer import btf

    defines: Dict[str, int] = {}
    try:
        kernel = btf.vmlinux() if cand.offsets or cand.backend == "raw_tracepoint" else None
        have = btf.tracer_offsets(kernel) if kernel is not None else {}
    except SpikeTraceError as exc:
        return None, str(exc)
    missing = [o for o in cand.offsets if o not in have]
    if missing:
        return None, f"BTF lacks {', '.join(btf.TRACER_OFFSETS[o] for o in missing)}"
    if cand.backend == "raw_tracepoint":
        if not raw_tracepoints_available():
            return None, "no raw tracepoints (Linux < 4.17 or BCC without them)"
        for event, _fn, _ in cand.attach:
            nargs = kernel.trace_nargs(event)
            if nargs is None:
                return None, f"no raw tracepoint {event} in BTF"
            if nargs < _RAW_MIN_ARGS.get(event, cand.min_args):
                return None, f"raw tracepoint {event} has {nargs} argument(s), needs {cand.min_args}"
            defines[f"RAW_{event}_NARGS"] = nargs
    elif cand.backend == "tracepoint":
        for event, _fn, required in cand.attach:
            fields = tracepoint_fields(event, root)
            if fields is None:
                return None, f"no tracepoint {event}"
            names = [f.split(":")[0] for f in required]
            missing = [f for f in names if f not in fields]
            if missing:
                return None, f"tracepoint {event} lacks field(s) {', '.join(missing)}"
            # "field:size": the program reads it with that width
            for name, size in (f.split(":") for f in required if ":" in f):
                if fields[name][1] != int(size):
                    return None, (f"tracepoint {event} field {name} is {fields[name][1]} byte(s), "
                                  f"the program reads {size}")
            defines.update(_tp_defines(event, fields))
    elif cand.backend in ("kprobe", "kretprobe"):
        if not have_kprobes:
            return None, "kernel without kprobes"
        for func, _fn, _ in cand.attach:
            if not kernel_function_exists(func):
                return None, f"no kernel function {func}"
    elif cand.backend in ("fentry", "fexit"):
        ok, why = fentry_available()
        if not ok:
            return None, why
        kernel = btf.vmlinux()
        for func, _fn, _ in cand.attach:
            nargs = kernel.func_nargs(func)
            if nargs is None:
                return None, f"no kernel function {func} in BTF"
            ok, why = function_attachable(func, cand.backend == "fexit")
            if not ok:
                return None, why
            defines[f"FE_{func}_NARGS"] = nargs
    if cand.define:
        defines[cand.define] = 1
    return defines, ""


# Backends that run once per call of one kernel function (accept's inet_csk_accept), as opposed
# to the fallbacks that run at every read, write or syscall of every task.
FUNCTION_BACKENDS = ("fentry", "fexit", "kprobe", "kretprobe")


def plan(disabled: Sequence[str] = (), root: Optional[str] = None,
         force: Optional[Dict[str, str]] = None, function_only: Sequence[str] = ()) -> Plan:
    """Choose a backend per evidence. `force` maps evidence -> backend (tests, --print-bpf).
    `function_only`: evidence probed only by a function probe (FUNCTION_BACKENDS), skipped where
    only a per-read or per-syscall fallback exists (TracerConfig.function_only)."""
    root = root or tracefs()
    have_kprobes = kprobes_available()
    backends: Dict[str, str] = {}
    chosen: Dict[str, Candidate] = {}
    defines: Dict[str, int] = {}
    notes: List[str] = []
    for ev in EVIDENCE:
        if ev.name in disabled:
            backends[ev.name] = "skipped"  # not probed by choice (TracerConfig.skip)
            notes.append(f"{ev.name}: skipped (not probed)")
            continue
        why = []
        for cand in ev.candidates:
            if force and ev.name in force and force[ev.name] != cand.backend:
                continue
            if ev.name in function_only and cand.backend not in FUNCTION_BACKENDS:
                continue
            if cand.needs and backends.get(cand.needs, "unavailable") in ("unavailable", "skipped"):
                why.append(f"{cand.backend}: needs {cand.needs}")
                continue
            got, reason = _try(cand, root, have_kprobes)
            if (got is None and force and ev.name in force
                    and cand.backend not in ("tracepoint", "fentry", "fexit")):
                # forced: compile it anyway (a kprobe program loads where it cannot attach; BCC
                # attaches an fentry one as it builds it, so that one cannot be forced)
                got = {cand.define: 1} if cand.define else {}
            if got is None:
                why.append(f"{cand.backend}: {reason}")
                continue
            backends[ev.name] = cand.backend
            chosen[ev.name] = cand
            defines.update(got)
            if why:
                notes.append(f"{ev.name}: {cand.backend} ({'; '.join(why)})")
            break
        else:
            if ev.name in function_only:
                backends[ev.name] = "skipped"
                notes.append(f"{ev.name}: skipped (no function probe here: "
                             f"{'; '.join(why) or 'none'}; its fallbacks run at every read or syscall)")
                continue
            backends[ev.name] = "unavailable"
            notes.append(f"{ev.name}: unavailable ({'; '.join(why) or 'disabled'})")
    return Plan(backends=backends, chosen=chosen, defines=defines, notes=notes)
