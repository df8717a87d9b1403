"""Spike detection, the join of kernel evidence to transactions, cause classification, latency
decomposition and reports. Pure: reads a run directory, never imports BCC.

    from common.rundir import RunDir
    from analysis import analyse, AnalysisOptions
    result = analyse(RunDir.open("runs/X"), AnalysisOptions(threshold_ms=100))
    from analysis.report import write_reports, print_summary
"""
from __future__ import annotations

from analysis.context import ALL_CAUSES, CAUSES
from analysis.core import AnalysisResult, analyse
from analysis.options import AnalysisOptions

__all__ = ["analyse", "AnalysisOptions", "AnalysisResult", "CAUSES", "ALL_CAUSES"]
