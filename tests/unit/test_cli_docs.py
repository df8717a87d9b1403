"""Every command is documented: `--help` works without root or BCC, and shows an Examples block
whose lines are real invocations of that command."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from spiketrace.cli import COMMANDS, cli


def help_text(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def examples(text: str):
    lines = text.splitlines()
    assert any(line.strip() == "Examples:" for line in lines), text
    start = next(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    block = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


def test_group_help_lists_every_command():
    text = help_text()
    for name in COMMANDS:
        assert name in text
    assert examples(text)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_help_has_examples(name):
    block = examples(help_text(name))
    assert block, f"`spiketrace {name} --help` has an empty Examples block"
    own = [line for line in block if f"spiketrace {name}" in line]
    assert own, f"no example in `spiketrace {name} --help` runs `spiketrace {name}`: {block}"


def subcommands():
    """(group, sub) for commands that are groups themselves (e.g. `bench server`)."""
    import importlib

    import click

    pairs = []
    for name, (module, _) in COMMANDS.items():
        try:
            cmd = importlib.import_module(f"spiketrace.commands.{module}").command
        except Exception:  # a broken module fails test_command_help_has_examples already
            continue
        if isinstance(cmd, click.Group):
            pairs += [(name, sub) for sub in cmd.list_commands(click.Context(cmd))]
    return pairs


def test_subcommand_help_has_examples():
    # one test, not parametrized: an empty parameter list would be a skip, a failure under CI
    for group, sub in subcommands():
        block = examples(help_text(group, sub))
        assert any(f"spiketrace {group} {sub}" in line for line in block), (group, sub, block)
