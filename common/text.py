"""The user's spellings of numbers and durations, and text made safe for a terminal.

One duration syntax for every command and the library: `100ms`, `1.5s`, `250us`, `2m`, `1h`, or
`7d`, or a bare number in the option's own unit (`--threshold 100` = 100 ms, `--duration 60` = 60 s, as
before). NaN, infinity and values out of range are refused with one line, before anything runs.

`printable()` replaces control characters (ESC, BEL, CR, ...) with visible escapes: strings
from a run directory (process names, paths, notes) never drive the terminal.
"""
from __future__ import annotations

import math
import re
from typing import Optional

from common.errors import SpikeTraceError

# unit -> seconds
UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0,
           "h": 3600.0, "d": 86400.0}
_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_DURATION = re.compile(rf"\s*({_NUMBER})\s*(ns|us|µs|ms|s|min|m|h|d)?\s*")
EXAMPLES = "examples: 100ms, 1.5s, 250us, 2m"


def parse_number(text, what: str = "value") -> float:
    """A finite decimal number (`3`, `0.5`, `2e3`); NaN and infinity are refused."""
    m = re.fullmatch(rf"\s*({_NUMBER})\s*", str(text))
    if not m:
        raise SpikeTraceError(f"{what}: '{printable(text)}' is not a number")
    return _finite(float(m.group(1)), text, what)


def parse_duration(text, unit: str = "ms", what: str = "duration") -> float:
    """`100ms`, `1.5s`, `250us`, `2m`, `1h` or a bare number of `unit` -> a float in `unit`."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _finite(float(text), text, what)
    m = _DURATION.fullmatch(str(text))
    if not m:
        raise SpikeTraceError(f"{what}: '{printable(text)}' is not a duration ({EXAMPLES}; "
                              f"a bare number is in {unit})")
    value = _finite(float(m.group(1)), text, what)
    given = m.group(2) or unit
    return value * UNITS_S[given] / UNITS_S[unit]


def _finite(value: float, text, what: str) -> float:
    if not math.isfinite(value):
        raise SpikeTraceError(f"{what}: '{printable(text)}' is not a finite number")
    return value


def check_range(value: float, what: str, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False, unit: str = "") -> float:
    """`value` within [lo, hi] (lo excluded if `lo_open`), else one line saying the range."""
    u = (unit if unit.startswith("/") else f" {unit}") if unit else ""
    if not math.isfinite(value):
        raise SpikeTraceError(f"{what}: {value} is not a finite number")
    if lo is not None and (value <= lo if lo_open else value < lo):
        bound = "more than" if lo_open else "at least"
        raise SpikeTraceError(f"{what}: {_num(value)}{u} is too small (it must be {bound} {_num(lo)}{u})")
    if hi is not None and value > hi:
        raise SpikeTraceError(f"{what}: {_num(value)}{u} is too large (at most {_num(hi)}{u})")
    return value


def _num(value: float) -> str:
    return f"{value:,.10g}" if abs(value) < 1e15 else f"{value:g}"


# C0 controls but tab and newline, DEL, and the C1 controls (U+0080-U+009F: CSI is U+009B)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value, newlines: bool = True) -> str:
    """`value` as text with every control character shown as an escape (`\\x1b`), so it prints
    as what it is and cannot move the cursor, recolour or retitle a terminal. With
    `newlines=False` newlines and tabs are escaped too (one-line fields)."""
    text = str(value)
    pattern = _CONTROL if newlines else re.compile(r"[\x00-\x1f\x7f-\x9f]")
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
