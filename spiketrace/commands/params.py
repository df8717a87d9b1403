"""Click parameter types shared by every command: one syntax for durations and numbers, and
every value checked (finite, in range) while the command line is parsed, so a bad value is one
line before any namespace, BPF program or file exists.

    @click.option("--threshold", type=Duration("ms", lo=0), default="100ms")   # -> float ms
    @click.option("-d", "--duration", type=Duration("s", lo=0, lo_open=True))  # -> float s
    @click.option("--rate", type=Number(lo=0, lo_open=True, hi=1e6))

A bare number is in the option's unit, so the old spellings (`--threshold 100`,
`--duration 60`) keep working; `100ms`, `1.5s`, `250us`, `2m`, `1h` work everywhere.
"""
from __future__ import annotations

from typing import Optional

import click

from common.errors import SpikeTraceError
from common.text import check_range, parse_duration, parse_number, printable

DAY_S = 86400.0
YEAR_S = 366 * DAY_S


class Duration(click.ParamType):
    """A duration, converted to a float in `unit` ("ms" or "s"), within [lo, hi]."""

    name = "duration"

    def __init__(self, unit: str = "ms", lo: Optional[float] = 0.0, hi: Optional[float] = None,
                 lo_open: bool = False):
        self.unit, self.lo, self.hi, self.lo_open = unit, lo, hi, lo_open
        if hi is None:  # a day: longer thresholds or waits are typos
            self.hi = DAY_S * (1000.0 if unit == "ms" else 1.0)

    def get_metavar(self, param, ctx=None) -> str:
        return "DURATION"

    def convert(self, value, param, ctx):
        what = _name(param)
        try:
            number = parse_duration(value, self.unit, what=what)
            return check_range(number, what, self.lo, self.hi, self.lo_open, unit=self.unit)
        except SpikeTraceError as exc:
            self.fail(_strip(str(exc), what), param, ctx)


class Number(click.ParamType):
    """A finite float within [lo, hi] (lo excluded if `lo_open`)."""

    name = "number"

    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, unit: str = ""):
        self.lo, self.hi, self.lo_open, self.unit = lo, hi, lo_open, unit

    def convert(self, value, param, ctx):
        what = _name(param)
        try:
            number = value if isinstance(value, float) else parse_number(value, what)
            return check_range(number, what, self.lo, self.hi, self.lo_open, unit=self.unit)
        except SpikeTraceError as exc:
            self.fail(_strip(str(exc), what), param, ctx)


class Relative(click.ParamType):
    """`10x` or `10` (times the median latency); 0 disables the test."""

    name = "relative"

    def get_metavar(self, param, ctx=None) -> str:
        return "Nx"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        what = _name(param)
        try:
            if text.endswith(("x", "X")):
                text = text[:-1]
            number = parse_number(text, what)
            return check_range(number, what, 0.0, 1e6)
        except SpikeTraceError as exc:
            self.fail(_strip(str(exc), what) + " (examples: 10x, 5x, 0 to disable)", param, ctx)


class Percentile(click.ParamType):
    """`99.9` or `p99.9` (strictly between 0 and 100); `off`/`none` -> None."""

    name = "percentile"

    def get_metavar(self, param, ctx=None) -> str:
        return "P"

    def convert(self, value, param, ctx):
        if value is None or str(value).strip().lower() in ("", "none", "off"):
            return None
        text = str(value).strip()
        what = _name(param)
        try:
            number = parse_number(text[1:] if text[:1] in "pP" else text, what)
            if not 0 < number < 100:
                raise SpikeTraceError(f"{what}: {number:g} is not strictly between 0 and 100")
            return number
        except SpikeTraceError as exc:
            self.fail(_strip(str(exc), what) + " (examples: 99.9, p99)", param, ctx)


class Formats(click.ParamType):
    """A comma-separated, non-empty list of names out of `choices` -> a list."""

    name = "formats"

    def __init__(self, choices):
        self.choices = tuple(choices)

    def get_metavar(self, param, ctx=None) -> str:
        return "LIST"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        names = [f.strip().lower() for f in str(value).split(",") if f.strip()]
        if not names:
            self.fail(f"give at least one of {', '.join(self.choices)}", param, ctx)
        bad = [n for n in names if n not in self.choices]
        if bad:
            self.fail(f"unknown format {', '.join(printable(b) for b in bad)} "
                      f"(choose from {', '.join(self.choices)})", param, ctx)
        return list(dict.fromkeys(names))


def _name(param) -> str:
    if param is None:
        return "value"
    opts = sorted(getattr(param, "opts", []) or [], key=len)
    return opts[-1] if opts else str(param.name)


def _strip(message: str, what: str) -> str:
    """click names the option itself ("Invalid value for '--x': ..."): no second name."""
    prefix = f"{what}: "
    return message[len(prefix):] if message.startswith(prefix) else message
