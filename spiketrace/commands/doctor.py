"""`spiketrace doctor`: what this machine can trace, what is missing, and the command that
fixes each missing piece. The checks live in tracer.host (`collect()` -> `Report`); this module
renders them."""
from __future__ import annotations

import json
from typing import List, Optional

import click

from tracer.host import Report, collect


# -- rendering ---------------------------------------------------------------------------------
_MARK = {True: "[green]ok[/]", None: "[yellow]~[/]", False: "[red]NO[/]"}


def render(report: Report, console) -> None:
    """Two tables, then each fix command on a line of its own, never wrapped or cut (a command
    split mid-word cannot be pasted): the table's fix column only points at it."""
    from rich.markup import escape
    from rich.table import Table

    fixes: List[str] = []

    def ref(name: str, fix: str) -> str:
        if not fix:
            return ""
        fixes.append(f"[{len(fixes) + 1}] {name}: {fix}")
        return f"see [{len(fixes)}]"

    def table(title: str, columns: List[str], rows: List[List[str]]) -> Table:
        with_fix = any(row[-1] for row in rows)  # no empty "fix" column when all is well
        t = Table(title=title, title_justify="left")
        for col in columns if with_fix else columns[:-1]:
            t.add_column(col, overflow="fold", no_wrap=col == "fix")
        for row in rows:
            t.add_row(*(row if with_fix else row[:-1]))
        return t

    def label(name: str, required: bool, ok: Optional[bool]) -> str:
        # "(optional)" only where it explains why a gap does not make the machine unready
        return name if required or ok is True else f"{name} [dim](optional)[/]"

    console.print(table("System", ["", "check", "state", "fix"], [
        [_MARK[c.ok], label(c.name, c.required, c.ok), escape(c.value), ref(c.name, c.fix)]
        for c in report.system]))
    console.print(table("Probes (evidence -> how it is captured here)",
                        ["", "evidence", "backend", "detail", "fix"], [
        [_MARK[p.ok], label(p.evidence, p.required, p.ok), p.backend,
         escape(p.detail) + (f"\n[dim]not {escape(p.why)}[/]" if p.why else ""), ref(p.evidence, p.fix)]
        for p in report.probes]))
    if fixes:
        console.print("Fixes:")
        for line in fixes:
            console.print(escape(line), soft_wrap=True, highlight=False)
    if report.problems:
        console.print(f"[red]Not ready:[/] {', '.join(report.problems)}. "
                      "Run the fix commands above, then `spiketrace doctor` again.")
    else:
        console.print("[green]Ready:[/] everything `spiketrace run` and `spiketrace trace` need "
                      "works here.")


@click.command(name="doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def command(ctx, as_json):
    """Check what this machine can trace: kernel, root, BCC, kernel headers, tracefs, BTF, HZ,
    cgroup v2, the BPF ring buffer, and for every probe of the tracer whether it attaches here
    and how (tracepoint, kprobe, inferred, unavailable). Each missing piece comes with the
    command that fixes it. Exits 0 when everything needed works, 1 otherwise.

    \b
    Examples:
      sudo spiketrace doctor          # the full picture
      spiketrace doctor               # without root: what it can see, and that root is missing
      spiketrace doctor --json | jq .problems
    """
    report = collect()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console

        render(report, Console())
    ctx.exit(1 if report.problems else 0)
