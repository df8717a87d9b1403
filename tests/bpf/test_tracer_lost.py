"""Lost events are counted, never silent: a one-page output buffer under a burst of refused
connections loses events, and received + lost equals what the burst generated (each refused
connect() is exactly two state changes: CLOSE -> SYN_SENT, SYN_SENT -> CLOSE)."""
from __future__ import annotations

import pytest

from tests.bpf.tracer_helpers import Worker, private_netns, random_port, read_table, start_tracer
from tracer.btf import netns_inum_of
from tracer.session import TracerConfig

pytestmark = pytest.mark.bpf

ATTEMPTS = 3000


@pytest.mark.parametrize("output", ["ringbuf", "perf"])
def test_lost_events_are_counted(tmp_path, monkeypatch, output):
    monkeypatch.setenv("SPIKETRACE_OUTPUT", output)
    with private_netns(f"lost{output}") as ns:
        port = random_port()
        tracer = start_tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(ns),
                                           all_events=True, ringbuf_pages=1), tmp_path)
        try:
            assert tracer.output == output
            burst = Worker(ns, "clients", port, ATTEMPTS, 1, "refused").result()
        finally:
            stats = tracer.stop()

    assert burst["failures"] == ATTEMPTS
    events = read_table(tmp_path, "events")
    received = int((events.kind == "state_change").sum())
    lost = stats.lost_by_kind.get("state_change", 0)
    assert lost > 0, "a one-page buffer must overflow under this burst"
    assert received + lost == 2 * ATTEMPTS
    assert stats.lost_events == sum(stats.lost_by_kind.values()) >= lost
    assert stats.events == len(events)
