"""Reports of an AnalysisResult: compute the report data once (`data.build`), then render it as
the terminal summary, report.md, report.html, summary.json and explanations.parquet.

Output files are never overwritten without `force` (memray style): asking for the same run's
report again needs `--force`. All checks happen before the first file is written.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np

from common.errors import SpikeTraceError

FORMATS = ("md", "html", "json", "parquet", "terminal")
DEFAULT_FORMATS = ("md", "html", "json", "parquet")
OUTPUTS = {"md": "report.md", "html": "report.html", "json": "summary.json", "parquet": "explanations.parquet"}


class ReportWriteError(SpikeTraceError):
    """A report file could not be written (read-only directory, full disk); `written` lists the
    files written before it."""

    def __init__(self, message: str, written: List[Path]):
        super().__init__(message)
        self.written = list(written)


def output_paths(run_path: Path, formats: Iterable[str]) -> Dict[str, Path]:
    return {f: Path(run_path) / OUTPUTS[f] for f in formats if f in OUTPUTS}


def check_formats(formats: Iterable[str]) -> List[str]:
    formats = [f.strip().lower() for f in formats if f.strip()]
    if not formats:
        raise SpikeTraceError(f"no report format given (choose from {', '.join(FORMATS)})")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise SpikeTraceError(f"unknown report format {', '.join(bad)} (choose from {', '.join(FORMATS)})")
    return formats


def report_exists(path: Path) -> bool:
    """A report file, or a table directory holding parts."""
    if path.is_dir():
        return any(path.glob("*.parquet"))
    return path.exists()


def write_reports(run, result, formats=DEFAULT_FORMATS, force: bool = False, out_dir=None) -> List[Path]:
    """Write the chosen report files into the run directory (or `out_dir`); returns their paths.
    Raises SpikeTraceError naming an existing file unless `force`, and ReportWriteError (one line:
    which file, why) when one cannot be written."""
    from common import rundir

    formats = check_formats(formats)
    target = Path(out_dir) if out_dir is not None else Path(run.path)
    paths = output_paths(target, formats)
    if not force:
        existing = [str(p) for p in paths.values() if report_exists(p)]
        if existing:
            raise SpikeTraceError(f"{existing[0]} already exists (use --force to overwrite)")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportWriteError(f"cannot write reports to {target}: {_why(exc)}", [])
    from analysis.report import data as report_data

    data = report_data.build(result) if ("md" in paths or "html" in paths) else None
    written = []
    for fmt, path in paths.items():
        try:
            if fmt == "parquet":
                rundir.write_table(target, "explanations", explanations_table(result))
            elif fmt == "json":
                _atomic_text(path, json.dumps(result.summary, indent=2, default=_json_default, allow_nan=False) + "\n")
            elif fmt == "md":
                from analysis.report import markdown

                _atomic_text(path, markdown.render(data))
            elif fmt == "html":
                from analysis.report import html, plots

                _atomic_text(path, html.render(data, plots.all_plots(data)))
        except (OSError, SpikeTraceError) as exc:  # read-only file system, permissions, full disk
            raise ReportWriteError(f"cannot write {path}: {_why(exc)}", written) from None
        written.append(path)
    return written


def explanations_table(result):
    """explanations.parquet rows in the documented schema (common.schema.SCHEMAS)."""
    from common import rundir

    schema = rundir.SCHEMAS["explanations"]
    df = result.explanations
    if df.empty:  # no spikes: an empty table that still has the documented columns and types
        return schema.empty_table()
    return df.reindex(columns=schema.names)


def print_summary(result, console) -> None:
    """The terminal summary of an analysis (rich console)."""
    from analysis.report import data as report_data
    from analysis.report import terminal

    terminal.render(report_data.build(result, max_spikes=report_data.TERMINAL_SPIKES), console)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text  # "<part>: why" -> "why"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
