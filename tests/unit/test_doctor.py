"""`spiketrace doctor` against the machine it runs on: every line it prints is checked against
the kernel's own files. The degraded cases are real, not mocked: a non-root user (setpriv), a
missing bcc module and an unmounted tracefs (a private mount namespace, so nothing else on the
machine notices). Those need root to set up and skip without it."""
from __future__ import annotations

import json
import glob
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SPIKETRACE = str(Path(sys.executable).with_name("spiketrace"))
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to drop privileges / unshare mounts")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def doctor_json(prefix=(), shell_setup=""):
    """Run `spiketrace doctor --json`, optionally after shell set-up in a private mount ns."""
    cmd = list(prefix) + [SPIKETRACE, "doctor", "--json"]
    if shell_setup:
        inner = " ".join(cmd)
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f"{shell_setup} && exec {inner}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(proc.stdout)
    data["rc"] = proc.returncode
    data["by_name"] = {c["name"]: c for c in data["system"]}
    data["probe"] = {p["evidence"]: p for p in data["probes"]}
    return data


def bcc_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "from bcc import BPF"],
                          capture_output=True).returncode == 0


def tracefs():
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(path, "events")):
            return path
    return None


def test_help_has_examples():
    out = subprocess.run([SPIKETRACE, "doctor", "--help"], capture_output=True, text=True).stdout
    assert "Examples:" in out and "spiketrace doctor --json" in out


def test_report_matches_this_machine():
    data = doctor_json()
    c = data["by_name"]
    assert c["root"]["ok"] is (os.geteuid() == 0)
    assert c["BCC"]["ok"] is bcc_importable()
    assert c["BTF"]["ok"] is os.path.exists("/sys/kernel/btf/vmlinux")
    assert platform.release() in c["kernel"]["value"]
    assert (c["tracefs"]["ok"] is True) == (tracefs() is not None)
    # exit status says whether anything required is broken
    assert (data["rc"] == 0) == (data["problems"] == [])
    if os.path.exists("/proc/config.gz"):
        import gzip

        with gzip.open("/proc/config.gz", "rt") as fh:
            hz = next(line.split("=")[1].strip() for line in fh if line.startswith("CONFIG_HZ="))
        assert c["HZ"]["value"] == hz


def test_headers_state_matches_the_build_link():
    c = doctor_json()["by_name"]["kernel headers"]
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not (build / "include").is_dir():
        assert c["ok"] is False or "IKHEADERS" in c["value"]
        assert c["fix"]
    elif platform.release() in os.path.realpath(build):
        assert c["value"].startswith("exact")
    else:
        assert c["value"].startswith("generic-linked")
        assert os.path.basename(os.path.realpath(build)) in c["value"]


@pytest.mark.skipif(not ROOT or tracefs() is None, reason="needs root and a mounted tracefs")
def test_probe_backends_match_tracefs():
    data = doctor_json()
    ev = os.path.join(tracefs(), "events")
    kprobes = os.path.exists(os.path.join(tracefs(), "kprobe_events"))
    for p in data["probes"]:
        if p["backend"] == "tracepoint":
            for tp in p["detail"].split(", "):
                assert os.path.isdir(os.path.join(ev, *tp.split(":"))), p
        if p["backend"] == "raw_tracepoint":  # raw tracepoints are named without their system
            for tp in p["detail"].split(", "):
                assert glob.glob(os.path.join(ev, "*", tp.split(":")[-1])), p
        if p["backend"] == "kprobe":
            assert kprobes, p  # a kprobe backend where kprobes are off would be a lie
    has_tp = os.path.isdir(os.path.join(ev, "tcp", "tcp_retransmit_skb"))
    # a tracepoint exists, so the tracer uses it (raw first: a perf-event tracepoint program is
    # skipped while its CPU runs another BPF program)
    assert (data["probe"]["retransmit"]["backend"] in ("tracepoint", "raw_tracepoint")) is has_tp
    assert (data["by_name"]["kprobes"]["value"] == "enabled") is kprobes
    assert data["by_name"]["BPF ring buffer"]["ok"] is True  # root can create one on >= 5.8

    # what would give an unavailable evidence names its own probes only
    for p in data["probes"]:
        if p["backend"] == "unavailable":
            assert p["fix"], p
            assert ("CONFIG_KPROBES=y" in p["fix"]) is (p["evidence"] != "conn_life"), p


def test_the_fix_for_a_missing_evidence_names_what_would_give_it():
    """conn_life comes only from its tracepoints (6.3+): kprobes would not give it."""
    from tracer.host import _unavailable_fix
    assert _unavailable_fix("conn_life") == "a kernel with the tracepoints sock_recv_length, sock_send_length"
    assert _unavailable_fix("time_wait") == "CONFIG_KPROBES=y"
    assert "inet_sock_set_state" in _unavailable_fix("state_change") and "CONFIG_KPROBES" in _unavailable_fix("state_change")


@needs_root
def test_without_root_says_so_instead_of_failing():
    data = doctor_json(prefix=NOBODY)
    assert data["rc"] == 1
    assert "root" in data["problems"]
    assert data["by_name"]["root"]["fix"] == "sudo spiketrace doctor"
    tracefs_private = all(os.stat(p).st_mode & 0o005 == 0 for p in
                          ("/sys/kernel/tracing", "/sys/kernel/debug") if os.path.exists(p))
    if tracefs_private:  # nobody cannot look: the probes are unknown, never claimed
        assert {p["backend"] for p in data["probes"]} <= {"unknown", "sampled"}
        assert data["by_name"]["tracefs"]["ok"] is False


def _bcc_dir():
    proc = subprocess.run([sys.executable, "-c", "import bcc, os; print(os.path.dirname(bcc.__file__))"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_without_bcc_and_without_root(tmp_path):
    bcc_dir = _bcc_dir()
    if bcc_dir is None:
        pytest.skip("bcc is not installed, nothing to hide")
    empty = tmp_path / "empty"
    empty.mkdir()
    os.chmod(tmp_path, 0o755)
    data = doctor_json(prefix=NOBODY, shell_setup=f"mount --bind {empty} {bcc_dir}")
    assert data["rc"] == 1
    bcc = data["by_name"]["BCC"]
    assert bcc["ok"] is False
    assert "install.sh" in bcc["fix"]
    assert "BCC" in data["problems"] and "root" in data["problems"]


@needs_root
@pytest.mark.skipif(tracefs() is None, reason="tracefs is not mounted here")
def test_unmounted_tracefs_gives_the_mount_command():
    # debugfs re-mounts tracefs on access to debug/tracing (an automount): unmount it too
    umount = ("for m in /sys/kernel/debug/tracing /sys/kernel/debug /sys/kernel/tracing; do "
              "umount $m 2>/dev/null || true; done; "
              "! test -d /sys/kernel/tracing/events && ! test -d /sys/kernel/debug/tracing/events")
    data = doctor_json(shell_setup=umount)
    tfs = data["by_name"]["tracefs"]
    assert tfs["ok"] is False
    assert tfs["fix"] == "sudo mount -t tracefs nodev /sys/kernel/tracing"
    assert data["rc"] == 1 and "tracefs" in data["problems"]
    assert {p["backend"] for p in data["probes"]} <= {"unknown", "sampled"}


def test_rich_output_renders():
    proc = subprocess.run([SPIKETRACE, "doctor"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, COLUMNS="120"))
    assert "Traceback" not in proc.stderr
    assert "BCC" in proc.stdout and "retransmit" in proc.stdout
    assert ("Ready:" in proc.stdout) == (proc.returncode == 0)
