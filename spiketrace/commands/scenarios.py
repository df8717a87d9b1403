"""`spiketrace scenarios`: the fault scenarios `run --scenario` can reproduce, as a table."""
from __future__ import annotations

from typing import Dict, List

import click


def scenario_rows() -> List[Dict[str, str]]:
    """One dict per scenario: the data behind the table (and `--json`)."""
    from spiketrace.scenarios import SCENARIOS

    rows = []
    for sc in SCENARIOS.values():
        cause = sc.expected_cause or "-"
        if sc.expected_detail:
            cause += f" ({sc.expected_detail})"
        rows.append({"name": sc.name, "injects": sc.injects, "expected_cause": cause,
                     "description": sc.description,
                     "sysctls": " ".join(f"{k}={v!r}" if " " in v else f"{k}={v}"
                                         for k, v in sc.sysctls.items()),
                     "server": " ".join(f"{k}={v}" for k, v in sc.server_overrides.items()),
                     "client": " ".join(f"{k}={v}" for k, v in sc.client_overrides.items()),
                     "params": " ".join(f"{k}={v}" for k, v in sc.params.items()),
                     "n": sc.n, "command": sc.suggested_command(),
                     "spike_rule": " ".join(f"{k}={v:g}" for k, v in sc.analysis.items())})
    return rows


@click.command(name="scenarios")
@click.option("-v", "--verbose", is_flag=True, help="Also show each scenario's description, "
              "sysctls, bench overrides and parameters.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def command(verbose: bool, as_json: bool):
    """List the fault scenarios `spiketrace run --scenario NAME` reproduces: what each one
    injects and the cause the analysis should name, and the command that shows its spikes
    explained in about a minute (the scenario sets its own -n and the spike rule it needs).
    Every scenario runs in its own network namespace, so its sysctls and faults never touch the
    host.

    \b
    Examples:
      spiketrace scenarios
      spiketrace scenarios -v
      sudo spiketrace run --scenario syn-loss        # its suggested -n
    """
    rows = scenario_rows()
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="spiketrace scenarios")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("injects")
    table.add_column("expected cause", style="green")
    for r in rows:
        table.add_row(r["name"], r["injects"], r["expected_cause"])
    console = Console()
    console.print(table)
    if verbose:
        for r in rows:
            console.print(f"\n[bold cyan]{r['name']}[/]  expected cause: [green]{r['expected_cause']}[/]")
            console.print(f"  {r['description']}", highlight=False)
            for key in ("sysctls", "server", "client", "params", "spike_rule"):
                if r[key]:
                    console.print(f"  [dim]{key.replace('_', ' ')}:[/] {r[key]}", highlight=False)
    console.print("\nSuggested runs (each about a minute on a 2-core VM, its spikes explained):")
    for r in rows:  # one line each, never wrapped: commands are copied
        note = "   # nothing injected, one serial client: no spike here" if r["name"] == "seed" else ""
        console.print(f"  {r['command']}{note}", soft_wrap=True, highlight=False, markup=False)
