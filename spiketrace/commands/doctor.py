"""`spiketrace doctor` (not implemented yet)."""
import click

from spiketrace.errors import SpikeTraceError


@click.command(name="doctor")
def command():
    """Not implemented yet."""
    raise SpikeTraceError("`spiketrace doctor` is not implemented yet")
