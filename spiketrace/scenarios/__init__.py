"""The scenario registry: reproducible spikes, each with the cause the analysis should name.

    ns = Namespace.create(default_netns_name(sc.name), sc.sysctls)
    inj = sc.setup(ns, run_dir)            # install the fault
    ... start the server / clients with sc.server_overrides / sc.client_overrides,
        call inj.add_pids(pids, "server" | "client") as they start ...
    inj.teardown()                          # remove it, write ground_truth.parquet

Importing this package is cheap: BCC is imported only when a BPF injector is installed.
"""
from __future__ import annotations

from typing import Dict, List

from common.errors import SpikeTraceError
from spiketrace.scenarios.base import Injection, Scenario, write_ground_truth
from spiketrace.scenarios.config import NagleDelayedAck, PortExhaustion
from spiketrace.scenarios.cpuhog import CpuContention
from spiketrace.scenarios.legacy_rto import LegacyRto
from spiketrace.scenarios.tcfault import DataLoss, ListenOverflowObserver, SynLoss

__all__ = ["SCENARIOS", "Scenario", "Injection", "get_scenario", "write_ground_truth",
           "advice_without_spikes"]

_DROP = {"drop_every": 100, "drop_fraction": 0.0, "seed": 0}

_LIST = [
    Scenario(
        name="seed",
        description="The question's setup: listen(1), SO_LINGER {1,0} on the server, one "
                    "serial client. Nothing is injected; whatever spikes appear are the seed's own.",
        injects="nothing",
        expected_cause="",
        n=100_000,
        no_spike_hint="one serial client never has more than one connection waiting for "
                      "accept(), and a listen(1) queue holds 2 (backlog + 1), so no SYN is dropped "
                      "on this kernel. The original question's spikes are SYNs dropped by a full "
                      "accept queue and retransmitted after the initial RTO; six clients against "
                      "the same server overflow it",
    ),
    Scenario(
        name="listen-overflow",
        description="listen(1) and 6 concurrent clients against the single-threaded server: "
                    "the accept queue (2 slots) overflows now and then (a few times a second), "
                    "the kernel drops the SYN silently and the client retransmits it after the "
                    "1 s initial RTO. A tc classifier only observes SYNs and records each one "
                    "seen twice.",
        injects="backlog 1 + 6 clients (tc observer, no drops)",
        expected_cause="syn_retransmit",
        expected_detail="listen_overflow",
        server_overrides={"backlog": 1},
        client_overrides={"concurrency": 6},
        injection_class=ListenOverflowObserver,
        n=20_000,
    ),
    Scenario(
        name="syn-loss",
        description="A tc BPF classifier on the namespace's lo drops the first SYN of every "
                    "100th connection (params drop_every, or drop_fraction + seed): each costs "
                    "the 1 s initial SYN RTO.",
        injects="tc drop of the first SYN of chosen connections",
        expected_cause="syn_retransmit",
        expected_detail="drop",
        params=dict(_DROP),
        injection_class=SynLoss,
        n=4_000,  # 40 dropped SYNs, 1 s each: the serial client spends ~40 s waiting
    ),
    Scenario(
        name="legacy-rto",
        description="syn-loss plus a sock_ops program on the clients' cgroup that sets the "
                    "initial RTO to 3 s, as on CentOS 5's 2.6.18 (and tcp_syn_linear_timeouts=0 "
                    "so later retransmits back off 3, 6, 12 s): each dropped SYN costs 3 s.",
        injects="tc SYN drop + sock_ops initial RTO 3 s",
        expected_cause="syn_retransmit",
        expected_detail="drop+legacy_rto",
        sysctls={"net.ipv4.tcp_syn_linear_timeouts": "0"},
        params={**_DROP, "rto_ms": 3000.0, "server_too": False},
        injection_class=LegacyRto,
        n=1_000,  # 10 dropped SYNs, 3 s each: ~30 s of waiting
    ),
    Scenario(
        name="port-exhaustion",
        description="Only 100 local ports (40000-40099) and a TIME_WAIT port reusable by "
                    "connect() only after 1 s (tcp_tw_reuse=1, tcp_tw_reuse_delay=1000): "
                    "connect() fails with EADDRNOTAVAIL and the client retries for up to ~1 s "
                    "every 100 connections. The server runs without SO_LINGER: with linger "
                    "{1,0} its RST would end the client's FIN_WAIT2 and no TIME_WAIT would "
                    "ever hold a port.",
        injects="ip_local_port_range 40000 40099, TIME_WAIT reuse after 1 s, no linger",
        expected_cause="port_exhaustion",
        sysctls={"net.ipv4.ip_local_port_range": "40000 40099",
                 "net.ipv4.tcp_tw_reuse": "1",
                 "net.ipv4.tcp_tw_reuse_delay": "1000"},
        server_overrides={"linger": False},
        client_overrides={"connect_retry": "busy"},
        injection_class=PortExhaustion,
        n=3_000,  # 100 ports: ~30 exhaustions of up to ~1 s each
    ),
    Scenario(
        name="cpu-contention",
        description="A SCHED_FIFO busy loop hogs one CPU for 150 ms every 500 ms (first burst "
                    "after 200 ms); the server and clients are pinned to that CPU, so their "
                    "threads wait runnable.",
        injects="CPU hog bursts on the bench's CPU",
        expected_cause="runq_delay",
        params={"cpu": None, "hogs": 1, "start_delay_ms": 200.0, "burst_ms": 150.0, "period_ms": 500.0,
                "duration_s": 3600.0, "policy": "fifo", "pin": "both"},
        injection_class=CpuContention,
        n=100_000,  # ~9 s of load: ~18 bursts of the hog
    ),
    Scenario(
        name="nagle-delack",
        description="The client writes each 3,000-byte request in two parts without "
                    "TCP_NODELAY: Nagle holds the second part until the first is ACKed, and "
                    "the server delays that ACK (>= 40 ms).",
        injects="client split writes, Nagle on",
        expected_cause="delayed_ack",
        client_overrides={"split_writes": True, "nodelay": False},
        injection_class=NagleDelayedAck,
        n=800,  # ~45 ms per transaction
        # every transaction stalls, so the stall *is* the median: no relative test, and a
        # threshold under the 40 ms minimum delayed ACK
        analysis={"threshold_ms": 30.0, "relative": 0.0},
    ),
    Scenario(
        name="data-loss",
        description="A tc BPF classifier drops the first data segment (client to server) of "
                    "every 50th connection: the client retransmits it after a tail loss probe "
                    "or the RTO (>= 200 ms).",
        injects="tc drop of the first data segment of chosen connections",
        expected_cause="data_retransmit",
        expected_detail="drop",
        params={**_DROP, "drop_every": 50},
        injection_class=DataLoss,
        n=8_000,  # 160 dropped segments, 200-400 ms each
    ),
]

SCENARIOS: Dict[str, Scenario] = {sc.name: sc for sc in _LIST}


def get_scenario(name: str) -> Scenario:
    """The scenario called `name`, or a SpikeTraceError listing the known ones."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise SpikeTraceError(
            f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)} "
            "(see `spiketrace scenarios`)") from None


ORIGINAL_SPIKES = "listen-overflow"  # the scenario that shows the original question's spikes


def advice_without_spikes(meta) -> List[str]:
    """What to say after a run of the bench with no spike (`meta`: common.meta.Meta): why none,
    for the scenario it ran, and the one command that shows spikes explained."""
    if meta.kind == "trace":
        return []
    shows = SCENARIOS[ORIGINAL_SPIKES]
    sc = SCENARIOS.get(meta.scenario)
    client, server = meta.params.client, meta.params.server
    serial_seed = (sc is not None and sc.name == "seed" and (client is None or client.concurrency == 1)
                   and (server is None or server.backlog == 1))
    if serial_seed:
        return [f"Why no spike: {sc.no_spike_hint}.",
                f"To see the original spikes explained: {shows.suggested_command()}"]
    if sc is not None and sc.expected_cause:
        return [f"Scenario {sc.name} injects {sc.injects} and should show {sc.expected_cause} spikes; "
                "none passed the spike rule in this run (see the warnings above).",
                f"Its suggested run: {sc.suggested_command()}"]
    return [f"To see spikes explained: {shows.suggested_command()} (or any of `spiketrace scenarios`)"]
