"""`spiketrace explain` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="explain")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace explain` is not implemented yet")
