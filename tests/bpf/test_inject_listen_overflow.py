"""listen-overflow: the tc observer (which never drops) records each SYN the full accept
queue dropped, as the namespace's ListenOverflows counter counts them."""
from __future__ import annotations

import pandas as pd
import pytest

from netfault_helpers import Server, connect_concurrently, delta, private_ns
from spiketrace.scenarios import SCENARIOS

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("private_state_dir")]


def test_observer_matches_listen_overflows(tmp_path):
    sc = SCENARIOS["listen-overflow"]
    assert sc.server_overrides["backlog"] == 1
    with private_ns("overflow", sc.sysctls) as ns:
        # backlog 1 holds 2 connections; the server accepts nothing for 0.5 s, so SYNs
        # 3..5 are dropped and get in with a retransmission 1 s later (a retransmitted SYN
        # may meet the full queue again: then it is dropped twice, and counted twice)
        server = Server(ns, backlog=1, accept_delay_s=0.5)
        inj = sc.setup(ns, tmp_path)
        try:
            before = ns.tcp_counters()
            server.start()
            times = connect_concurrently(ns, 5, stagger_s=0.01)
            after = ns.tcp_counters()
            records = inj.fault.records()
        finally:
            inj.teardown()
            server.close()

    overflows = delta(before, after, "TcpExt.ListenOverflows")
    assert inj.fault.stats()["drops"] == 0  # it only observes
    syn = [r for r in records if r.kind == "syn"]
    dropped_syns = sum(r.copies - 1 for r in syn)
    # every dropped SYN is an overflow; an overflow can also be a handshake's final ACK
    # meeting the full queue (the server then retransmits its SYN-ACK instead)
    assert 3 <= dropped_syns <= overflows
    assert delta(before, after, "TcpExt.TCPSynRetrans") >= dropped_syns
    slow = {port for port, secs in times.items() if secs >= 0.9}
    assert {r.sport for r in syn} == slow and len(slow) == 3
    gt = pd.read_parquet(tmp_path / "ground_truth.parquet")
    syn_rows = gt[gt["kind"] == "syn_retransmit"]
    assert set(syn_rows["detail"]) == {"listen_overflow"} and set(syn_rows["sport"]) == slow
