"""Each cause on a small synthetic run directory (built from the documented schemas): the right
cause, sub-reason, share of the latency, evidence rows and sentence."""
from __future__ import annotations

import pytest

from analysis import AnalysisOptions, analyse
from common.rundir import RunDir
from tests.helpers.synthetic import MS, S, SyntheticRun


def run_with(tmp_path, build, options=AnalysisOptions(), **kw):
    run = SyntheticRun(tmp_path / "run", **kw)
    run.normal(40)
    extra = build(run)
    run.normal(20, seed=3)
    result = analyse(RunDir.open(run.write()), options)
    return result, extra


def only_spike(result):
    assert len(result.explanations) == 1, result.explanations[["txn_id", "latency_ns", "cause"]]
    return result.explanations.iloc[0]


def approx_ms(ns, ms, tol=0.5):
    return abs(ns / 1e6 - ms) <= tol


def test_syn_retransmit_listen_overflow_from_counter(tmp_path):
    def build(run):
        t = run.txn(connect_ms=1000.1)
        ev = run.event("retransmit", t["t_start"] + S, t, state=2, value=1)
        run.counter("TcpExt.ListenOverflows", t["t_start"] - 30 * MS, 7)
        run.counter("TcpExt.ListenOverflows", t["t_start"] + 20 * MS, 8)
        return t, ev

    result, (t, ev) = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.txn_id == t["id"]
    assert (e.cause, e.cause_detail, e.causes) == ("syn_retransmit", "listen_overflow", "syn_retransmit")
    assert e.syn_retransmit_ns == S  # t_retransmit - t_start
    assert approx_ms(e.rest_ns, 0.32, 0.05)  # the normal service time
    assert list(e.evidence_events) == [ev]
    assert e.sentence == ("The SYN was dropped because the accept queue (backlog 1) was full "
                          "(ListenOverflows +1); the client retransmitted it after the 1 s initial RTO.")


def test_syn_retransmit_listen_overflow_from_queue_depth(tmp_path):
    def build(run):
        t = run.txn(connect_ms=1000.1)
        run.event("retransmit", t["t_start"] + S, t, state=2)
        run.counter("listen.9999.backlog", t["t_start"] - 100 * MS, 1)
        run.counter("listen.9999.queue", t["t_start"] - 100 * MS, 0)
        run.counter("listen.9999.queue", t["t_start"] - 10 * MS, 2)  # backlog 1 holds 2: full
        run.counter("listen.9999.queue", t["t_start"] + 100 * MS, 0)
        return t

    result, _ = run_with(tmp_path, build, backlog=None)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("syn_retransmit", "listen_overflow")
    assert "backlog 1" in e.sentence and "queue 2 > backlog 1" in e.sentence


def test_syn_retransmit_drop_with_reason(tmp_path):
    def build(run):
        run.meta.drop_reasons = {"2": "NOT_SPECIFIED", "77": "TC_EGRESS"}
        t = run.txn(connect_ms=1000.1)
        # kfree_skb reports the receiver's side: s = the packet's destination (the server)
        drop = run.event("drop", t["t_start"] + 20_000, t, side="server", reason=77)
        syn = run.event("retransmit", t["t_start"] + S, t, state=2)
        return drop, syn

    result, (drop, syn) = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("syn_retransmit", "drop:TC_EGRESS")
    assert sorted(e.evidence_events) == sorted([drop, syn])
    assert "The SYN was dropped by a tc egress filter (drop reason TC_EGRESS)" in e.sentence


def test_syn_retransmit_twice_with_linear_timeouts(tmp_path):
    """6.5+: tcp_syn_linear_timeouts keeps the first retransmits 1 s apart: 2 s, not 3 s."""
    def build(run):
        t = run.txn(connect_ms=2000.1)
        run.event("retransmit", t["t_start"] + S, t, state=2, value=1)
        run.event("retransmit", t["t_start"] + 2 * S, t, state=2, value=2)
        return t

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("syn_retransmit", "no_answer")
    assert e.syn_retransmit_ns == 2 * S
    assert "2 times" in e.sentence and "tcp_syn_linear_timeouts=4" in e.sentence


def test_syn_retransmit_legacy_three_second_rto(tmp_path):
    def build(run):
        t = run.txn(connect_ms=3000.1)
        run.event("retransmit", t["t_start"] + 3 * S, t, state=2)
        return t

    result, _ = run_with(tmp_path, build, scenario="legacy-rto")
    e = only_spike(result)
    assert e.cause == "syn_retransmit" and e.syn_retransmit_ns == 3 * S
    assert "3 s initial RTO" in e.sentence
    assert result.summary["syn_rto"]["initial_s"] == 3.0


def test_syn_retransmit_inferred_from_timing_when_the_event_was_lost(tmp_path):
    def build(run):
        return run.txn(connect_ms=1000.3)

    result, _ = run_with(tmp_path, build, lost_events=12)
    e = only_spike(result)
    assert e.cause == "syn_retransmit" and bool(e.inferred)
    assert e.syn_retransmit_ns == S
    assert "inferred from timing" in e.sentence
    assert any("12 kernel events were lost" in w for w in result.warnings)


def test_synack_retransmit_after_the_final_ack_was_dropped(tmp_path):
    def build(run):
        t = run.txn(connect_ms=0.1, ex1_ms=1000.2)
        ev = run.event("synack_retransmit", t["t_connected"] + S, t, side="server", state=3)
        run.counter("TcpExt.ListenOverflows", t["t_start"] - 30 * MS, 3)
        run.counter("TcpExt.ListenOverflows", t["t_connected"] + 30 * MS, 4)
        return ev

    result, ev = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("synack_retransmit", "listen_overflow")
    assert e.synack_retransmit_ns == S
    assert list(e.evidence_events) == [ev]
    assert "final ACK was dropped" in e.sentence


@pytest.mark.parametrize("gap_ms, detail", [(205, "rto"), (150, "tlp")])
def test_data_retransmit_rto_or_tlp_by_timing(tmp_path, gap_ms, detail):
    def build(run):
        t = run.txn(ex1_ms=gap_ms + 0.2)
        return run.event("retransmit", t["t_connected"] + gap_ms * MS, t, side="server", state=1, value=1)

    result, ev = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("data_retransmit", detail)
    assert e.data_retransmit_ns == gap_ms * MS
    assert list(e.evidence_events) == [ev]
    assert "server's reply" in e.sentence
    assert ("tail loss probe" in e.sentence) == (detail == "tlp")


def test_accept_queue_wait_from_the_server_record(tmp_path):
    def build(run):
        return run.txn(ex1_ms=150.2, accept_ms=150)

    result, t = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("accept_queue_wait", "server_record")
    assert e.accept_queue_wait_ns == 150 * MS
    assert e.server_conn >= 0
    assert "accept queue (backlog 1)" in e.sentence


def test_accept_queue_wait_from_an_accept_wait_event(tmp_path):
    def build(run):
        t = run.txn(ex1_ms=180.2, accept_ms=180, server=False)
        t_acc = t["t_connected"] + 180 * MS
        return run.event("accept_wait", t_acc, t, side="server", value=180 * MS, value2=t["t_connected"])

    result, ev = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("accept_queue_wait", "event")
    assert e.accept_queue_wait_ns == 180 * MS and list(e.evidence_events) == [ev]


def test_port_exhaustion_from_connect_errors_and_the_time_wait_census(tmp_path):
    def build(run):
        t = run.txn(connect_ms=300.1, attempts=4000, errno=99)
        run.counter("sockstat.tw", t["t_start"] - 10 * MS, 28_190)
        # an error streak: no local port yet (sport 0), joined by thread and time
        ev = run.event("connect_error", t["t_start"] + 300 * MS, None, pid=run.client_pid, comm="python3",
                       daddr="127.0.0.1", dport=9999, reason=99, value=3999, value2=t["t_start"] + 10_000)
        return ev

    result, ev = run_with(tmp_path, build, sysctls={"net.ipv4.ip_local_port_range": "32768 60999",
                                                    "net.ipv4.tcp_syn_linear_timeouts": "4"})
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("port_exhaustion", "eaddrnotavail")
    assert e.port_exhaustion_ns == 300 * MS
    assert list(e.evidence_events) == [ev]
    assert "EADDRNOTAVAIL" in e.sentence and "28,190 sockets in TIME_WAIT" in e.sentence
    assert "3,999 times" in e.sentence and "32768-60999" in e.sentence


def test_refused_connects_retried(tmp_path):
    def build(run):
        return run.txn(connect_ms=200.1, attempts=25, errno=111)

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("reset", "refused")
    assert approx_ms(e.reset_ns, 200.1, 0.01)
    assert "ECONNREFUSED" in e.sentence


def test_reset_while_waiting_for_a_reply(tmp_path):
    def build(run):
        t = run.txn(ex1_ms=150, outcome="reset", errno=104)
        rst_t = t["t_connected"] + 150 * MS
        t.update(t_reply1=0, t_reply2=0, t_end=rst_t + 10_000)
        return run.event("reset_received", rst_t, t, state=1)

    result, ev = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("reset", "reset")
    assert e.reset_ns == 150 * MS and list(e.evidence_events) == [ev]
    assert "first reply" in e.sentence and "failed" in e.sentence


def test_linger_reset_after_the_last_reply_is_not_a_cause(tmp_path):
    """The seed server closes with SO_LINGER {1, 0}: a RST after the last echo is normal."""
    def build(run):
        t = run.txn(ex1_ms=150)
        run.event("reset_received", t["t_reply2"] + 5_000, t, state=5)
        return t

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.cause == "unexplained" and e.reset_ns == 0


@pytest.mark.parametrize("side", ["client", "server"])
def test_runq_delay_of_the_client_or_server_thread(tmp_path, side):
    pid = 1000 if side == "client" else 2000  # SyntheticRun's client and server

    def build(run):
        t = run.txn(ex1_ms=120.2)
        return run.event("runq_delay", t["t_connected"] + 120 * MS, None, pid=pid, comm=f"{side}-proc",
                         value=118 * MS, value2=1)

    result, ev = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("runq_delay", side)
    assert e.runq_delay_ns == 118 * MS and list(e.evidence_events) == [ev]
    assert f"The {side} thread {pid} ({side}-proc)" in e.sentence  # a thread id, named as one


def test_delayed_ack_stall_with_split_writes(tmp_path):
    def build(run):
        return run.txn(ex1_ms=40.3)

    params = {"server": {"backlog": 1}, "client": {"split_writes": True, "nodelay": False}}
    result, _ = run_with(tmp_path, build, AnalysisOptions(threshold_ms=30), params=params)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("delayed_ack", "exchange1")
    assert approx_ms(e.delayed_ack_ns, 40.2, 0.05)
    assert "Nagle" in e.sentence and bool(e.inferred)


def test_no_delayed_ack_without_split_writes(tmp_path):
    def build(run):
        return run.txn(ex1_ms=40.3)

    result, _ = run_with(tmp_path, build, AnalysisOptions(threshold_ms=30))
    assert only_spike(result).cause == "unexplained"


def test_unexplained_names_the_nearest_evidence(tmp_path):
    def build(run):
        t = run.txn(ex1_ms=150.2)
        other = {**t, "local_port": 55555}
        return run.event("retransmit", t["t_end"] + 10 * MS, other, state=1)

    result, ev = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.cause == "unexplained" and e.explained_ns == 0
    assert "nearest kernel event was a retransmit on another connection (ports 55555->9999), 10 ms after it" in e.sentence
    assert list(e.evidence_events) == [ev]


def test_two_causes_at_once_share_the_latency(tmp_path):
    """A dropped SYN (1 s) and then a client thread kept off the CPU for 300 ms."""
    def build(run):
        t = run.txn(connect_ms=1000.1, ex1_ms=300.1)
        run.event("retransmit", t["t_start"] + S, t, state=2)
        run.event("runq_delay", t["t_connected"] + 300 * MS, None, pid=run.client_pid, comm="client",
                  value=300 * MS)
        return t

    result, t = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.cause == "syn_retransmit" and e.causes == "syn_retransmit,runq_delay"
    assert e.syn_retransmit_ns == S and e.runq_delay_ns == 300 * MS
    assert e.explained_ns == S + 300 * MS
    assert e.explained_ns + e.rest_ns == e.latency_ns
    assert "Also: the client thread waited 300 ms for a CPU." in e.sentence


def test_overlapping_causes_never_count_an_instant_twice(tmp_path):
    """A server run-queue delay inside an accept-queue wait: the wait is *because* the server was
    not running, so the overlap goes to runq_delay and the rest of the wait to accept_queue_wait."""
    def build(run):
        t = run.txn(ex1_ms=200.2, accept_ms=200)
        run.event("runq_delay", t["t_connected"] + 150 * MS, None, pid=run.server_pid, comm="server",
                  value=100 * MS)
        return t

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.accept_queue_wait_ns == 100 * MS and e.runq_delay_ns == 100 * MS
    assert set(e.causes.split(",")) == {"accept_queue_wait", "runq_delay"}
    assert e.explained_ns <= e.latency_ns


def test_a_reused_client_port_blames_only_the_transaction_in_time(tmp_path):
    """Client ports come back many times in a long run: the join is by 4-tuple AND time."""
    def build(run):
        first = run.txn(ex1_ms=150.2, port=41000)
        run.normal(5, seed=9)
        second = run.txn(connect_ms=1000.1, port=41000)
        run.event("retransmit", second["t_start"] + S, second, state=2)
        return first, second

    result, (first, second) = run_with(tmp_path, build)
    by_id = result.explanations.set_index("txn_id")
    assert by_id.loc[second["id"], "cause"] == "syn_retransmit"
    assert by_id.loc[first["id"], "cause"] == "unexplained"
    assert by_id.loc[first["id"], "syn_retransmit_ns"] == 0


def test_a_stall_in_every_transaction_is_flagged_and_explained_on_request(tmp_path):
    """nagle-delack: every transaction stalls ~43 ms in its second exchange (the first is fast:
    quickack), so the stall is the median, not a spike; the analysis says so, and explains each
    one when asked (--relative 0 --threshold 30ms)."""
    params = {"server": {"backlog": 1}, "client": {"split_writes": True, "nodelay": False}}
    run = SyntheticRun(tmp_path / "run", params=params)
    for k in range(30):
        run.txn(ex1_ms=0.1, ex2_ms=43.1 + 0.01 * k)
    run.ground_truth("delayed_ack", run.cursor, sport=0)
    rd = RunDir.open(run.write())
    result = analyse(rd)
    assert result.explanations.empty
    assert any("stalls 43 ms in exchange 2" in w for w in result.warnings)
    result = analyse(rd, AnalysisOptions(threshold_ms=30, relative=0))
    assert set(result.explanations["cause"]) == {"delayed_ack"}
    assert set(result.explanations["cause_detail"]) == {"exchange2"}
    row = result.accuracy.set_index("cause").loc["delayed_ack"]
    assert (row.injected, row.recall, row.precision) == (30, 1.0, 1.0)


def test_data_retransmit_inferred_from_a_drop_and_the_counters(tmp_path):
    """A tail loss probe that tcp:tcp_retransmit_skb did not report: the drop of the request
    plus Tcp.RetransSegs / TCPLossProbes growth before the exchange completed."""
    def build(run):
        run.meta.drop_reasons = {"73": "TC_INGRESS"}
        t = run.txn(ex1_ms=208.2)
        drop = run.event("drop", t["t_connected"] + 20_000, t, side="server", state=1, reason=73)
        for name, before in (("Tcp.RetransSegs", 4), ("TcpExt.TCPLossProbes", 2)):
            run.counter(name, t["t_start"] - 10 * MS, before)
            run.counter(name, t["t_connected"] + 207 * MS, before + 1)
        return drop

    result, drop = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("data_retransmit", "tlp")
    assert bool(e.inferred)
    assert list(e.evidence_events) == [drop]
    assert 200 * MS <= e.data_retransmit_ns <= 209 * MS
    assert "client's request" in e.sentence and "tc ingress filter" in e.sentence


def test_a_drop_without_counter_growth_is_not_called_a_retransmit(tmp_path):
    def build(run):
        t = run.txn(ex1_ms=208.2)
        run.event("drop", t["t_connected"] + 20_000, t, side="server", state=1, reason=73)

    result, _ = run_with(tmp_path, build)
    assert only_spike(result).cause != "data_retransmit"


def test_a_tail_loss_probe_after_the_close_is_not_a_lost_request(tmp_path):
    """Seen on PostgreSQL + pgbench (tests/realapps): the client closes, a tail loss probe goes
    out in FIN_WAIT1 and the server drops the duplicate as TCP_OLD_DATA. The request was never
    lost: neither the retransmit nor the drop may explain the slow transaction."""
    def build(run):
        run.meta.drop_reasons = {"31": "TCP_OLD_DATA", "2": "NOT_SPECIFIED"}
        t = run.txn(ex1_ms=150.2)
        close = t["t_end"] - 50_000
        run.event("retransmit", close, t, state=4, value=1)  # FIN_WAIT1, the client's side
        run.event("drop", close + 20_000, t, side="server", state=8, reason=31)  # CLOSE_WAIT
        run.event("drop", close + 40_000, t, state=6, reason=2)  # the client's TIME_WAIT
        for name, before in (("Tcp.RetransSegs", 4), ("TcpExt.TCPLossProbes", 2)):
            run.counter(name, t["t_start"] - 10 * MS, before)
            run.counter(name, close + 10_000, before + 1)

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.cause != "data_retransmit" and e.data_retransmit_ns == 0, e.sentence


def test_request_dropped_after_a_final_ack_overflow_names_the_overflow(tmp_path):
    """The handshake's last ACK met a full accept queue: the server kept no socket, the
    request reached the listener and was dropped (NO_SOCKET), the client retransmitted it. The
    listener was up and ListenOverflows grew: the cause is the overflow, not 'nothing listening'."""
    def build(run):
        run.meta.drop_reasons = {"3": "NO_SOCKET"}
        t = run.txn(ex1_ms=205.2)
        run.counter("TcpExt.ListenOverflows", t["t_start"] - 10 * MS, 7)
        run.counter("TcpExt.ListenOverflows", t["t_connected"] + 1 * MS, 8)
        run.event("drop", t["t_connected"] + 30_000, t, side="server", state=10, reason=3)
        run.event("retransmit", t["t_connected"] + 205 * MS, t, state=1, value=1)

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert e.cause == "data_retransmit"
    assert "accept queue (backlog 1) was full when the handshake's last ACK arrived" in e.sentence
    assert "ListenOverflows +1" in e.sentence and "nothing listening" not in e.sentence


def test_a_final_ack_overflow_then_a_lost_request_is_the_retransmit_not_an_accept_wait(tmp_path):
    """Seen in the listen-overflow scenario: the handshake's last ACK is dropped at the full
    queue (before the client's connect() returns), then the request is dropped at the listener
    too and a tail loss probe that tcp_retransmit_skb does not report brings it in ~200 ms later.
    The server's record then shows a 'wait' from the client's ESTABLISHED to its accept() that
    was the retransmit's: the inferred data retransmit explains it, the accept wait does not."""
    def build(run):
        run.meta.drop_reasons = {"3": "NO_SOCKET"}
        t = run.txn(ex1_ms=208.2, accept_ms=207.9)
        run.counter("TcpExt.ListenOverflows", t["t_start"] - 10 * MS, 7)
        run.counter("TcpExt.ListenOverflows", t["t_connected"] + 1 * MS, 8)
        run.event("drop", t["t_connected"] - 100_000, t, side="server", state=10, reason=3)
        run.event("drop", t["t_connected"] + 30_000, t, side="server", state=10, reason=3)
        for name, before in (("Tcp.RetransSegs", 4), ("TcpExt.TCPLossProbes", 2)):
            run.counter(name, t["t_start"] - 10 * MS, before)
            run.counter(name, t["t_connected"] + 207 * MS, before + 1)

    result, _ = run_with(tmp_path, build)
    e = only_spike(result)
    assert (e.cause, e.cause_detail) == ("data_retransmit", "tlp") and bool(e.inferred), e.sentence
    assert e.accept_queue_wait_ns == 0 and "accept queue (backlog 1) was full" in e.sentence, e.sentence


def test_a_drop_with_no_socket_and_no_overflow_still_says_no_socket(tmp_path):
    def build(run):
        run.meta.drop_reasons = {"3": "NO_SOCKET"}
        t = run.txn(ex1_ms=205.2)
        run.counter("TcpExt.ListenOverflows", t["t_start"] - 10 * MS, 7)
        run.event("drop", t["t_connected"] + 30_000, t, side="server", state=10, reason=3)
        run.event("retransmit", t["t_connected"] + 205 * MS, t, state=1, value=1)

    result, _ = run_with(tmp_path, build)
    assert "no socket was there to take it" in only_spike(result).sentence
