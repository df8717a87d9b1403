"""The original question's scripts traced with `spiketrace trace` on this kernel:
tests/e2e/test_original_app.py with fewer transactions per client (its slow lines are over
100 ms, and those of the SYN timer's length must be listen overflows: no finer timing). The
server thinks 5 ms per connection instead of 2, so that 100 transactions per client still
overflow its one-slot accept queue more than at start-up."""
from __future__ import annotations

import pytest

import tests.e2e.test_original_app as host
from tests.kernels.sizes import size

pytestmark = [pytest.mark.bpf, pytest.mark.kernel_guest]


def test_original_clients_slow_transactions_are_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "PER_CLIENT", size("ORIG_PER_CLIENT", 100))
    monkeypatch.setattr(host, "THINK_MS", str(size("ORIG_THINK_MS", 5)))
    host.test_original_clients_slow_transactions_are_explained(tmp_path)
