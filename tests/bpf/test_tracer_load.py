"""Every probe variant passes the verifier here, including the kprobe/kretprobe fallbacks that
this kernel cannot attach (programs of kprobe type still load); compile and verifier failures
name the probe and carry the compiler/verifier text."""
from __future__ import annotations

import pytest

from spiketrace.errors import SpikeTraceError
from tracer import probes
from tracer.session import TracerConfig, compile_bpf, load_probe, render_source

pytestmark = pytest.mark.bpf

KPROBE_VARIANTS = {"state_change": "kprobe", "retransmit": "kprobe",
                   "synack_retransmit": "kprobe", "time_wait": "kprobe",
                   "accept_wait": "kretprobe"}


def test_kprobe_variants_pass_the_verifier():
    from bcc import BPF

    plan = probes.plan(force=KPROBE_VARIANTS)
    for name, backend in KPROBE_VARIANTS.items():
        assert plan.backends[name] == backend
    fns = [fn for _ev, backend, _target, fn in plan.attachments() if backend != "tracepoint"]
    assert sorted(fns) == sorted(["kp_tcp_set_state", "kp_tcp_retransmit_skb", "kp_tcp_rtx_synack",
                                  "kp_tcp_time_wait", "kretp_inet_csk_accept"])
    for config in (TracerConfig(ports=[9999], netns_inum=1), TracerConfig(pids=[1], all_events=True)):
        text, cflags = render_source(config, plan=plan)
        bpf = compile_bpf(text, cflags)
        try:
            for fn in fns:
                assert load_probe(bpf, fn, BPF.KPROBE, fn).fd > 0
        finally:
            bpf.cleanup()


def test_tracepoint_probes_pass_the_verifier_in_every_filter_mode():
    from bcc import BPF

    plan = probes.plan()
    fns = sorted({fn for _ev, backend, _t, fn in plan.attachments() if backend == "tracepoint"})
    assert "tp_inet_sock_set_state" in fns and "tp_sched_switch" in fns
    for config in (TracerConfig(), TracerConfig(pids=[1]), TracerConfig(cgroup="/"),
                   TracerConfig(ports=[80], pids=[1], all_events=True, netns_inum=5)):
        text, cflags = render_source(config, plan=plan)
        bpf = compile_bpf(text, cflags)
        try:
            for fn in fns:
                assert load_probe(bpf, fn, BPF.TRACEPOINT, fn).fd > 0
        finally:
            bpf.cleanup()


def test_compile_error_carries_compiler_text():
    with pytest.raises(SpikeTraceError) as exc:
        compile_bpf("int broken(void *ctx) { return undefined_symbol; }", [])
    assert "BPF compile failed" in str(exc.value) and "undefined_symbol" in str(exc.value)


def test_verifier_error_names_the_probe():
    from bcc import BPF

    bpf = compile_bpf("int bad_probe(void *ctx) { return *(int *)(long)bpf_ktime_get_ns(); }", [])
    try:
        with pytest.raises(SpikeTraceError) as exc:
            load_probe(bpf, "bad_probe", BPF.TRACEPOINT, "a test probe")
    finally:
        bpf.cleanup()
    text = str(exc.value)
    assert "bad_probe" in text and "a test probe" in text
    assert "invalid mem access" in text or "R0" in text  # the verifier's own words
