"""`spiketrace explain`'s phases: consecutive, named, and adding up to the latency."""
from __future__ import annotations

from analysis.timeline import phases_of

MS = 1_000_000


def test_a_traced_servers_hold_splits_the_connection_into_phases_that_add_up():
    row = {"t_start": 1000 * MS, "t_connected": 1000 * MS + 30_000, "end": 1204 * MS,
           "srv_hold_ns": 200 * MS, "srv_hold_end": 1203 * MS, "srv_hold_ran": 2 * MS, "srv_hold_wait": 0}
    phases = phases_of(row)
    assert [p[0] for p in phases] == ["handshake", "until the server read the request", "server processing",
                                      "reply, client and close"]
    assert sum(p[1] for p in phases) == 204 * MS
    assert phases[2][1] == 200 * MS and "off the CPU 198 ms, running 2.0 ms" in phases[2][2]


def test_without_the_servers_conversation_the_phases_are_the_handshake_and_the_rest():
    row = {"t_start": 0 + MS, "t_connected": 1001 * MS, "end": 1002 * MS, "srv_hold_ns": 0}
    assert phases_of(row) == [("handshake", 1000 * MS, ""), ("connected to end", MS, "")]
    # a connect that never completed: one phase
    assert phases_of({"t_start": MS, "t_connected": 0, "end": 5 * MS}) == [("to end", 4 * MS, "")]


def test_the_benchs_records_give_its_exchanges():
    row = {"t_start": MS, "t_connected": 2 * MS, "t_reply1": 5 * MS, "t_reply2": 1005 * MS, "end": 1006 * MS}
    assert phases_of(row) == [("handshake", MS, ""), ("request and first reply", 3 * MS, ""),
                              ("second exchange", 1000 * MS, ""), ("close", MS, "")]
