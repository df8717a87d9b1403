"""`spiketrace cleanup`: remove what a run killed outright (SIGKILL, power loss of the
terminal) left behind -- network namespaces, tc filters, cgroups with sock_ops programs,
child processes -- as recorded in its state file. Runs still alive are never touched."""
from __future__ import annotations

import click


@click.command(name="cleanup")
def command():
    """Remove network namespaces, tc filters, cgroups (with their sock_ops programs) and
    processes left by spiketrace runs that died without cleaning up.

    Only resources recorded in a state file (/run/spiketrace/state-PID.json) whose owner
    process is gone are removed; processes are killed by their recorded pid, and only if
    they are still the same process. Namespaces named spiketrace-*-PID whose PID is gone
    are removed too.

    \b
    Examples:
      sudo spiketrace cleanup
    """
    from common.errors import require_root
    from common.leftovers import cleanup_leftovers

    require_root("spiketrace cleanup")
    warnings = []
    removed = cleanup_leftovers(on_warning=warnings.append)
    for line in removed:
        click.echo(f"removed {line}")
    for line in warnings:
        click.echo(f"warning: {line}", err=True)
    if not removed:
        click.echo("nothing to clean up")
