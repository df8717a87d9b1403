"""`spiketrace run` of the syn-loss and listen-overflow scenarios on this kernel, scored by
their own ground truth (precision and recall 1.0): tests/e2e/test_run_scenarios.py with fewer
transactions, a longer time limit and a 500 ms spike threshold, since a TCG guest's ordinary
transactions can take over 100 ms while every injected fault costs the 1 s initial RTO."""
from __future__ import annotations

import functools

import pytest

import tests.e2e.test_run_scenarios as host
from tests.kernels.sizes import size

pytestmark = [pytest.mark.bpf, pytest.mark.kernel_guest]

TRANSACTIONS = {"syn-loss": size("SYN_LOSS_N", 200), "listen-overflow": size("LISTEN_OVERFLOW_N", 300)}
# listen-overflow's 6 client processes do not all start within the bench's fixed 60 s in a TCG
# guest (bench/client.py _wait_ready); 3 still overflow a backlog of 1 (it holds 2)
CLIENTS = {"listen-overflow": ["-c", str(size("LISTEN_OVERFLOW_CLIENTS", 3))]}
RUN_TIMEOUT_S = size("RUN_TIMEOUT_S", 600)


@pytest.mark.parametrize("scenario", [pytest.param(s, marks=pytest.mark.km_e2e(s)) for s in TRANSACTIONS])
def test_scenario_runs_and_explains_its_spikes(scenario, tmp_path, monkeypatch):
    _args, cause = host.CASES[scenario]
    monkeypatch.setitem(host.CASES, scenario,
                        (["-n", str(TRANSACTIONS[scenario]), "--threshold", "500ms",
                          *CLIENTS.get(scenario, [])], cause))
    monkeypatch.setattr(host, "spiketrace", functools.partial(host.spiketrace, timeout=RUN_TIMEOUT_S))
    host.test_scenario_runs_and_explains_its_spikes(scenario, tmp_path)
