"""The Python mirror (tracer/events.py) has the layout of the C header (tracer/bpf/spiketrace.h).

gcc compiles a tiny program that includes the header and prints sizeof/offsetof of every field
and the value of every constant the Python side relies on; no root or BPF needed.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from tracer import events

HEADER = Path(events.__file__).parent / "bpf" / "spiketrace.h"
CONSTANTS = ["KIND_MAX", "CTR_CONN_COUNTED", "CTR_CONN_SENT", "CTR_CONN_LOST", "CTR_TIME_WAIT",
             "CTR_SENT_BASE", "CTR_LOST_BASE", "CTR_MAX", "HIST_N", "HIST_BUCKETS",
             "ROLE_CLIENT", "ROLE_SERVER"]
KIND_DEFINES = {1: "KIND_RETRANSMIT", 2: "KIND_SYNACK_RETRANSMIT", 3: "KIND_STATE_CHANGE",
                4: "KIND_RESET_SENT", 5: "KIND_RESET_RECEIVED", 6: "KIND_DROP",
                7: "KIND_CONNECT_ERROR", 8: "KIND_ACCEPT_WAIT", 9: "KIND_RUNQ_DELAY",
                10: "KIND_TIME_WAIT"}


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (scripts/install.sh installs it)")
    lines = ['#include <stdio.h>', '#include <stddef.h>', f'#include "{HEADER}"', "int main(void) {"]
    for cname, cls in (("st_event", events.Event), ("st_conn", events.Conn)):
        lines.append(f'printf("{cname}.__size__ %zu\\n", sizeof(struct {cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname}.{field} %zu %zu\\n", offsetof(struct {cname}, {field}), '
                         f'sizeof(((struct {cname} *)0)->{field}));')
    for name in CONSTANTS + list(KIND_DEFINES.values()):
        lines.append(f'printf("{name} %d\\n", (int)({name}));')
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("layout")
    src, exe = d / "layout.c", d / "layout"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-Wall", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


@pytest.mark.parametrize("cname,cls", [("st_event", events.Event), ("st_conn", events.Conn)])
def test_struct_matches_header(c_layout, cname, cls):
    assert int(c_layout[f"{cname}.__size__"]) == ctypes.sizeof(cls)
    for field, _ in cls._fields_:
        off, size = map(int, c_layout[f"{cname}.{field}"].split())
        desc = getattr(cls, field)
        assert (desc.offset, desc.size) == (off, size), f"{cname}.{field}"


def test_numpy_dtypes_match_ctypes():
    for cls, dtype in ((events.Event, events.EVENT_DTYPE), (events.Conn, events.CONN_DTYPE)):
        assert dtype.itemsize == ctypes.sizeof(cls)
        for field, _ in cls._fields_:
            assert dtype.fields[field][1] == getattr(cls, field).offset


def test_constants_match_header(c_layout):
    assert int(c_layout["KIND_MAX"]) == events.KIND_MAX
    for value, define in KIND_DEFINES.items():
        assert int(c_layout[define]) == value and value in events.KIND_NAMES
    assert int(c_layout["CTR_MAX"]) == events.CTR_MAX
    assert int(c_layout["CTR_SENT_BASE"]) == events.CTR_SENT_BASE
    assert int(c_layout["CTR_LOST_BASE"]) == events.CTR_LOST_BASE
    assert int(c_layout["CTR_CONN_COUNTED"]) == events.CTR_CONN_COUNTED
    assert int(c_layout["CTR_CONN_SENT"]) == events.CTR_CONN_SENT
    assert int(c_layout["CTR_CONN_LOST"]) == events.CTR_CONN_LOST
    assert int(c_layout["HIST_N"]) == len(events.HIST_NAMES)
    assert int(c_layout["HIST_BUCKETS"]) == events.HIST_BUCKETS
    assert events.ROLE_NAMES == {int(c_layout["ROLE_CLIENT"]): "client",
                                 int(c_layout["ROLE_SERVER"]): "server"}


def test_decode_roundtrip():
    ev = events.Event(t_ns=5, value=-3, value2=7, netns=42, pid=9, reason=111, sport=1,
                      dport=2, kind=7, family=2, state=2, comm=b"python")
    ev.saddr[:4] = [127, 0, 0, 1]
    cols = events.decode_events(bytes(ev) * 2)
    assert cols["kind"] == ["connect_error"] * 2
    assert cols["saddr"][0] == "127.0.0.1" and cols["daddr"][0] == "0.0.0.0"
    assert cols["comm"][0] == "python" and cols["value"][0] == -3 and cols["reason"][0] == 111
