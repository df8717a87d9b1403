"""`spiketrace bench` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="bench")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace bench` is not implemented yet")
