"""`spiketrace trace` refuses bad input and a machine that cannot trace with one clear line
(no traceback), a non-zero exit, and no run directory left behind. The environment failures are
produced for real: a non-root user (setpriv), bcc hidden and tracefs unmounted in a private
mount namespace (invisible to the rest of the machine)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SPIKETRACE = str(Path(sys.executable).with_name("spiketrace"))
ROOT = os.geteuid() == 0
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def trace(args, out: Path, prefix=(), shell_setup=""):
    cmd = [*prefix, SPIKETRACE, "trace", *args, "--duration", "1", "--out", str(out)]
    if shell_setup:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               shell_setup + " && exec " + " ".join(cmd)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("spiketrace: "), lines
    assert not out.exists(), "a failed start must not leave a run directory"
    return lines[0]


def unused_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as fh:
        return int(fh.read()) + 1  # above pid_max: can never exist


def test_port_out_of_range(tmp_path):
    line = trace(["--port", "70000"], tmp_path / "run")
    assert "--port 70000" in line and "1-65535" in line
    trace(["--port", "0"], tmp_path / "run")


def test_pid_that_does_not_exist(tmp_path):
    pid = unused_pid()
    line = trace(["--port", "9999", "--pid", str(pid)], tmp_path / "run")
    assert f"--pid {pid}: no such process" in line and "spiketrace doctor" in line


def test_cgroup_that_does_not_exist(tmp_path):
    line = trace(["--port", "9999", "--cgroup", "sttest-no-such-cgroup"], tmp_path / "run")
    assert "--cgroup sttest-no-such-cgroup" in line and "spiketrace doctor" in line


def test_cgroup_v1_directory_is_refused(tmp_path):
    v1 = [mp for mp in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory")
          if os.path.isfile(os.path.join(mp, "cgroup.procs"))]
    if not v1:
        pytest.skip("no cgroup v1 hierarchy on this machine")  # only hybrid setups have one
    line = trace(["--port", "9999", "--cgroup", v1[0]], tmp_path / "run")
    assert "no such cgroup v2 directory" in line


def test_netns_that_does_not_exist(tmp_path):
    line = trace(["--port", "9999", "--netns", "sttest-trace-no-such-ns"], tmp_path / "run")
    assert "--netns sttest-trace-no-such-ns: no such network namespace" in line
    assert "spiketrace doctor" in line


@pytest.mark.skipif(ROOT and shutil.which("setpriv") is None, reason="needs setpriv(1) as root")
def test_needs_root(tmp_path):
    prefix = NOBODY if ROOT else ()
    os.chmod(tmp_path, 0o777)
    line = trace(["--port", "9999"], tmp_path / "run", prefix=prefix)
    assert "needs root" in line and "spiketrace doctor" in line


@pytest.mark.skipif(not ROOT, reason="needs root to hide bcc in a private mount namespace")
def test_without_bcc(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import bcc, os; print(os.path.dirname(bcc.__file__))"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        line = trace(["--port", "9999"], tmp_path / "run")
    else:
        empty = tmp_path / "empty"
        empty.mkdir()
        line = trace(["--port", "9999"], tmp_path / "run",
                     shell_setup=f"mount --bind {empty} {proc.stdout.strip()}")
    assert "bcc Python module is not usable" in line and "install.sh" in line and "spiketrace doctor" in line


@pytest.mark.skipif(not ROOT, reason="needs root to unmount tracefs in a private mount namespace")
def test_without_tracefs(tmp_path):
    umount = ("for m in /sys/kernel/debug/tracing /sys/kernel/debug /sys/kernel/tracing; do "
              "umount $m 2>/dev/null || true; done; ! test -d /sys/kernel/tracing/events")
    line = trace(["--port", "9999"], tmp_path / "run", shell_setup=umount)
    assert "tracefs is not mounted" in line and "mount -t tracefs" in line
    assert "spiketrace doctor" in line


@pytest.mark.skipif(not ROOT, reason="needs root to hide the headers in a private mount namespace")
def test_without_kernel_headers(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    modules = f"/lib/modules/{os.uname().release}"
    line = trace(["--port", "9999"], tmp_path / "run",
                 shell_setup=f"mkdir -p {modules} && mount --bind {empty} {modules}")
    assert "no kernel headers" in line and "install.sh" in line and "spiketrace doctor" in line
