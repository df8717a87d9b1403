"""Fixtures of the BPF tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def private_state_dir(tmp_path, monkeypatch):
    """Keep the state files of what a test creates (namespaces, tc filters, cgroups) in its own
    directory, so `cleanup_leftovers` in one test never sees another's."""
    monkeypatch.setenv("SPIKETRACE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"
