"""Probe selection, the verifier and attach on this kernel: the default plan (what doctor
chose) in two filter modes, the kprobe/kretprobe and tracepoint variants through the verifier
(reusing tests/bpf/test_tracer_load.py with one filter mode each: every compile costs 15-60 s
in a guest), the compiler's and the verifier's own words, and the kprobe variants attached for
real where the kernel has kprobes, tracing connections made in a private namespace."""
from __future__ import annotations

import os

import pytest

import tests.bpf.test_tracer_load as host
from tests.bpf.tracer_helpers import Worker, private_netns, random_port, read_table, start_tracer
from tests.kernels.sizes import size
from tracer import probes
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig

pytestmark = [pytest.mark.bpf, pytest.mark.kernel_guest]

CONNECTIONS = size("KPROBE_CONNECTIONS", 20)


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


def test_kprobe_variants_attach_and_trace_connections(tmp_path, monkeypatch):
    """Where the kernel has kprobes, the forced kprobe/kretprobe variants attach and the
    kprobe on tcp_set_state sees every connection; where it has none, no plan picks one and
    the variants still pass the verifier."""
    if not kernel_has_kprobes():
        assert not {b for b in probes.plan().backends.values()} & {"kprobe", "kretprobe"}
        test_kprobe_variants_pass_the_verifier(monkeypatch)
        return
    with private_netns("kprobes") as ns:
        port = random_port()
        tracer = server = None
        try:
            tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns),
                                               all_events=True), tmp_path, force=host.KPROBE_VARIANTS)
            server = Worker(ns, "server", port, 16, 0, 120)
            server.wait_ready()
            clients = Worker(ns, "clients", port, CONNECTIONS, 2, "echo").result(timeout=300)["clients"]
            server.stop()
        finally:
            stats = tracer.stop() if tracer else None
            if server:
                server.kill()
    assert {k: tracer.probes[k] for k in host.KPROBE_VARIANTS} == host.KPROBE_VARIANTS
    assert len(clients) == CONNECTIONS and all(c["err"] == 0 for c in clients)
    assert stats.lost_events == 0
    events = read_table(tmp_path, "events")
    changes = events[events.kind == "state_change"]
    # CLOSE (7) -> SYN_SENT (2): one per client connection, seen by the kprobe on tcp_set_state
    opened = changes[(changes.state == 7) & (changes.new_state == 2)]
    assert len(opened) == CONNECTIONS, changes[["state", "new_state"]].value_counts()
    assert set(opened.dport) == {port}
