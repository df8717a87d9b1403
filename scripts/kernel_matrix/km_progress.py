"""pytest plugin of the kernel-matrix guests (`-p km_progress`): appends one JSON line per event
to $KM_PROGRESS as it happens: the collected tests, each test's start, and each result. A guest
stopped by its timeout (junit.xml is written only at the end) still tells which tests passed,
which failed and which one was running."""
from __future__ import annotations

import json
import os
import time

TAIL_LINES = 25  # of a failure's text, kept in the line (the whole of it is in pytest.log)


def _write(record: dict) -> None:
    path = os.environ.get("KM_PROGRESS")
    if not path:
        return
    record["t"] = round(time.time(), 3)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def pytest_collection_finish(session) -> None:
    _write({"event": "collected", "tests": [item.nodeid for item in session.items]})


def pytest_runtest_logstart(nodeid, location) -> None:
    _write({"event": "start", "test": nodeid})


def pytest_runtest_logreport(report) -> None:
    if report.when != "call" and report.passed:
        return  # setup and teardown count only when they fail or skip
    text = ""
    if not report.passed:
        text = "\n".join(report.longreprtext.splitlines()[-TAIL_LINES:])
    _write({"event": "result", "test": report.nodeid, "when": report.when,
            "outcome": report.outcome, "duration_s": round(report.duration, 1), "text": text})
