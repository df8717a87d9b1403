"""`spiketrace trace` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="trace")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace trace` is not implemented yet")
