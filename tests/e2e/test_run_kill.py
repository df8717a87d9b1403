"""Killing `spiketrace run` (Ctrl-C or SIGKILL) loses no completed transaction, and what a
SIGKILL leaves behind is removed by `spiketrace cleanup`."""
from __future__ import annotations

import signal

import pytest

from tests.e2e.killing import kill_one

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


@pytest.mark.parametrize("sig,after_s", [(signal.SIGINT, 1.5), (signal.SIGKILL, 1.0), (signal.SIGKILL, 2.5)])
def test_killed_run_keeps_its_transactions_and_leaves_nothing(sig, after_s, tmp_path):
    result = kill_one(tmp_path / "run", sig, after_s)
    assert result.client_rows > 100, result  # the load really ran before the kill
    assert result.missing == 0, result
    if sig == signal.SIGINT:
        assert result.leftovers_before_cleanup == [], "Ctrl-C must clean up by itself"
    assert result.leftovers_after_cleanup == [], result
