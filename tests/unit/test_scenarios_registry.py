"""The scenario registry as data: names, causes, overrides that the bench accepts, sysctl
names, parameters; and `spiketrace scenarios`. No root needed."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
from click.testing import CliRunner

from common.errors import SpikeTraceError
from spiketrace.scenarios import SCENARIOS, get_scenario

def test_every_scenario_is_described_documented_and_run_end_to_end():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    e2e = (root / "tests" / "e2e" / "test_run_scenarios.py").read_text()
    readme = (root / "README.md").read_text()
    for name, sc in SCENARIOS.items():
        assert sc.name == name and sc.description and sc.injects
        assert f'"{name}": (' in e2e, f"scenario {name} has no end-to-end run"
        assert f"`{name}`" in readme, f"scenario {name} is not in README's command table"


def test_expected_causes_are_known_to_the_analysis():
    from analysis.context import CAUSES

    for sc in SCENARIOS.values():
        if sc.name == "seed":
            assert sc.expected_cause == ""  # the seed has no fault of its own
        else:
            assert sc.expected_cause in CAUSES, sc.name


def test_overrides_are_bench_option_fields():
    server = pytest.importorskip("bench.server")
    client = pytest.importorskip("bench.client")
    server_fields = {f.name for f in dataclasses.fields(server.ServerOptions)}
    client_fields = {f.name for f in dataclasses.fields(client.ClientOptions)}
    for sc in SCENARIOS.values():
        assert set(sc.server_overrides) <= server_fields, sc.name
        assert set(sc.client_overrides) <= client_fields, sc.name
        # and the bench accepts the values
        server.ServerOptions(**sc.server_overrides).validate()
        client.ClientOptions(**sc.client_overrides).validate()


def test_sysctls_are_net_names_with_string_values():
    for sc in SCENARIOS.values():
        for key, value in sc.sysctls.items():
            assert re.fullmatch(r"net\.ipv4\.[a-z_]+", key) and isinstance(value, str)


def test_port_exhaustion_turns_linger_off():
    """With SO_LINGER {1,0} the server's RST ends the client's FIN_WAIT2: no TIME_WAIT."""
    assert SCENARIOS["port-exhaustion"].server_overrides["linger"] is False


def test_unknown_scenario_and_parameter_are_user_errors(tmp_path):
    with pytest.raises(SpikeTraceError, match="unknown scenario 'nope'.*syn-loss"):
        get_scenario("nope")
    with pytest.raises(SpikeTraceError, match="no parameter drop_evrey.*drop_every"):
        SCENARIOS["syn-loss"].setup(None, tmp_path, drop_evrey=3)


def test_scenarios_command_lists_all(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at 80 columns without a terminal
    from spiketrace.commands.scenarios import command

    res = CliRunner().invoke(command, [], terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in SCENARIOS:
        assert name in res.output
    assert "syn_retransmit (drop+legacy_rto)" in res.output
    res = CliRunner().invoke(command, ["--json"])
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == list(SCENARIOS)
    assert rows[4]["sysctls"].startswith("net.ipv4.ip_local_port_range='40000 40099'")
    res = CliRunner().invoke(command, ["-v"], terminal_width=200)
    assert "tcp_tw_reuse_delay=1000" in res.output
