"""`spiketrace run` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="run")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace run` is not implemented yet")
