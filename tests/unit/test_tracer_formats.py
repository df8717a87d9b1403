"""Probe selection against the tracefs `format` files of a kernel other than this one: Linux
5.10 (Debian 11), whose tcp records have no `family` field.

The format texts are written from the kernels' TP_STRUCT__entry definitions, laid out as tracefs
prints them (the 8 bytes of common fields first, each field at its natural alignment):
- include/trace/events/tcp.h, v5.10: class tcp_event_sk_skb (tcp_retransmit_skb,
  tcp_send_reset), class tcp_event_sk (tcp_receive_reset), TRACE_EVENT tcp_retransmit_synack;
- include/trace/events/sock.h, v5.10: inet_sock_set_state (has `family`, since 4.16);
- include/trace/events/skb.h, v5.10: kfree_skb (no `reason`: 5.17+).
(Checked against Debian's linux-headers-5.10.0-46-common, 5.10.262.)"""
from __future__ import annotations

import os

import pytest

from tracer import btf, probes

COMMON = """\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
"""

_SK_SKB = """\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
"""

FORMATS_5_10 = {
    "tcp:tcp_retransmit_skb": _SK_SKB,
    "tcp:tcp_send_reset": _SK_SKB,
    "tcp:tcp_receive_reset": """\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:20;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:24;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:44;\tsize:16;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;
""",
    "tcp:tcp_retransmit_synack": """\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * req;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:36;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:52;\tsize:16;\tsigned:0;
""",
    "sock:inet_sock_set_state": """\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
""",
    "skb:kfree_skb": """\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;
""",
}

needs_btf = pytest.mark.skipif(not os.access(btf.VMLINUX_BTF, os.R_OK),
                               reason="no readable /sys/kernel/btf/vmlinux (reset_sent and drop "
                                      "read the skb's protocol at a BTF offset)")


def write_tracefs(root, formats):
    for event, fields in formats.items():
        category, name = event.split(":")
        d = root / "events" / category / name
        d.mkdir(parents=True)
        d.joinpath("format").write_text(f"name: {name}\nID: 1\nformat:\n{COMMON}\n{fields}\n"
                                        f'print fmt: "sport=%hu", REC->sport\n')
    return str(root)


@pytest.fixture
def tracepoints_only(monkeypatch):
    """A kernel where the tracepoints are the only choice (no raw tracepoints, no kprobes), so
    the plan's own preference picks them."""
    monkeypatch.setattr(probes, "raw_tracepoints_available", lambda: False)
    monkeypatch.setattr(probes, "kprobes_available", lambda: False)


def test_5_10_tcp_records_without_family_get_the_derived_family_variant(tmp_path, tracepoints_only):
    plan = probes.plan(root=write_tracefs(tmp_path, FORMATS_5_10))
    for name in ("state_change", "retransmit", "synack_retransmit", "reset_received"):
        assert plan.backends[name] == "tracepoint", plan.notes
    for event in ("tcp_retransmit_skb", "tcp_receive_reset", "tcp_retransmit_synack"):
        # no TPO_<event>_family: tcp.c compiles TP_TUPLE_NO_FAMILY, which reads saddr_v6
        assert f"TPO_{event}_family" not in plan.defines
        assert f"TPO_{event}_saddr_v6" in plan.defines
    assert plan.defines["TPO_tcp_retransmit_skb_saddr_v6"] == 40
    assert plan.defines["TPO_tcp_receive_reset_saddr_v6"] == 28
    assert plan.defines["TPO_tcp_retransmit_synack_saddr_v6"] == 36
    # the state record has its family, and its program reads it
    assert plan.defines["TPO_inet_sock_set_state_family"] == 28


@needs_btf
def test_5_10_send_reset_and_drop_tracepoints_are_chosen(tmp_path, tracepoints_only):
    plan = probes.plan(root=write_tracefs(tmp_path, FORMATS_5_10))
    assert plan.backends["reset_sent"] == "tracepoint", plan.notes
    assert plan.backends["drop"] == "tracepoint", plan.notes
    # 5.10's tcp_send_reset: the 4-tuple layout (sport; 6.10+ has sockaddrs), no family
    assert plan.defines["TPO_tcp_send_reset_sport"] == 28
    assert "TPO_tcp_send_reset_family" not in plan.defines
    assert "TPO_kfree_skb_reason" not in plan.defines


def test_a_tcp_record_without_the_v6_address_is_refused_and_says_why(tmp_path, tracepoints_only):
    """Without `family`, saddr_v6 is what tells the family: a record lacking both is not used."""
    formats = dict(FORMATS_5_10)
    formats["tcp:tcp_retransmit_skb"] = "".join(
        line + "\n" for line in _SK_SKB.splitlines() if "saddr_v6" not in line)
    plan = probes.plan(root=write_tracefs(tmp_path, formats))
    assert plan.backends["retransmit"] == "unavailable"
    note = next(n for n in plan.notes if n.startswith("retransmit:"))
    assert "tracepoint tcp:tcp_retransmit_skb lacks field(s) saddr_v6" in note, note


def test_the_record_with_family_still_reads_it(tmp_path, tracepoints_only):
    """6.1's tcp records have `family` (after daddr_v6 here; its offset is taken as printed)."""
    formats = {e: f for e, f in FORMATS_5_10.items() if e != "tcp:tcp_send_reset"}
    formats["tcp:tcp_retransmit_skb"] = _SK_SKB + "\tfield:__u16 family;\toffset:72;\tsize:2;\tsigned:0;\n"
    plan = probes.plan(root=write_tracefs(tmp_path, formats))
    assert plan.backends["retransmit"] == "tracepoint"
    assert plan.defines["TPO_tcp_retransmit_skb_family"] == 72
    assert "TPO_tcp_receive_reset_family" not in plan.defines
