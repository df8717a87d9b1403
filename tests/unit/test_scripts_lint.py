"""ShellCheck over every shell script of the repository: the install, test and provisioning
scripts and the CI entry point must stay clean (they run as root on fresh machines)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ["scripts/install.sh", "scripts/test.sh", "scripts/provision-vagrant.sh", ".ci/run"]


def shell_scripts():
    found = set(REQUIRED)
    found.update(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.sh"))
    return sorted(found)


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (scripts/install.sh --test installs it)")
@pytest.mark.parametrize("script", shell_scripts())
def test_shellcheck_clean(script):
    path = ROOT / script
    assert path.is_file(), f"{script} is missing"
    proc = subprocess.run(["shellcheck", "--shell=bash", "--severity=style", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", REQUIRED)
def test_scripts_are_executable_bash(script):
    path = ROOT / script
    assert path.read_text().startswith("#!/usr/bin/env bash\n"), f"{script}: wrong shebang"
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
