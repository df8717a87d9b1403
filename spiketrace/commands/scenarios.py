"""`spiketrace scenarios` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="scenarios")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace scenarios` is not implemented yet")
