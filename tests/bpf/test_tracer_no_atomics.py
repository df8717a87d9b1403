"""The tracer built for kernels without BPF atomics (before 5.12: no compare-and-swap, no
fetch-or; 5.10's verifier refuses them) tracks connections as the atomic build does. Forced here
with SPIKETRACE_NO_ATOMICS=1 on this kernel: the state-change tests run again in that build."""
from __future__ import annotations

import pytest

from tracer.compile import bpf_atomics, render_source
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf


def test_the_build_without_atomics_has_no_atomic_instruction(monkeypatch):
    monkeypatch.setenv("SPIKETRACE_NO_ATOMICS", "1")
    assert not bpf_atomics()
    _, cflags = render_source(TracerConfig(ports=[9999]))
    assert "-DST_NO_ATOMICS=1" in cflags
    monkeypatch.delenv("SPIKETRACE_NO_ATOMICS")
    _, cflags = render_source(TracerConfig(ports=[9999]))
    assert "-DST_NO_ATOMICS=1" not in cflags


def test_connections_are_tracked_without_atomics(monkeypatch, tmp_path):
    """Every state change of real connections equals bcc's tcpstates, in the build without
    atomics (tests/bpf/test_tracer_states.py's check, default probes)."""
    monkeypatch.setenv("SPIKETRACE_NO_ATOMICS", "1")
    from test_tracer_states import test_state_changes_equal_tcpstates

    test_state_changes_equal_tcpstates(tmp_path, None)
