"""`spiketrace report` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="report")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace report` is not implemented yet")
