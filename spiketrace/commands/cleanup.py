"""`spiketrace cleanup` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="cleanup")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace cleanup` is not implemented yet")
