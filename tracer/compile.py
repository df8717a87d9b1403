"""The BPF program as compiled: the sources (tracer/bpf/*.c and their shared headers), the
-D flags that configure them (`render_source`, what `trace --print-bpf` prints), and loading
with the compiler's or verifier's text turned into one SpikeTraceError naming the probe."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from common.errors import SpikeTraceError
from common.meta import TracerParams
from tracer import btf, probes

BPF_DIR = Path(__file__).parent / "bpf"
SOURCES = ("tcp.c", "rawtp.c", "syscalls.c", "sched.c")
KPROBE_SOURCE = "kprobes.c"


def kernel_at_least(major: int, minor: int) -> bool:
    """Whether the running kernel's release is major.minor or later (true if it cannot be read)."""
    release = os.uname().release.split("-")[0].split(".")
    try:
        return (int(release[0]), int(release[1])) >= (major, minor)
    except (IndexError, ValueError):
        return True


def output_backend() -> str:
    """`ringbuf` (Linux 5.8+) unless SPIKETRACE_OUTPUT=perf or the kernel lacks it."""
    forced = os.environ.get("SPIKETRACE_OUTPUT", "")
    if forced in ("ringbuf", "perf"):
        return forced
    return "ringbuf" if kernel_at_least(5, 8) else "perf"


def bpf_atomics() -> bool:
    """BPF compare-and-swap and fetch-or (Linux 5.12+); SPIKETRACE_NO_ATOMICS=1 forces without."""
    return os.environ.get("SPIKETRACE_NO_ATOMICS") != "1" and kernel_at_least(5, 12)


def task_btf() -> bool:
    """bpf_get_current_task_btf(), whose pointer BPF reads with plain loads (Linux 5.11+, with
    kernel BTF); SPIKETRACE_NO_TASK_BTF=1 forces the probe reads."""
    return (os.environ.get("SPIKETRACE_NO_TASK_BTF") != "1" and os.path.exists("/sys/kernel/btf/vmlinux")
            and kernel_at_least(5, 11))


def pages(n: int) -> int:
    """Ring buffer pages: a power of two, at least 1."""
    p = 1
    while p < max(1, int(n)):
        p *= 2
    return p


def render_source(config: TracerParams, *, force: Optional[Dict[str, str]] = None,
                  output: Optional[str] = None,
                  plan: Optional[probes.Plan] = None) -> Tuple[str, List[str]]:
    """The BPF program text and the clang flags that configure it (`trace --print-bpf`).

    `force` picks a backend per evidence (e.g. {"state_change": "kprobe"}); kprobe variants are
    compiled in even where they cannot attach, so the verifier can check them.
    """
    plan = plan or probes.plan(disabled=config.skip, force=force,
                                function_only=config.function_only)
    kernel = btf.vmlinux()
    defines: Dict[str, int] = dict(btf.tracer_offsets(kernel))
    skc = [v for k, v in defines.items() if k.startswith("OFF_SKC_")]
    defines["SKC_SPAN"] = (max(skc) + 16 + 7) // 8 * 8  # sock_common read in one go
    if not bpf_atomics():
        defines["ST_NO_ATOMICS"] = 1
    if task_btf():
        defines["ST_TASK_BTF"] = 1
    defines.update(plan.defines)
    defines["NETNS_INUM"] = int(config.netns_inum)
    if config.ports:
        defines["HAVE_PORTS"] = 1
    if config.pids:
        defines["FILTER_PIDS"] = 1
    if config.cgroup:
        defines["FILTER_CGROUP"] = 1
    if config.all_events:
        defines["ALL_EVENTS"] = 1
    defines["SLOW_CONN_NS"] = int(config.slow_conn_ms * 1e6)
    defines["RUNQ_THRESHOLD_NS"] = int(config.runq_threshold_ms * 1e6)
    defines["ACCEPT_THRESHOLD_NS"] = int(config.accept_wait_threshold_ms * 1e6)
    reasons = {n: v for v, n in kernel.enum("skb_drop_reason").items()}
    defines["SKB_CONSUMED_REASON"] = reasons.get("SKB_CONSUMED", 1)
    defines["DROP_REASON_QUEUE_PURGE"] = reasons.get("SKB_DROP_REASON_QUEUE_PURGE", -1)
    defines["DROP_REASON_NO_SOCKET"] = reasons.get("SKB_DROP_REASON_NO_SOCKET", -1)
    if (output or output_backend()) == "ringbuf":
        defines["USE_RINGBUF"] = 1
        defines["RINGBUF_PAGES"] = pages(config.ringbuf_pages)
    files = list(SOURCES)
    if any(c.backend in probes.FUNCTION_BACKENDS for c in plan.chosen.values()):
        files.append(KPROBE_SOURCE)
    seen: set = set()
    text = "".join(_expand(name, seen) for name in files)
    cflags = [f"-D{k}={v}" for k, v in sorted(defines.items())]
    return text, cflags


_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.M)


def _expand(name: str, seen: set) -> str:
    """The file with its local `#include "x.h"` inlined once each. BCC rewrites map calls
    (`table.lookup()`) only in the main file, so the shared header must be part of it."""
    if name in seen:
        return ""
    seen.add(name)
    body = _LOCAL_INCLUDE.sub(lambda m: _expand(m.group(1), seen), (BPF_DIR / name).read_text())
    return f'#line 1 "{name}"\n{body}\n'


@contextlib.contextmanager
def captured_stderr() -> Iterator[List[str]]:
    """Collect what libbcc/clang print on fd 2 (compiler errors, verifier logs)."""
    box: List[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box.append(tmp.read().decode("utf-8", "replace"))


def _tail(text: str, lines: int = 40) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def compile_bpf(text: str, cflags: Sequence[str]):
    """bcc.BPF(text, cflags) with compiler errors turned into a SpikeTraceError."""
    from bcc import BPF

    with captured_stderr() as err:
        try:
            return BPF(text=text.encode(), cflags=list(cflags))
        except Exception as exc:
            failure = exc
    raise SpikeTraceError(f"BPF compile failed ({failure}):\n{_tail(err[0])}")


def load_probe(bpf, fn: str, prog_type: int, what: str):
    """Load one BPF function (verifier pass) or raise naming the probe with the verifier text."""
    with captured_stderr() as err:
        try:
            return bpf.load_func(fn.encode(), prog_type)
        except Exception as exc:
            failure = exc
    raise SpikeTraceError(f"BPF verifier rejected probe {fn} ({what}): {failure}\n{_tail(err[0])}")


