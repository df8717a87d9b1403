"""The click group. Each subcommand lives in its own module under `spiketrace/commands/` and is
imported only when it runs, so `spiketrace report` never imports BCC and `--help` is fast."""
from __future__ import annotations

import importlib
import sys

import click

from spiketrace import __version__
from common.errors import SpikeTraceError
from common.text import printable

# command name -> (module under spiketrace.commands, one-line help shown by `spiketrace --help`)
COMMANDS = {
    "run": ("run", "Run the echo bench under the tracer, then explain and report its spikes."),
    "trace": ("trace", "Trace an existing application's TCP traffic (daemon) into a run directory."),
    "report": ("report", "Analyse a run directory and write its reports (no root needed)."),
    "explain": ("explain", "Show the full timeline of one transaction of a run."),
    "bench": ("bench", "The echo benchmark on its own: server and client."),
    "doctor": ("doctor", "What this kernel can trace, what is missing and how to fix it."),
    "scenarios": ("scenarios", "List the fault scenarios `run --scenario` can reproduce."),
    "cleanup": ("cleanup", "Remove namespaces, filters and processes left by a killed run."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"spiketrace.commands.{COMMANDS[name][0]}")
        return module.command

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spiketrace")
def cli():
    """Reproduce and explain latency spikes of TCP workloads that open a connection per
    transaction.

    \b
    Examples:
      sudo spiketrace run --scenario listen-overflow -n 20000   # the original's spikes, explained
      sudo spiketrace run -n 100000              # the original workload: bench + trace + explain
      sudo spiketrace run --scenario syn-loss    # each scenario has its own -n (spiketrace scenarios)
      sudo spiketrace trace --port 9999          # watch your own application
      spiketrace report runs/20261126T140000Z-seed
      spiketrace doctor
    """


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv=None):
    """Console entry point: user errors become one line on stderr and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="spiketrace", standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # a bad option or value: one line, like every other error
        if isinstance(exc, _NO_ARGS_IS_HELP):  # `spiketrace` alone: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if exc.ctx is not None else "spiketrace"
        message = exc.format_message()
        click.echo(f"spiketrace: {printable(message[:1].lower() + message[1:], newlines=False)} "
                   f"(see `{where} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except SpikeTraceError as exc:
        click.echo(f"spiketrace: {printable(exc, newlines=False)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
