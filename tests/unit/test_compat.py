"""The code must run on the distro python3 of CentOS Stream 9 (3.9), because `bcc` comes from
the distro: vermin checks that no syntax or standard-library use needs more."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_minimum_python_is_3_9():
    paths = [str(ROOT / p) for p in ("spiketrace", "tracer", "bench", "analysis", "examples", "benchmarks")
             if (ROOT / p).exists()]
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("vermin")), "--no-tips", "--eval-annotations", "--backport", "dataclasses",
         "--target=3.9-", "--violations", *paths],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
