"""The listen-overflow explanation names the listener where a function probe saw the SYN or the
final ACK meet its full accept queue (tracer/bpf/kprobes.c listen_full: a listen_overflow event
from the receiver's side, value = connections waiting, value2 = backlog, reason 0 = SYN,
1 = final ACK); without the probe the counter still says that one overflowed."""
from __future__ import annotations

from tests.helpers.synthetic import MS, S
from tests.unit.test_analysis_causes import only_spike, run_with


def test_the_syn_dropped_at_a_full_queue_names_its_listener(tmp_path):
    def build(run):
        t = run.txn(connect_ms=1000.1)
        over = run.event("listen_overflow", t["t_start"] + 30_000, t, side="server", state=10,
                         reason=0, value=2, value2=1)
        run.event("retransmit", t["t_start"] + S, t, state=2, value=1)
        run.counter("TcpExt.ListenOverflows", t["t_start"] - 30 * MS, 7)
        run.counter("TcpExt.ListenOverflows", t["t_start"] + 20 * MS, 8)
        return t, over

    result, (t, over) = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("syn_retransmit", "listen_overflow")
    assert e.sentence == ("The SYN was dropped because the accept queue of the listener on port "
                          f"{t['remote_port']} (backlog 1) was full: 2 waiting (ListenOverflows +1); "
                          "the client retransmitted it after the 1 s initial RTO.")
    assert over in list(e.evidence_events)


def test_a_final_ack_dropped_at_a_full_queue_names_its_listener(tmp_path):
    def build(run):
        t = run.txn(connect_ms=1000.1)
        run.event("listen_overflow", t["t_start"] + 100_000, t, side="server", state=3,
                  reason=1, value=3, value2=2)
        run.event("synack_retransmit", t["t_start"] + S, t, side="server", state=3)
        return t

    result, t = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("synack_retransmit", "listen_overflow")
    assert (f"because the client's final ACK was dropped while the accept queue of the listener on "
            f"port {t['remote_port']} (backlog 2) was full: 3 waiting") in e.sentence, e.sentence


def test_an_overflow_of_another_connection_is_not_this_ones(tmp_path):
    """The event is joined by its 4-tuple: another client's overflow leaves the counter's words."""
    def build(run):
        t = run.txn(connect_ms=1000.1)
        other = dict(t, local_port=t["local_port"] + 1)
        run.event("listen_overflow", t["t_start"] + 30_000, other, side="server", value=2, value2=1)
        run.event("retransmit", t["t_start"] + S, t, state=2, value=1)
        run.counter("TcpExt.ListenOverflows", t["t_start"] - 30 * MS, 7)
        run.counter("TcpExt.ListenOverflows", t["t_start"] + 20 * MS, 8)
        return t

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.sentence.startswith("The SYN was dropped because the accept queue (backlog 1) was full "
                                 "(ListenOverflows +1)"), e.sentence
