"""The layers of the tree (README, "Layout"): the CLI package on top, bench / tracer / analysis
beside each other, the ground floor (common) below; no package imports one above it, and the
three middle ones never import each other. Checked by import-linter (pyproject.toml
[tool.importlinter]) on the real import graph."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_imports_follow_the_layers():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_the_ground_floor_imports_no_third_party_data_library_at_import_time():
    """bench processes import common and must stay lean (no pandas: bench._proc.no_pandas)."""
    code = ("import sys, common, common.meta, common.vocab, common.errors, common.netns, "
            "common.leftovers; print('pandas' in sys.modules, 'bcc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    assert out == ["False", "False"]


def test_a_module_over_400_lines_says_why_at_its_top():
    """The guideline is ~400 lines a module; one that is longer says why in its docstring."""
    import ast
    long = []
    for folder in ("common", "bench", "tracer", "analysis", "spiketrace"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 400 and "Over 400 lines on purpose" not in (ast.get_docstring(ast.parse(text)) or ""):
                long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not long, f"over 400 lines without a reason at the top: {long}"
