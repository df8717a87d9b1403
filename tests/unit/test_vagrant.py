"""The Vagrant reproduction VM, checked as far as a machine without a hypervisor allows.

- `vagrant validate --ignore-provider`: the common config (boxes, machines, provisioner path).
- `vagrant validate` with each provider's config: VirtualBox through a stub `VBoxManage` that
  only answers `--version` (Vagrant's own VirtualBox config validation runs; no VM is touched),
  libvirt through the vagrant-libvirt plugin (installed by `scripts/install.sh --test`). A copy
  of the Vagrantfile with a misspelt option must fail, so a pass means the options were read.
- The provisioning chain on CentOS (`provision-vagrant.sh` -> `install.sh`'s dnf path) in dry-run
  mode, in a sandbox whose PATH holds a fake `dnf` that answers read-only `list` queries and
  refuses anything else, a fake `uname` and no `apt-get`: the printed plan must install
  bcc-tools, python3-bcc, bpftool and kernel-devel-$(uname -r), then run doctor and legacy-rto.
- install.sh's apt path: its dry run, and its generic-headers fallback for a kernel the archive
  has no headers for (the real apt path runs in CI through scripts/test.sh).

What is not exercised here: booting a box, rsync, real dnf transactions, EPEL mirrors.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
PROVISION = ROOT / "scripts" / "provision-vagrant.sh"
FAKE_KERNEL = "5.14.0-570.el9.x86_64"

CENTOS_OS_RELEASE = """NAME="CentOS Stream"
VERSION="9"
ID="centos"
ID_LIKE="rhel fedora"
VERSION_ID="9"
"""
FEDORA_OS_RELEASE = """NAME="Fedora Linux"
VERSION="40 (Server Edition)"
ID=fedora
VERSION_ID=40
"""

needs_vagrant = pytest.mark.skipif(shutil.which("vagrant") is None,
                                   reason="vagrant is not installed (scripts/install.sh --test installs it)")


# ---------------------------------------------------------------------------------------- vagrant
def vagrant_env(tmp_path: Path, **extra: str) -> dict:
    """Keep vagrant's state out of the repository and the user's ~/.vagrant.d."""
    env = dict(os.environ)
    env.update(VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"), VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    env.pop("VAGRANT_DEFAULT_PROVIDER", None)
    env.update(extra)
    return env


def validate(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["vagrant", "validate", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def stub_vboxmanage(tmp_path: Path) -> Path:
    """A VBoxManage that reports a VirtualBox version and logs every call (nothing else)."""
    bindir = tmp_path / "vbox-bin"
    bindir.mkdir()
    log = tmp_path / "vboxmanage.log"
    script = bindir / "VBoxManage"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
[ "$1" = --version ] && echo 7.0.14r161095
exit 0
""")
    script.chmod(0o755)
    return bindir


def provider_env(tmp_path: Path, provider: str) -> dict:
    if provider == "virtualbox":
        bindir = stub_vboxmanage(tmp_path)
        return vagrant_env(tmp_path, VAGRANT_DEFAULT_PROVIDER="virtualbox",
                           PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    plugins = subprocess.run(["vagrant", "plugin", "list"], env=vagrant_env(tmp_path), capture_output=True,
                             text=True, timeout=120, stdin=subprocess.DEVNULL).stdout
    if "vagrant-libvirt" not in plugins:
        pytest.skip("the vagrant-libvirt plugin is not installed (scripts/install.sh --test installs it)")
    return vagrant_env(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt")


@needs_vagrant
def test_vagrantfile_validates_without_a_provider(tmp_path):
    proc = validate(ROOT, vagrant_env(tmp_path), "--ignore-provider")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    # both machines were evaluated
    assert "centos:" in proc.stdout and "debian:" in proc.stdout


@needs_vagrant
@pytest.mark.parametrize("provider", ["virtualbox", "libvirt"])
def test_vagrantfile_provider_config_validates(tmp_path, provider):
    env = provider_env(tmp_path, provider)
    proc = validate(ROOT, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    if provider == "virtualbox":
        calls = (tmp_path / "vboxmanage.log").read_text().split("\n")
        assert set(filter(None, calls)) == {"--version"}, "validate must not drive VirtualBox"


@needs_vagrant
@pytest.mark.parametrize("provider,option", [("virtualbox", "vb.cpus"), ("libvirt", "lv.memory")])
def test_a_misspelt_provider_option_fails_validation(tmp_path, provider, option):
    """Negative control: the validation above really reads each provider block."""
    env = provider_env(tmp_path, provider)
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(PROVISION, copy / "scripts")
    text = (ROOT / "Vagrantfile").read_text()
    assert f"{option} =" in text
    (copy / "Vagrantfile").write_text(text.replace(f"{option} =", f"{option}_typo ="))
    proc = validate(copy, env)
    assert proc.returncode != 0
    assert "shouldn't exist" in proc.stdout + proc.stderr


@needs_vagrant
def test_a_missing_provisioning_script_fails_validation(tmp_path):
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "Vagrantfile", copy)
    proc = validate(copy, vagrant_env(tmp_path), "--ignore-provider")
    assert proc.returncode != 0
    assert "provision-vagrant.sh" in proc.stdout + proc.stderr


# ------------------------------------------------------------------- install.sh's dnf path, dry run
def dnf_sandbox(tmp_path: Path, available, os_release: str = CENTOS_OS_RELEASE) -> dict:
    """A PATH with a fake dnf and uname and a few harmless tools, and no apt-get."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "grep", "sort", "tail", "mountpoint", "id", "sed", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    log = tmp_path / "dnf.log"
    (bindir / "dnf").write_text(f"""#!/bin/bash
printf '%s\\n' "$*" >> {log}
args=()
for a in "$@"; do case "$a" in -*) ;; *) args+=("$a") ;; esac; done
if [ "${{args[0]}}" != list ]; then
    echo "fake dnf: refusing to run 'dnf $*' (only read-only list queries are allowed)" >&2
    exit 97
fi
for spec in "${{args[@]:1}}"; do
    case " $FAKE_DNF_AVAILABLE " in *" $spec "*) echo "$spec  available" ;; *) exit 1 ;; esac
done
""")
    (bindir / "uname").write_text(f"""#!/bin/bash
[ "$1" = -r ] && echo {FAKE_KERNEL} || echo Linux
""")
    for name in ("dnf", "uname"):
        (bindir / name).chmod(0o755)
    release = tmp_path / "os-release"
    release.write_text(os_release)
    return {
        "PATH": str(bindir), "HOME": str(tmp_path), "LANG": "C.UTF-8",
        "SPIKETRACE_INSTALL_DRY_RUN": "1", "SPIKETRACE_OS_RELEASE": str(release),
        "FAKE_DNF_AVAILABLE": " ".join(available),
    }


def run_sandboxed(script: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    return subprocess.run([bash, str(script), *args], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def planned(proc: subprocess.CompletedProcess, prefix: str):
    """The dry-run lines ("+ cmd ...") that start with PREFIX, split into words."""
    return [line[2:].split() for line in proc.stdout.splitlines() if line.startswith("+ " + prefix)]


def dnf_queries(tmp_path: Path):
    log = tmp_path / "dnf.log"
    return log.read_text().splitlines() if log.exists() else []


def test_install_dnf_path_installs_bcc_and_the_running_kernels_devel(tmp_path):
    env = dnf_sandbox(tmp_path, available=[f"kernel-devel-{FAKE_KERNEL}"])
    proc = run_sandboxed(INSTALL, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = planned(proc, "dnf install")
    assert len(installs) == 1, proc.stdout
    pkgs = installs[0][4:]  # after "dnf install -y -q"
    for pkg in ("bcc-tools", "python3-bcc", "bpftool", f"kernel-devel-{FAKE_KERNEL}"):
        assert pkg in pkgs, (pkg, proc.stdout)
    assert "chromium" not in pkgs and not planned(proc, "ln ")
    # the real dnf was asked only read-only questions; nothing else ran
    assert dnf_queries(tmp_path) == [f"-q list kernel-devel-{FAKE_KERNEL}"]
    assert "apt" not in proc.stdout
    assert planned(proc, "/usr/bin/python3 -c import\\ bcc")


def test_install_dnf_path_falls_back_to_newest_kernel_devel(tmp_path):
    env = dnf_sandbox(tmp_path, available=[])
    proc = run_sandboxed(INSTALL, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"no kernel-devel-{FAKE_KERNEL} in the repositories" in proc.stdout
    pkgs = planned(proc, "dnf install")[0][4:]
    assert "kernel-devel" in pkgs and f"kernel-devel-{FAKE_KERNEL}" not in pkgs
    # /usr/src/kernels does not exist here, so the dry run says what it would link
    assert f"would link the newest of /usr/src/kernels/* as /lib/modules/{FAKE_KERNEL}" in proc.stdout


def test_install_dnf_path_enables_epel_for_test_extras_on_centos(tmp_path):
    env = dnf_sandbox(tmp_path, available=[f"kernel-devel-{FAKE_KERNEL}"])
    proc = run_sandboxed(INSTALL, env, "--test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert planned(proc, "dnf config-manager --set-enabled crb")
    installs = planned(proc, "dnf install")
    assert [cmd[4:] for cmd in installs[1:]] == [["epel-release"], ["chromium", "ShellCheck"]], proc.stdout
    assert "bcc-tools" in installs[0] and "chromium" not in installs[0]
    # and the venv gets the test extra
    assert any(" -m pip install " in line and line.endswith("\\[test\\]") for line in proc.stdout.splitlines())


def test_install_dnf_path_needs_no_epel_on_fedora(tmp_path):
    env = dnf_sandbox(tmp_path, available=[f"kernel-devel-{FAKE_KERNEL}"], os_release=FEDORA_OS_RELEASE)
    proc = run_sandboxed(INSTALL, env, "--test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "epel" not in proc.stdout.lower()
    assert [cmd[4:] for cmd in planned(proc, "dnf install")[1:]] == [["chromium", "ShellCheck"]]


def test_provisioning_runs_install_then_doctor_then_legacy_rto(tmp_path):
    env = dnf_sandbox(tmp_path, available=[f"kernel-devel-{FAKE_KERNEL}"])
    proc = run_sandboxed(PROVISION, env, str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    install = next(i for i, line in enumerate(lines) if line.startswith("+ dnf install"))
    assert f"kernel-devel-{FAKE_KERNEL}" in lines[install]
    assert lines[-2:] == [
        f"+ {ROOT}/.venv/bin/spiketrace doctor",
        f"+ {ROOT}/.venv/bin/spiketrace run --scenario legacy-rto -n 2000",
    ], proc.stdout
    assert dnf_queries(tmp_path) == [f"-q list kernel-devel-{FAKE_KERNEL}"]


def test_provisioning_rejects_a_bad_transaction_count(tmp_path):
    env = dnf_sandbox(tmp_path, available=[])
    env["SPIKETRACE_PROVISION_N"] = "lots"
    proc = run_sandboxed(PROVISION, env, str(ROOT))
    assert proc.returncode == 1
    assert "SPIKETRACE_PROVISION_N must be a number" in proc.stderr
    assert dnf_queries(tmp_path) == []


def test_install_apt_path_dry_run_changes_nothing():
    """The apt path runs for real in CI (scripts/test.sh); here its dry run must only print."""
    if shutil.which("apt-get") is None:
        pytest.skip("not a Debian/Ubuntu machine")
    env = dict(os.environ, SPIKETRACE_INSTALL_DRY_RUN="1")
    proc = subprocess.run(["bash", str(INSTALL), "--test"], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installs = planned(proc, "apt-get install")
    assert installs and "python3-bpfcc" in installs[0] and "vagrant" in installs[0]
    assert planned(proc, "apt-get update")


def test_install_apt_path_links_generic_headers_for_an_unknown_kernel(tmp_path):
    """A kernel with no linux-headers-<release> package (like this VM's): the plan installs the
    distro's generic headers and links the newest of them; the dry run only prints the links."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("not a Debian/Ubuntu machine")
    env = dnf_sandbox(tmp_path, available=[])
    bindir = Path(env["PATH"])
    (bindir / "dnf").unlink()
    for tool in ("apt-get", "apt-cache", "dpkg"):  # apt-get is only looked up: the dry run prints it
        (bindir / tool).symlink_to(shutil.which(tool))
    proc = run_sandboxed(INSTALL, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert f"no linux-headers-{FAKE_KERNEL} in the archive" in proc.stdout
    assert [f"linux-headers-{arch}"] == planned(proc, "apt-get install")[-1][-1:]
    links = planned(proc, "ln -sfn")
    installed = sorted(Path("/usr/src").glob(f"linux-headers-*-{arch}"))
    if installed:  # headers present here: the plan links the newest, as a real run would
        assert [cmd[-1] for cmd in links] == [f"/lib/modules/{FAKE_KERNEL}/build", f"/lib/modules/{FAKE_KERNEL}/source"]
        assert links[0][2].startswith("/usr/src/linux-headers-") and links[0][2].endswith(f"-{arch}")
    else:
        assert not links and "would link the newest of" in proc.stdout
    assert not Path(f"/lib/modules/{FAKE_KERNEL}").exists()
