"""The contract between the kernel side and the rest: the C header (tracer/bpf/spiketrace.h),
its Python mirror (tracer/events.py) and the run directory's vocabulary (common.vocab) that the
analysis reads.

gcc compiles a tiny program that includes the header and prints sizeof/offsetof of every field
and the value of every constant; every KIND_*, CONN_*, ROLE_* and HIST_* the header defines must
have the same number and name in common.vocab, and a record built with them must decode into
what the analysis expects. No root or BPF needed.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from common import vocab
from tracer import events

HEADER = Path(events.__file__).parent / "bpf" / "spiketrace.h"
NAMES = [m for m in re.findall(r"^#define ((?:KIND|CONN|ROLE|HIST|CTR)_\w+)\s", HEADER.read_text(), re.M)]


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
    for name in NAMES:
        lines.append(f'printf("{name} %d\\n", (int)({name}));')
    lines.append("return 0; }")
    d = tmp_path_factory.mktemp("layout")
    src, exe = d / "layout.c", d / "layout"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-Wall", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def _group(c_layout, prefix: str, skip=()):
    return {int(c_layout[n]): n[len(prefix):].lower() for n in NAMES
            if n.startswith(prefix) and n not in skip}


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


def test_every_kind_flag_role_and_histogram_has_the_same_number_and_name(c_layout):
    assert _group(c_layout, "KIND_", skip=("KIND_MAX",)) == vocab.EVENT_KINDS
    assert int(c_layout["KIND_MAX"]) == events.KIND_MAX == max(vocab.EVENT_KINDS) + 1
    assert _group(c_layout, "CONN_") == vocab.CONN_FLAGS
    assert _group(c_layout, "ROLE_") == vocab.ROLES
    hists = _group(c_layout, "HIST_", skip=("HIST_N", "HIST_BUCKETS"))
    assert [hists[i] + "_ns" for i in range(len(hists))] == list(vocab.HIST_NAMES)
    assert int(c_layout["HIST_N"]) == len(vocab.HIST_NAMES) == len(vocab.HISTOGRAMS)
    assert int(c_layout["HIST_BUCKETS"]) == events.HIST_BUCKETS
    for name in NAMES:
        if name.startswith("CTR_"):
            assert int(c_layout[name]) == getattr(events, name), name


def test_a_kernel_connection_record_reads_as_the_analysis_expects():
    """A refused client connection and a slow server one, built with the header's numbers,
    decoded by the tracer's decoder and read by the analysis."""
    from analysis.kernel import kernel_connections, transactions_from_kernel

    import pandas as pd

    refused = events.Conn(t_open=10, t_close=20, netns=1, pid=42, sport=40000, dport=9999, family=2,
                          role=1, state=7, flags=vocab.CONN_REFUSED | vocab.CONN_RESET, comm=b"client")
    refused.saddr[:4] = refused.daddr[:4] = [127, 0, 0, 1]
    slow = events.Conn(t_open=100, t_established=200, t_close=900_000_000, netns=1, pid=7, sport=8080,
                       dport=41000, family=2, role=2, state=7, flags=vocab.CONN_SLOW_LIFETIME, comm=b"srv")
    slow.saddr[:4] = slow.daddr[:4] = [10, 0, 0, 1]
    cols = events.decode_conns(bytes(refused) + bytes(slow))
    assert cols["role"] == ["client", "server"]
    k = kernel_connections(pd.DataFrame(cols))
    txn = transactions_from_kernel(k).set_index("local_port")
    assert txn.loc[40000, "outcome"] == "connect_failed"
    assert txn.loc[40000, "last_errno"] == vocab.ECONNREFUSED
    assert txn.loc[41000, "outcome"] == "ok" and txn.loc[41000, "remote_port"] == 8080
    assert vocab.flag_names(int(k.set_index("cport").loc[40000, "flags"])) == "reset,refused"


def test_every_event_kind_decodes_to_its_name_and_has_words():
    recs = b""
    for code in vocab.EVENT_KINDS:
        recs += bytes(events.Event(t_ns=code, kind=code, family=2, state=1, value=1))
    cols = events.decode_events(recs)
    assert cols["kind"] == list(vocab.EVENT_KINDS.values())
    for row in events.rows(cols):
        words = vocab.describe_event(row)
        assert words and words != row["kind"], row["kind"]  # each kind is put into words


def test_decode_roundtrip():
    ev = events.Event(t_ns=5, value=-3, value2=7, netns=42, pid=9, reason=111, sport=1,
                      dport=2, kind=7, family=2, state=2, comm=b"python")
    ev.saddr[:4] = [127, 0, 0, 1]
    cols = events.decode_events(bytes(ev) * 2)
    assert cols["kind"] == ["connect_error"] * 2
    assert cols["saddr"][0] == "127.0.0.1" and cols["daddr"][0] == "0.0.0.0"
    assert cols["comm"][0] == "python" and cols["value"][0] == -3 and cols["reason"][0] == 111
    assert np.array_equal(cols["t_ns"], [5, 5])
