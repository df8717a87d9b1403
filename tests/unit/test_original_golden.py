"""A real recording of the original question, explained from kernel evidence (golden data).

tests/data/original-trace was recorded on the 6.18 development VM: examples/original's server
(listen(1), SO_LINGER {1, 0}, SPIKETRACE_ORIG_THINK_MS=2) in a private network namespace,
`spiketrace trace --port 9999 --netns NS`, and four concurrent examples/original clients of 500
transactions each with SPIKETRACE_ORIG_VERBOSE=1 (clients/client<i>.log: `start duration_s
local_port`). The plain form of each log (the original's output: one duration per line) is its
second column. Every transaction the clients saw take over 100 ms must be a spike, matched to
its kernel connection and explained as a SYN retransmit after an accept-queue overflow.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis import analyse
from analysis.applog import read_app_log
from common.rundir import RunDir

DATA = Path(__file__).resolve().parent.parent / "data" / "original-trace"


def _client_slow(logs):
    """(file name, line, local port) of every line over 0.1 s, as `awk '$2 > 0.1'` finds them."""
    out = []
    for path in logs:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            cols = line.split()
            if n > 1 and float(cols[1]) > 0.1:
                out.append((path.name, n, int(cols[2])))
    return sorted(out)


@pytest.fixture
def run(tmp_path):
    shutil.copytree(DATA, tmp_path / "run", ignore=shutil.ignore_patterns("clients"))
    return RunDir.open(tmp_path / "run")


def test_every_slow_transaction_of_the_clients_is_explained_from_the_kernel(run):
    logs = sorted((DATA / "clients").glob("client*.log"))
    slow = _client_slow(logs)
    assert len(slow) >= 5
    result = analyse(run, app_log=read_app_log(logs))
    expl = result.explanations
    assert len(expl) == len(slow)  # the report's spikes are exactly the clients' slow lines
    txn = result.context.frames.txn
    got = sorted((s.split(":")[0], int(s.split(":")[1]), int(txn.loc[i, "local_port"]))
                 for s, i in zip(expl["source"], expl["txn_id"]))
    assert got == slow  # each matched to the kernel connection of its own port
    assert set(expl["match"]) == {"port"} and (expl["match_distance_ns"] < 2_000_000).all()
    assert set(expl["cause"]) == {"syn_retransmit"} and set(expl["cause_detail"]) == {"listen_overflow"}
    assert (expl["inferred"] == False).all()  # noqa: E712 (a retransmit event for each)
    assert all(len(e) >= 1 for e in expl["evidence_events"])


def test_the_plain_original_output_is_matched_by_order(run, tmp_path):
    """The original client printed only durations: the same lines, matched by order and
    duration, must land on the same connections (a weaker match, said so)."""
    logs = sorted((DATA / "clients").glob("client*.log"))
    plain = []
    for path in logs:
        p = tmp_path / path.name
        p.write_text("".join(line.split()[1] + "\n" for line in path.read_text().splitlines()[1:]))
        plain.append(p)
    by_port = analyse(run, app_log=read_app_log(logs))
    by_order = analyse(RunDir.open(run.path), app_log=read_app_log(plain))
    def key(result, header):
        txn = result.context.frames.txn
        return {(s.split(":")[0], int(s.split(":")[1]) + header, int(txn.loc[i, "local_port"]))
                for s, i in zip(result.explanations["source"], result.explanations["txn_id"])}

    assert key(by_order, 1) == key(by_port, 0)  # the plain files have no header line
    assert set(by_order.explanations["match"]) == {"order"}
    assert set(by_order.explanations["cause"]) == {"syn_retransmit"}


def test_without_the_application_log_the_kernel_connections_are_the_spikes(run):
    result = analyse(run)
    expl = result.explanations
    logs = sorted((DATA / "clients").glob("client*.log"))
    assert sorted(expl["local_port"]) == sorted(p for _, _, p in _client_slow(logs))
    assert set(expl["cause"]) == {"syn_retransmit"}
    tr = result.summary["trace"]
    assert tr["connections_counted"] == 4000 and tr["connections_sent"] == len(expl)
    # log2 buckets as the kernel counts them: the slowest connect (2.04 s, two SYN retransmits)
    # lies in the max bucket's range, the median connect (tens of us) in the p50 one
    connect = {h["name"]: h for h in tr["histograms"]}["connect_ns"]
    k = result.context.frames.kernel
    slowest = (k["t_established"] - k["t_open"]).max() / 1e6
    assert connect["max_ms"][0] <= slowest < connect["max_ms"][1]
    assert connect["p50_ms"][1] < 0.1
