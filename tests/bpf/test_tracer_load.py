"""Every probe variant passes the verifier here, including the kprobe/kretprobe fallbacks that
this kernel cannot attach (programs of kprobe type still load); compile and verifier failures
name the probe and carry the compiler/verifier text."""
from __future__ import annotations

import pytest

from common.errors import SpikeTraceError
from tracer import probes
from tracer.compile import compile_bpf, load_probe, render_source
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

KPROBE_VARIANTS = {"state_change": "kprobe", "retransmit": "kprobe",
                   "synack_retransmit": "kprobe", "time_wait": "kprobe",
                   "accept_wait": "kretprobe", "listen_overflow": "kprobe"}


def _load_all(plan, configs) -> int:
    """Compile for each config and load every function of the plan; the number loaded."""
    from bcc import BPF

    types = {"tracepoint": BPF.TRACEPOINT, "raw_tracepoint": BPF.RAW_TRACEPOINT}
    loaded = 0
    for config in configs:
        text, cflags = render_source(config, plan=plan)
        bpf = compile_bpf(text, cflags)
        try:
            for _ev, backend, _target, fn in plan.attachments():
                assert load_probe(bpf, fn, types.get(backend, BPF.KPROBE), fn).fd > 0
                loaded += 1
        finally:
            bpf.cleanup()
    return loaded


CONFIGS = (TracerConfig(ports=[9999], netns_inum=1), TracerConfig(pids=[1], all_events=True),
           TracerConfig(), TracerConfig(cgroup="/"))


def test_kprobe_variants_pass_the_verifier():
    plan = probes.plan(force=KPROBE_VARIANTS)
    for name, backend in KPROBE_VARIANTS.items():
        assert plan.backends[name] == backend
    fns = {fn for _ev, backend, _target, fn in plan.attachments() if "kprobe" in backend or
           "kretprobe" in backend}
    assert fns == {"kp_tcp_set_state", "kp_tcp_retransmit_skb", "kp_tcp_rtx_synack",
                   "kp_tcp_time_wait", "kretp_inet_csk_accept", "kp_tcp_conn_request",
                   "kp_tcp_v4_syn_recv_sock"}
    assert _load_all(plan, CONFIGS[:2]) > 0


def test_default_probes_pass_the_verifier_in_every_filter_mode():
    plan = probes.plan()
    assert plan.backends["state_change"] in ("raw_tracepoint", "tracepoint")
    assert _load_all(plan, CONFIGS) == 4 * len(plan.attachments())


def test_tracepoint_variants_pass_the_verifier():
    force = {name: "tracepoint" for name in ("state_change", "retransmit", "synack_retransmit",
                                             "reset_sent", "reset_received", "drop", "runq_delay")}
    plan = probes.plan(force=force)
    assert all(plan.backends[name] == "tracepoint" for name in force)
    assert _load_all(plan, CONFIGS[:2]) > 0


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
