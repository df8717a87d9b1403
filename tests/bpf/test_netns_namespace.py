"""Namespace creation, sysctls, entering from a child process, and cleanup of what a
SIGKILLed run left behind -- against the real kernel (needs root)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netfault_helpers import ROOT, private_ns
from common import leftovers as L
from common import netns as N
from common.errors import SpikeTraceError

pytestmark = pytest.mark.bpf


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path, monkeypatch):
    """State files go to a private directory: never touch other engineers' runs."""
    monkeypatch.setenv("SPIKETRACE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_create_sets_lo_sysctls_and_remove_cleans_up(private_state_dir):
    host_range = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    sysctls = {"net.ipv4.ip_local_port_range": "40000 40099", "net.ipv4.tcp_tw_reuse": "0",
               "net.ipv4.tcp_syn_linear_timeouts": "0"}
    with private_ns("create", sysctls) as ns:
        assert ns.inum == os.stat(f"/var/run/netns/{ns.name}").st_ino
        # values read back inside the namespace; the host keeps its own
        assert ns.read_sysctls(sysctls) == {k: v for k, v in sysctls.items()
                                            if k not in ns.skipped_sysctls}
        assert Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split() == host_range
        # lo is up: a TCP connection inside works, and uses the namespace's port range
        with ns.inside():
            srv = socket.socket()
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            cli = socket.create_connection(srv.getsockname(), timeout=2)
        assert 40000 <= cli.getsockname()[1] <= 40099
        assert N.Namespace.tcp_counters(ns)["Tcp.ActiveOpens"] == 1
        cli.close()
        srv.close()
        # this thread is back in the host namespace
        assert os.stat("/proc/thread-self/ns/net").st_ino != ns.inum
        state = json.loads((private_state_dir / f"state-{os.getpid()}.json").read_text())
        assert state["netns"] == [ns.name]
    assert not os.path.exists(f"/var/run/netns/{ns.name}")
    assert not (private_state_dir / f"state-{os.getpid()}.json").exists()


def test_unknown_sysctl_fails_cleanly():
    name = f"sttest-scen-bad-{os.getpid()}"
    with pytest.raises(SpikeTraceError, match="net.ipv4.no_such_thing"):
        N.Namespace.create(name, {"net.ipv4.no_such_thing": "1"})
    assert not os.path.exists(f"/var/run/netns/{name}")
    with private_ns("dup") as ns:
        with pytest.raises(SpikeTraceError, match="exists already"):
            N.Namespace.create(ns.name, {})


def test_enter_netns_in_child_process():
    with private_ns("enter") as ns:
        code = ("import os,sys; from common.netns import enter; enter(sys.argv[1]); "
                "print(os.stat('/proc/self/ns/net').st_ino)")
        out = subprocess.run([sys.executable, "-c", code, ns.name], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True).stdout
        assert int(out) == ns.inum
        bad = subprocess.run([sys.executable, "-c", code, ns.name + "-missing"], capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert bad.returncode != 0 and "does not exist" in bad.stderr


# A run that sets up a namespace, a tc filter, a cgroup with sock_ops and a child process,
# says "ready" and waits to be SIGKILLed.
_VICTIM = r"""
import os, subprocess, sys, time
from common.netns import Namespace
from common.leftovers import track_pids
from spiketrace.scenarios.tcfault import TcFault
from spiketrace.scenarios.legacy_rto import SockOpsRto
ns = Namespace.create(sys.argv[1], {})
TcFault(ns.name, "drop-syn", 9999, drop_every=1).attach()
rto = SockOpsRto(sys.argv[1] + "-cg", 3000, 9999).attach()
child = subprocess.Popen(["sleep", "60"])
track_pids([child.pid], "server")
print(child.pid, rto.path, flush=True)
time.sleep(60)
"""


def _tc_filters(name):
    from pyroute2 import IPRoute

    with IPRoute(netns=name) as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        return [f for f in ipr.get_filters(idx, parent=0xFFFFFFF2) if f.get_attr("TCA_OPTIONS")]


def test_cleanup_removes_what_a_sigkilled_run_left(private_state_dir):
    name = f"sttest-scen-victim-{os.getpid()}"
    victim = subprocess.Popen([sys.executable, "-c", _VICTIM, name], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    sleeper = None
    try:
        line = victim.stdout.readline().split()
        assert line, "victim did not start"
        sleeper, cgroup = int(line[0]), Path(line[1])
        # a live run's state must be left alone
        with private_ns("alive") as alive:
            assert L.cleanup_leftovers() == []
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            # the leftovers are really there
            assert os.path.exists(f"/var/run/netns/{name}")
            assert _tc_filters(name)
            assert cgroup.is_dir()
            assert L.proc_starttime(sleeper) is not None
            removed = L.cleanup_leftovers()
            text = "\n".join(removed)
            assert f"process {sleeper}" in text
            assert f"tc clsact filters on lo in {name}" in text
            assert f"cgroup {cgroup}" in text
            assert f"network namespace {name}" in text
            assert not os.path.exists(f"/var/run/netns/{name}")
            assert not cgroup.exists()
            time.sleep(0.05)
            assert L.proc_starttime(sleeper) is None
            assert not (private_state_dir / f"state-{victim.pid}.json").exists()
            # the live namespace survived
            assert os.path.exists(f"/var/run/netns/{alive.name}")
            assert L.cleanup_leftovers() == []
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        if sleeper and L.proc_starttime(sleeper) is not None:
            os.kill(sleeper, signal.SIGKILL)
        N.remove_netns(name)
        L.remove_cgroup(str(Path("/sys/fs/cgroup/unified") / (name + "-cg")))


def test_cleanup_never_kills_a_recycled_pid(private_state_dir):
    """A recorded pid whose start time differs is another process now: left alone."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        private_state_dir.mkdir(parents=True, exist_ok=True)
        doc = {"owner": {"pid": 999999999, "starttime": 1},
               "pids": [{"pid": other.pid, "starttime": L.proc_starttime(other.pid) + 1, "role": "client"}],
               "netns": [], "tc": [], "cgroups": [], "files": []}
        (private_state_dir / "state-999999999.json").write_text(json.dumps(doc))
        assert L.cleanup_leftovers() == []
        assert other.poll() is None
        assert not (private_state_dir / "state-999999999.json").exists()
    finally:
        other.kill()
        other.wait()


def test_cleanup_command_reports_nothing_to_do():
    from click.testing import CliRunner

    from spiketrace.commands.cleanup import command

    res = CliRunner().invoke(command, [])
    assert res.exit_code == 0, res.output
    assert "nothing to clean up" in res.output or res.output.startswith("removed ")
