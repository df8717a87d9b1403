"""Probe selection and BTF reading without root: a fake tracefs tree decides which candidates
exist, and the kernel's BTF (world-readable) gives offsets, enum names and tracepoint arities."""
from __future__ import annotations

import os
import struct

import pytest

from common.errors import SpikeTraceError
from tracer import btf, probes

needs_btf = pytest.mark.skipif(not os.access(btf.VMLINUX_BTF, os.R_OK),
                               reason="no readable /sys/kernel/btf/vmlinux")


def _fake_tracefs(root, events):
    """events: 'cat:name' -> list of (field, offset, size)."""
    for event, fields in events.items():
        cat, name = event.split(":")
        d = root / "events" / cat / name
        d.mkdir(parents=True)
        lines = [f"name: {name}", "format:",
                 "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;", ""]
        for fname, off, size in fields:
            lines.append(f"\tfield:int {fname};\toffset:{off};\tsize:{size};\tsigned:1;")
        d.joinpath("format").write_text("\n".join(lines) + "\n")
    return str(root)


def test_tracepoint_fields_parse_arrays_and_pointers(tmp_path):
    root = _fake_tracefs(tmp_path, {"tcp:x": [("saddr[4]", 34, 4), ("skaddr", 16, 8)]})
    assert probes.tracepoint_fields("tcp:x", root) == {"saddr": (34, 4), "skaddr": (16, 8)}
    assert probes.tracepoint_fields("tcp:missing", root) is None


def test_plan_falls_back_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "raw_tracepoints_available", lambda: False)
    monkeypatch.setattr(probes, "kprobes_available", lambda: False)
    tuple_fields = [(f, 30 + i * 2, 2) for i, f in enumerate(probes._TUPLE + ("family",))]
    root = _fake_tracefs(tmp_path, {
        # a state tracepoint without `protocol`: unusable, and no kprobes to fall back on
        "sock:inet_sock_set_state": [("skaddr", 8, 8), ("oldstate", 16, 4),
                                     ("newstate", 20, 4)] + tuple_fields,
        "tcp:tcp_retransmit_skb": [("skaddr", 16, 8), ("state", 24, 4)] + tuple_fields,
    })
    plan = probes.plan(root=root)
    assert plan.backends["retransmit"] == "tracepoint"
    assert plan.defines["USE_TP_RETRANSMIT"] == 1 and plan.defines["TPO_tcp_retransmit_skb_state"] == 24
    assert plan.backends["state_change"] == "unavailable"
    # evidence derived from state changes goes with them
    assert plan.backends["time_wait"] == "unavailable"
    assert plan.backends["accept_wait"] == "unavailable"
    note = next(n for n in plan.notes if n.startswith("state_change:"))
    assert "lacks field(s) protocol" in note and "without kprobes" in note


def test_forced_kprobe_is_compiled_where_it_cannot_attach(tmp_path, monkeypatch):
    monkeypatch.setattr(probes, "kprobes_available", lambda: False)
    root = _fake_tracefs(tmp_path, {})
    plan = probes.plan(root=root, force={"retransmit": "kprobe", "state_change": "kprobe",
                                         "accept_wait": "kretprobe"})
    assert plan.backends["retransmit"] == "kprobe"
    assert plan.defines["USE_KP_RETRANSMIT"] == 1 and plan.defines["USE_KP_ACCEPT_WAIT"] == 1


def test_missing_tracefs_points_to_doctor(monkeypatch):
    from tracer import host

    monkeypatch.setattr(host, "TRACEFS_CANDIDATES", ("/nonexistent/tracing",))
    with pytest.raises(SpikeTraceError, match="tracefs is not mounted.*spiketrace doctor"):
        probes.plan()


@needs_btf
def test_btf_offsets_and_names():
    kernel = btf.vmlinux()
    offsets = btf.tracer_offsets(kernel)
    for name in ("OFF_SKC_NET", "OFF_NET_INUM", "OFF_SKC_DPORT", "OFF_TASK_FILES"):
        assert name in offsets
    # sock_common's 4-tuple precedes skc_net in every kernel since 2.6: a sanity check
    assert offsets["OFF_SKC_DADDR"] < offsets["OFF_SKC_NET"]
    assert kernel.offset("sock_common.skc_daddr") == offsets["OFF_SKC_DADDR"]
    with pytest.raises(SpikeTraceError, match="not found"):
        kernel.offset("sock_common.no_such_member")
    drops = btf.drop_reason_names(kernel)
    if drops:  # 5.17+
        assert "NO_SOCKET" in drops.values()
    assert kernel.trace_nargs("no_such_tracepoint") is None
    nargs = kernel.trace_nargs("inet_sock_set_state")
    assert nargs is None or nargs == 3


def test_btf_parser_on_a_tiny_blob():
    """A hand-built BTF blob: struct s { int a; union { int b; char c; }; } and enum e."""
    strings = b"\0int\0s\0a\0b\0c\0e\0E0\0E1\0"
    off = {name: strings.index(name.encode() + b"\0") for name in
           ("int", "s", "a", "b", "c", "e", "E0", "E1")}
    types = b""
    types += struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)       # 1 int
    types += struct.pack("<III", 0, (5 << 24) | 2, 4)                                 # 2 union
    types += struct.pack("<III", off["b"], 1, 0) + struct.pack("<III", off["c"], 1, 0)
    types += struct.pack("<III", off["s"], (4 << 24) | 2, 8)                          # 3 struct s
    types += struct.pack("<III", off["a"], 1, 0) + struct.pack("<III", 0, 2, 32)
    types += struct.pack("<III", off["e"], (6 << 24) | 2, 4)                          # 4 enum e
    types += struct.pack("<Ii", off["E0"], 0) + struct.pack("<Ii", off["E1"], 7)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    kernel = btf.Btf(header + types + strings)
    assert kernel.offset("s.a") == 0
    assert kernel.offset("s.c") == 4  # found through the anonymous union
    assert kernel.enum("e") == {0: "E0", 7: "E1"}
    with pytest.raises(SpikeTraceError):
        btf.Btf(b"\0" * 32)


def test_netns_inum_of_self():
    assert btf.netns_inum_of(os.getpid()) == os.stat(f"/proc/{os.getpid()}/ns/net").st_ino
    with pytest.raises(SpikeTraceError):
        btf.netns_inum_of("sttest-no-such-netns")


def test_raw_tracepoint_support_is_asked_of_bcc_once_a_process():
    """BCC's answer costs a kernel-symbol scan (~0.35 s); plans reuse it."""
    probes.raw_tracepoints_available.cache_clear()
    first = probes.raw_tracepoints_available()
    for _ in range(3):
        assert probes.raw_tracepoints_available() == first
    info = probes.raw_tracepoints_available.cache_info()
    assert (info.misses, info.hits) == (1, 3)
