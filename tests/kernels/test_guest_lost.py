"""Lost events are counted on this kernel, through the ring buffer and through the perf buffer
(the fallback before 5.8; --extended only, as every kernel here has a ring buffer):
tests/bpf/test_tracer_lost.py with a smaller burst of refused
connections (a guest's consumer is as slow as its workload, so a one-page buffer still
overflows)."""
from __future__ import annotations

import pytest

import tests.bpf.test_tracer_lost as host
from tests.kernels.sizes import size

pytestmark = [pytest.mark.bpf, pytest.mark.kernel_guest]


@pytest.mark.parametrize("output", ["ringbuf", pytest.param("perf", marks=pytest.mark.km_extended)])
def test_lost_events_are_counted(tmp_path, monkeypatch, output):
    monkeypatch.setattr(host, "ATTEMPTS", size("LOST_ATTEMPTS", 1000))
    host.test_lost_events_are_counted(tmp_path, monkeypatch, output)
