"""Shared fixtures. BPF tests (marker `bpf`) need root and BCC: they skip on a laptop, but under
CI (SPIKETRACE_REQUIRE_BPF=1 or CI=true) every skip is turned into a failure."""
from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("SPIKETRACE_REQUIRE_BPF") == "1" or os.environ.get("CI") == "true"


def bpf_unavailable_reason():
    if os.geteuid() != 0:
        return "needs root for BPF"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "the bcc module is not importable (run scripts/install.sh)"
    if not os.path.exists("/sys/kernel/tracing/events"):
        return "tracefs is not mounted (run scripts/install.sh)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "bpf" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test is mandatory: {report.longrepr}"


@pytest.fixture
def ns(request):
    """A private network namespace (lo up) for one test, removed after it: test traffic and
    fixed ports stay inside it. Yields its name."""
    from common.netns import Namespace

    tag = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")[:20]
    with Namespace.create(f"sttest-{tag}-{os.getpid()}") as namespace:
        yield namespace.name
