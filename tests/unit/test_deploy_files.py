"""deploy/: the systemd unit verified by systemd itself (`systemd-analyze verify`), the Kubernetes
manifest by the Kubernetes OpenAPI schemas (kubernetes-validate, strict), the Containerfile by
BuildKit's own parser (the `dockerfile` package), and the config file by the trace command's
own options. Each validator is shown a broken copy too, so a silent validator cannot pass."""
from __future__ import annotations

import configparser
import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN"}


def unit_here(tmp_path: Path, text: str = None) -> Path:
    """The unit as scripts/install.sh --daemon installs it: paths into this checkout."""
    text = text or (DEPLOY / "systemd/spiketrace.service").read_text()
    path = tmp_path / "spiketrace.service"
    path.write_text(text.replace("/opt/spiketrace", str(ROOT)))
    return path


def verify(path: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                          timeout=60)


def unit_keys() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(DEPLOY / "systemd/spiketrace.service")
    return parser


def test_unit_verifies_with_systemd(tmp_path):
    proc = verify(unit_here(tmp_path))
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_systemd_reports_a_broken_unit(tmp_path):
    text = (DEPLOY / "systemd/spiketrace.service").read_text()
    bad = text.replace("Type=notify", "Type=notifyy").replace("ProtectSystem=strict", "ProtectSystm=strict")
    err = verify(unit_here(tmp_path, bad)).stderr
    assert "notifyy" in err and "ProtectSystm" in err


def test_unit_is_notify_restarts_with_limits_and_is_hardened():
    u = unit_keys()
    s = u["Service"]
    assert s["Type"] == "notify" and s["Restart"] == "on-failure"
    assert int(u["Unit"]["StartLimitBurst"]) > 0 and u["Unit"]["StartLimitIntervalSec"]
    assert set(s["CapabilityBoundingSet"].split()) == CAPS
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("ProtectKernelModules", "yes")):
        assert s[key] == want, key
    assert s["MemoryMax"].endswith("M") and s["ExecReload"].endswith("-HUP $MAINPID")
    assert "--config /etc/spiketrace/trace.conf" in s["ExecStart"]


def _trace_options(conf: Path):
    """The options `spiketrace trace --config conf` runs with (the command's own parsing)."""
    from spiketrace.commands.trace import command

    ctx = command.make_context("trace", ["--config", str(conf)])
    return ctx.params


def test_config_file_gives_the_trace_options(tmp_path):
    params = _trace_options(DEPLOY / "systemd/trace.conf")
    assert params["ports"] == (80, 443) and params["json_"] is True
    assert params["metrics"] == "127.0.0.1:9464"
    assert params["max_size"] == 2 << 30 and params["max_age_s"] == 7 * 86400
    assert params["summary_interval_s"] == 60 and str(params["out"]) == "/var/lib/spiketrace/trace"


def test_config_file_errors_are_one_line(tmp_path):
    from common.errors import SpikeTraceError
    from spiketrace.commands.trace import command

    bad = tmp_path / "bad.conf"
    bad.write_text("[trace]\nprot = 80\n")
    with pytest.raises(SpikeTraceError, match="unknown option 'prot'"):
        command.make_context("trace", ["--config", str(bad)])
    bad.write_text("[trace]\nmax-size = lots\n")
    with pytest.raises(Exception, match="is not a size"):
        command.make_context("trace", ["--config", str(bad)])
    with pytest.raises(SpikeTraceError, match="no such file"):
        command.make_context("trace", ["--config", str(tmp_path / "missing.conf")])
    # the command line wins over the file
    good = tmp_path / "good.conf"
    good.write_text("[trace]\nport = 80\nquiet = true\n")
    ctx = command.make_context("trace", ["--config", str(good), "--port", "8080"])
    assert ctx.params["ports"] == (8080,) and ctx.params["quiet"] is True


def manifests():
    return list(yaml.safe_load_all((DEPLOY / "kubernetes/daemonset.yaml").read_text()))


def test_daemonset_validates_against_the_kubernetes_schema():
    import kubernetes_validate

    docs = manifests()
    assert [d["kind"] for d in docs] == ["Namespace", "ConfigMap", "DaemonSet"]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    broken = copy.deepcopy(docs[2])
    broken["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    broken = copy.deepcopy(docs[2])
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilitys"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_daemonset_is_as_narrow_as_the_unit_and_names_its_metrics_port(tmp_path):
    _ns, config, ds = manifests()
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {f"CAP_{cap}" for cap in sc["capabilities"]["add"]} == CAPS
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    conf = tmp_path / "trace.conf"
    conf.write_text(config["data"]["trace.conf"])
    params = _trace_options(conf)
    assert params["metrics"] == f":{c['ports'][0]['containerPort']}"
    assert c["readinessProbe"]["httpGet"]["path"] == "/metrics"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/var/log/containers", "/var/log/pods", "/lib/modules"} <= mounts


def test_containerfile_parses_and_copies_what_exists():
    import dockerfile

    cmds = dockerfile.parse_file(str(DEPLOY / "container/Containerfile"))
    names = [c.cmd for c in cmds]
    assert names[0] == "FROM" and "ENTRYPOINT" in names
    entry = next(c for c in cmds if c.cmd == "ENTRYPOINT")
    assert entry.json and entry.value == ("spiketrace", "trace")
    assert next(c for c in cmds if c.cmd == "EXPOSE").value == ("9464",)
    for c in cmds:
        if c.cmd == "COPY":
            assert (ROOT / c.value[0]).exists(), c.original
    run = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN")
    assert "python3-bpfcc" in run and "--system-site-packages" in run


def test_install_daemon_dry_run_installs_the_unit_and_the_config():
    import os

    env = {**os.environ, "SPIKETRACE_INSTALL_DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts/install.sh"), "--daemon"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "+ install -m 0644 /dev/stdin /etc/systemd/system/spiketrace.service" in out
    assert "/etc/spiketrace/trace.conf" in out
    running = Path("/run/systemd/system").is_dir()
    assert ("systemctl enable --now spiketrace.service" in out) == running
    assert ("systemd is not running" in out) == (not running)
