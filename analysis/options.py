"""Analysis options and the parsers for the user's spellings of them (`100ms`, `10x`, `p99.9`)."""
from __future__ import annotations

import dataclasses
import re
from typing import Optional, Sequence

from common.errors import SpikeTraceError
from common.text import check_range, parse_duration, parse_number
from common.vocab import fmt_ms


@dataclasses.dataclass
class AnalysisOptions:
    """What counts as a spike and how evidence is joined.

    A transaction is a spike when its latency passes *every* enabled test: at least
    `threshold_ms` (0 disables), more than `relative` x the median (0 disables), and above the
    `percentile` (None disables). The absolute floor keeps a 2 ms blip on a 0.2 ms loopback
    median from counting; the relative test keeps a 120 ms transaction on a 100 ms WAN median
    from counting.
    """

    threshold_ms: float = 100.0
    relative: float = 10.0  # x median latency; 0 disables
    percentile: Optional[float] = None  # e.g. 99.9; None disables
    match_slack_ms: float = 1.0  # an event may fall this far outside [t_start, t_end]
    min_cause_ms: float = 5.0  # a cause must account for at least this much latency
    min_explained: float = 0.5  # causes must cover this share of the excess over the median
    only_ids: Optional[Sequence[int]] = None  # explain these transactions whatever their latency
    match_window_ms: float = 100.0  # application log: how far its times may be from the kernel's
    include_idle: bool = False  # connections that carried no request are spikes too (`--idle`)

    def describe(self) -> str:
        parts = []
        if self.threshold_ms > 0:
            parts.append(f">= {fmt_ms(self.threshold_ms)}")
        if self.relative > 0:
            parts.append(f"> {self.relative:g}x median")
        if self.percentile is not None:
            parts.append(f"> p{self.percentile:g}")
        return " and ".join(parts) if parts else "every transaction"


def parse_duration_ms(text: str) -> float:
    """`100ms`, `1s`, `250us`, `0.1s` or a bare number of milliseconds -> milliseconds, the
    syntax of every command (common.text); negative, NaN and infinite values are refused."""
    try:
        # at most a year: beyond, a duration is a typo (and its ns would leave int64 behind)
        return check_range(parse_duration(text, "ms"), "duration", 0.0, 366 * 86_400_000.0, unit="ms")
    except SpikeTraceError as exc:
        raise SpikeTraceError(f"invalid {exc}") from None


def parse_relative(text: str) -> float:
    """`10x` or `10` -> 10.0 (times the median latency); `0` disables the test."""
    m = re.fullmatch(r"\s*(\S+?)\s*[xX]?\s*", str(text))
    try:
        return check_range(parse_number(m.group(1) if m else text, "relative"), "relative", 0.0, 1e6)
    except SpikeTraceError:
        raise SpikeTraceError(f"invalid relative threshold '{text}' (examples: 10x, 5x, 0 to disable)") from None


def parse_percentile(text: str) -> Optional[float]:
    """`99.9` or `p99.9` -> 99.9; `none`/`off` -> None."""
    if str(text).strip().lower() in ("", "none", "off"):
        return None
    m = re.fullmatch(r"\s*[pP]?([0-9]*\.?[0-9]+)\s*", str(text))
    if not m or not 0 < float(m.group(1)) < 100:
        raise SpikeTraceError(f"invalid percentile '{text}' (examples: 99.9, p99; between 0 and 100)")
    return float(m.group(1))
