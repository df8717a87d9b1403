"""Test sizes of the guest suite: small enough for a TCG guest, each overridable by
SPIKETRACE_KM_<NAME> (for a faster guest, or a closer look)."""
from __future__ import annotations

import os


def size(name: str, default: int) -> int:
    return int(os.environ.get(f"SPIKETRACE_KM_{name}", default))
