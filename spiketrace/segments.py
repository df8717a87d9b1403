"""Days of flat disk: with --max-size or --max-age, `spiketrace trace --out DIR` records into
segments, `DIR/000001-20261126T140000Z/`, `DIR/000002-...`, each a complete run directory
that `spiketrace report` reads on its own, and removes the oldest ones beyond the limits.

A segment is closed (its meta.json marked `complete`, "rotated") when it reaches an eighth of
--max-size or has recorded for an eighth of --max-age (at most an hour), so the limits are kept
to within about one segment; the probes stay attached across a rotation and nothing is lost
between two segments. `DIR/latest` points to the segment being written. A restarted daemon
(systemd's Restart=on-failure) continues with the next number in the same DIR and never
removes a segment except by the limits.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
from pathlib import Path
from typing import List, Optional

from common.errors import SpikeTraceError

SEGMENT = re.compile(r"(\d{6})-\d{8}T\d{6}Z")
MAX_SEGMENT_S = 3600.0
PARTS = 8

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def parse_size(text: str, option: str = "--max-size") -> int:
    """`500M`, `2G`, `100k`, `1048576` (bytes) -> bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise SpikeTraceError(f"{option}: '{text}' is not a size (examples: 500M, 2G, 100k)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def dir_bytes(path: Path) -> int:
    """Disk used by the files under `path` (allocated blocks, as `du`)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


class Segments:
    """The segments of one `--out DIR` (see the module docstring)."""

    def __init__(self, root: Path, max_bytes: Optional[int] = None, max_age_s: Optional[float] = None,
                 segment_s: Optional[float] = None):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.segment_bytes = max_bytes // PARTS if max_bytes else None
        self.segment_s = segment_s or min(MAX_SEGMENT_S, max_age_s / PARTS if max_age_s else MAX_SEGMENT_S)
        self.pruned = 0
        self.started = time.monotonic()
        self._bytes = 0
        self._bytes_t = -1e9
        if self.root.exists() and not self.root.is_dir():
            raise SpikeTraceError(f"{self.root} exists and is not a directory (choose another --out)")

    def list(self) -> List[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and SEGMENT.fullmatch(p.name))

    def count(self) -> int:
        return len(self.list())

    def next_path(self) -> Path:
        existing = self.list()
        seq = int(SEGMENT.fullmatch(existing[-1].name).group(1)) + 1 if existing else 1
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.root / f"{seq:06d}-{stamp}"

    def started_segment(self, path: Path) -> None:
        """`path` is now the segment being written: `DIR/latest` points to it."""
        self.started = time.monotonic()
        link = self.root / "latest"
        tmp = self.root / ".latest.tmp"
        try:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            tmp.symlink_to(path.name)
            os.replace(tmp, link)
        except OSError:
            pass  # a convenience: a full disk must not stop the recording

    def due(self, current: Path) -> bool:
        """The current segment is full or old enough to close."""
        if time.monotonic() - self.started >= self.segment_s:
            return True
        return self.segment_bytes is not None and dir_bytes(current) >= self.segment_bytes

    def total_bytes(self, max_age_s: float = 5.0) -> int:
        """Disk used by every segment (cached for a few seconds: a walk of the tree)."""
        if time.monotonic() - self._bytes_t >= max_age_s:
            self._bytes = dir_bytes(self.root) if self.root.is_dir() else 0
            self._bytes_t = time.monotonic()
        return self._bytes

    def prune(self, current: Path) -> List[Path]:
        """Remove the oldest closed segments while the total is above --max-size, and those that
        ended longer ago than --max-age. The current segment is never removed."""
        removed = []
        closed = [p for p in self.list() if p != current]
        if self.max_age_s:
            cut = time.time() - self.max_age_s
            for p in list(closed):
                if _mtime(p) < cut:
                    removed.append(p)
                    closed.remove(p)
        if self.max_bytes:
            sizes = {p: dir_bytes(p) for p in closed}
            total = sum(sizes.values()) + dir_bytes(current)
            for p in closed:
                if total <= self.max_bytes:
                    break
                removed.append(p)
                total -= sizes[p]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
        self.pruned += len(removed)
        if removed:
            self._bytes_t = -1e9
        return removed


def _mtime(path: Path) -> float:
    """When a segment was last written (its meta.json is rewritten at each flush and at close)."""
    try:
        return (path / "meta.json").stat().st_mtime
    except OSError:
        return path.stat().st_mtime
