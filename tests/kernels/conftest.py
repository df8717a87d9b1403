"""The kernel matrix's guest suite: scripts/kernel-matrix.sh runs it inside each kernel it boots
(docs/kernels.md). It is collected there only: the host suite (testpaths = ["tests"]) ignores
this directory unless SPIKETRACE_KERNEL_GUEST=1, which scripts/kernel-matrix-guest.sh sets.

Guests run under TCG, 15-100x slower than the host and with noisy timing, so these modules
reuse the host suite's BPF and end-to-end tests with smaller sizes (each overridable by an
environment variable) and longer time limits, and assert no millisecond latencies: a spike here
is a 1 s SYN retransmit, never a few milliseconds. Every module is marked `kernel_guest`.

Tests marked `km_extended` repeat what the others already cover on the kernels of CI's matrix
(a second filter mode, the perf-buffer output, the kprobe variants through the verifier only):
they run with `scripts/kernel-matrix.sh --extended` (SPIKETRACE_KM_EXTENDED=1), so that CI's
three kernels fit in its time. For the same reason the end-to-end runs (marked `km_e2e(name)`:
syn-loss, listen-overflow, original, 2-4 min each in a guest) are spread over the kernels by
kernel-matrix.sh, one per kernel (SPIKETRACE_KM_E2E); --extended runs all of them everywhere."""
from __future__ import annotations

import os

if os.environ.get("SPIKETRACE_KERNEL_GUEST") != "1":
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel_guest: runs inside a kernel-matrix guest only "
                                       "(scripts/kernel-matrix.sh)")
    config.addinivalue_line("markers", "km_extended: runs in a guest with --extended only")
    config.addinivalue_line("markers", "km_e2e(name): an end-to-end run; SPIKETRACE_KM_E2E lists "
                                       "the names a guest runs (kernel-matrix.sh E2E_PLAN)")


def _left_out(item) -> bool:
    if "km_extended" in item.keywords and os.environ.get("SPIKETRACE_KM_EXTENDED") != "1":
        return True
    chosen = os.environ.get("SPIKETRACE_KM_E2E")  # unset: every end-to-end test
    marker = item.get_closest_marker("km_e2e")
    return chosen is not None and marker is not None and marker.args[0] not in chosen.split()


def pytest_collection_modifyitems(config, items):
    left_out = [item for item in items if _left_out(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]

