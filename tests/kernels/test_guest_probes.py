"""Probe selection, the verifier and attach on this kernel: the default plan (what doctor
chose) in two filter modes, the kprobe/kretprobe and tracepoint variants through the verifier
(reusing tests/bpf/test_tracer_load.py with one filter mode each: every compile costs 15-60 s
in a guest), the compiler's and the verifier's own words, and the kprobe and fentry variants attached for
real where the kernel has them, tracing connections made in a private namespace to a listen(1)
server whose accept queue overflows."""
from __future__ import annotations

import os
import time

import pytest

import tests.bpf.test_tracer_load as host
from tests.bpf.tracer_helpers import Worker, private_netns, random_port, read_table, start_tracer
from common.vocab import KIND_CODES
from tests.kernels.sizes import size
from tracer import events, probes
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig

pytestmark = [pytest.mark.bpf, pytest.mark.kernel_guest]

def kernel_has_kprobes() -> bool:
    return os.path.exists("/sys/bus/event_source/devices/kprobe/type")


@pytest.mark.km_extended  # the port filter's programs load in every traced run below
def test_default_plan_passes_the_verifier_with_port_and_pid_filters():
    plan = probes.plan()
    assert plan.backends["state_change"] in ("raw_tracepoint", "tracepoint", "kprobe"), plan.notes
    configs = (host.CONFIGS[0], host.CONFIGS[1])  # ports + netns (run, trace --port); pids
    assert host._load_all(plan, configs) == len(configs) * len(plan.attachments())


@pytest.mark.km_extended  # where kprobes exist, the attach test loads the same programs
def test_kprobe_variants_pass_the_verifier(monkeypatch):
    monkeypatch.setattr(host, "CONFIGS", host.CONFIGS[:1])
    host.test_kprobe_variants_pass_the_verifier()


def test_tracepoint_variants_pass_the_verifier():
    """Every tracepoint variant passes the verifier, whatever this kernel's record layout (5.10's
    tcp records have no `family`: tcp.c derives it, tests/unit/test_tracer_formats.py); only a
    tracepoint the kernel does not have may be left out, and the plan says so."""
    force = {name: "tracepoint" for name in ("state_change", "retransmit", "synack_retransmit",
                                             "reset_sent", "reset_received", "drop", "runq_delay")}
    plan = probes.plan(force=force)
    lacking = sorted(name for name in force if plan.backends[name] != "tracepoint")
    for name in lacking:
        assert plan.backends[name] == "unavailable", plan.notes
        assert any(n.startswith(f"{name}: unavailable (tracepoint: no tracepoint ")
                   for n in plan.notes), plan.notes
    assert "state_change" not in lacking, plan.notes
    assert host._load_all(plan, host.CONFIGS[:1]) == len(plan.attachments())


def test_compile_error_carries_compiler_text():
    host.test_compile_error_carries_compiler_text()


def test_verifier_error_names_the_probe():
    host.test_verifier_error_names_the_probe()


# the fentry/fexit variants (kprobes.c, BCC's KFUNC_PROBE/KRETFUNC_PROBE)
FENTRY_VARIANTS = {"time_wait": "fentry", "accept_wait": "fexit", "listen_overflow": "fentry"}
# a listen(1) queue holds 2: the rest of a burst of OVERFLOW_CLIENTS meets it full while the
# server does not accept (their SYNs dropped), until the tracer has counted an overflow (a
# client process can take seconds to start in a TCG guest: a fixed delay raced it); accept
# waits are all sent (threshold 0)
OVERFLOW_CLIENTS = size("OVERFLOW_CLIENTS", 5)
OVERFLOW_WAIT_S = 120


def _wait_for_an_overflow(tracer) -> None:
    deadline = time.monotonic() + OVERFLOW_WAIT_S
    while time.monotonic() < deadline:
        if tracer.counters()[events.CTR_SENT_BASE + KIND_CODES["listen_overflow"]]:
            return
        time.sleep(0.2)


def _trace_an_overflowing_listener(ns, tmp_path, force):
    port = random_port()
    tracer = server = None
    try:
        tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns), all_events=True,
                                           accept_wait_threshold_ms=0), tmp_path, force=force)
        server = Worker(ns, "server", port, 1, 0.01, 300)  # accepts once told "go"
        server.wait_ready()
        burst = Worker(ns, "clients", port, OVERFLOW_CLIENTS, OVERFLOW_CLIENTS, "echo")
        _wait_for_an_overflow(tracer)
        server.go()
        clients = burst.result(timeout=300)["clients"]
        accepts = server.stop()["accepts"]
    finally:
        stats = tracer.stop() if tracer else None
        if server:
            server.kill()
    return port, tracer, stats, clients, accepts


def _assert_function_probes_saw_it(tmp_path, port, stats, clients, accepts):
    assert len(clients) == OVERFLOW_CLIENTS and all(c["err"] == 0 for c in clients), clients
    assert stats.lost_events == 0, stats.lost_by_kind
    events = read_table(tmp_path, "events")
    # the SYNs dropped at the full queue: the listener (local side), the client, 2 waiting of 1
    over = events[(events.kind == "listen_overflow") & (events.reason == 0)]
    dropped = {c["port"] for c in clients if c["t_connected"] - c["t_start"] > 0.9e9}
    assert dropped and set(over.dport) == dropped, (over[["sport", "dport", "value", "value2"]], clients)
    assert set(over.sport) == {port} and set(over.value2) == {1} and (over.value > 1).all()
    # every accept's wait, from the accept's return (kretprobe / fexit), on the listener's port
    # and each client's (6.1 sets a server child's peer after its SYN_RECV: read again later)
    waits = events[events.kind == "accept_wait"]
    assert len(waits) == len(accepts) and set(waits.sport) == {port}, (waits, accepts)
    assert set(waits.dport) <= {c["port"] for c in clients}, (waits[["sport", "dport"]], clients)
    assert (waits.value > 0).all()
    # TIME_WAIT entries, from tcp_time_wait (kprobe / fentry)
    assert (events.kind == "time_wait").any(), events.kind.value_counts()


# tcp_set_state's kprobe is left to the verifier test: it cannot see a server child's SYN_RECV
# (set by inet_sk_set_state in inet_csk_clone_lock), so server connections would be first seen
# at ESTABLISHED, partial, and their accepts not timed
KPROBES_ATTACHED = {k: v for k, v in host.KPROBE_VARIANTS.items() if k != "state_change"}


def test_kprobe_variants_attach_and_trace_connections(tmp_path, monkeypatch):
    """Where the kernel has kprobes, the forced kprobe/kretprobe variants attach: the kprobe on
    tcp_conn_request names each client whose SYN met the full accept queue of a listen(1)
    server, the kretprobe on inet_csk_accept times every accept, the one on tcp_time_wait sees
    TIME_WAIT, the one on tcp_retransmit_skb the dropped clients' SYN retransmits; where it has
    none, no plan picks one and the variants still pass the verifier."""
    if not kernel_has_kprobes():
        assert not {b for b in probes.plan().backends.values()} & {"kprobe", "kretprobe"}
        test_kprobe_variants_pass_the_verifier(monkeypatch)
        return
    with private_netns("kprobes") as ns:
        port, tracer, stats, clients, accepts = _trace_an_overflowing_listener(
            ns, tmp_path, KPROBES_ATTACHED)
    assert {k: tracer.probes[k] for k in KPROBES_ATTACHED} == KPROBES_ATTACHED
    _assert_function_probes_saw_it(tmp_path, port, stats, clients, accepts)
    events = read_table(tmp_path, "events")
    syn = events[(events.kind == "retransmit") & (events.state == 2)]  # SYN_SENT
    dropped = {c["port"] for c in clients if c["t_connected"] - c["t_start"] > 0.9e9}
    assert set(syn.sport) == dropped, (syn[["sport", "dport"]], dropped)


def test_fentry_variants_attach_and_trace_connections(tmp_path):
    """Where this kernel and BCC take fentry/fexit programs (probes.fentry_available tries one),
    the default plan prefers them to kprobes, and they attach and see what the kprobes see;
    where they do not, the plan says why and uses the kprobes or the fallbacks."""
    ok, why = probes.fentry_available()
    plan = probes.plan()
    if not ok:
        assert not set(plan.backends.values()) & {"fentry", "fexit"}
        assert any(f"fentry: {why}" in n for n in plan.notes), (why, plan.notes)
        return
    # each function is tried: one trampolines cannot reach keeps its kprobe, and says why
    chosen = {k: plan.backends[k] for k in FENTRY_VARIANTS}
    assert plan.backends["time_wait"] == "fentry", plan.notes  # fentry_available's own trial
    for name, backend in chosen.items():
        if backend != FENTRY_VARIANTS[name]:
            assert backend in ("kprobe", "kretprobe"), plan.notes
            assert any(n.startswith(f"{name}: {backend} (f") and "refuses" in n
                       for n in plan.notes), plan.notes
    with private_netns("fentry") as ns:
        port, tracer, stats, clients, accepts = _trace_an_overflowing_listener(
            ns, tmp_path, chosen)
    assert {k: tracer.probes[k] for k in FENTRY_VARIANTS} == chosen
    _assert_function_probes_saw_it(tmp_path, port, stats, clients, accepts)
