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
                     "params": " ".join(f"{k}={v}" for k, v in sc.params.items())})
    return rows


@click.command(name="scenarios")
@click.option("-v", "--verbose", is_flag=True, help="Also show each scenario's description, "
              "sysctls, bench overrides and parameters.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def command(verbose: bool, as_json: bool):
    """List the fault scenarios `spiketrace run --scenario NAME` reproduces: what each one
    injects and the cause the analysis should name. Every scenario runs in its own network
    namespace, so its sysctls and faults never touch the host.

    \b
    Examples:
      spiketrace scenarios
      spiketrace scenarios -v
      sudo spiketrace run --scenario syn-loss -n 20000
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
            for key in ("sysctls", "server", "client", "params"):
                if r[key]:
                    console.print(f"  [dim]{key}:[/] {r[key]}", highlight=False)
    console.print("\nRun one with: sudo spiketrace run --scenario NAME -n 20000")
