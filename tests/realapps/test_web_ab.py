"""nginx and the Apache HTTP Server traced as real servers, each driven by ApacheBench (`ab`,
Apache's own benchmark client: a new connection per request), in a private network namespace
with `net.core.somaxconn` = 4, over IPv4 and IPv6. A second `ab` asks, one request at a time, for
a URL whose handler sleeps 200 ms in the server (an application stall on purpose: nginx's
`echo_sleep`, a CGI script under Apache); its own `-g` log names every stalled request.

Scored against what the clients measured themselves (`ab -g`, one line per request, start times
in whole seconds): every request the client saw take over 100 ms must be a spike of the report;
the stalls must be named `server_processing`; no spike may be explained by a segment sent after
its sender closed. The figures are written to the run directory as score.json.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from common.netns import Namespace
from tests.realapps.harness import Proc, Trace, assert_no_post_close_retransmit, have, report, score

pytestmark = [pytest.mark.bpf, pytest.mark.slow, pytest.mark.realapp]

PORT = 8080
REQUESTS = int(os.environ.get("SPIKETRACE_TEST_AB_N", "3000"))
STALLS = int(os.environ.get("SPIKETRACE_TEST_AB_STALLS", "30"))
CONCURRENCY = int(os.environ.get("SPIKETRACE_TEST_AB_C", "32"))


@pytest.fixture
def webroot():
    """A directory the servers' unprivileged workers can read (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="spiketrace-web-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _nginx(root: Path, ns: str, log: Path) -> Proc:
    conf = root / "nginx.conf"
    conf.write_text(f"""
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format timed '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                     '"$http_referer" "$http_user_agent" $request_time';
    access_log {root}/access.log timed;
    server {{
        listen 127.0.0.1:{PORT};
        listen [::1]:{PORT};
        location /fast {{ return 200 "ok\\n"; }}
        location /stall {{ echo_sleep 0.2; echo "slept"; }}
    }}
}}
""")
    return Proc(ns, ["nginx", "-c", str(conf), "-p", str(root)], log)


def _apache(root: Path, ns: str, log: Path) -> Proc:
    (root / "htdocs").mkdir()
    (root / "htdocs" / "fast").write_text("ok\n")
    cgi = root / "cgi"
    cgi.mkdir()
    (cgi / "stall").write_text("#!/bin/sh\nsleep 0.2\nprintf 'Content-Type: text/plain\\n\\nslept\\n'\n")
    (cgi / "stall").chmod(0o755)
    mods = "/usr/lib/apache2/modules"
    conf = root / "httpd.conf"
    conf.write_text(f"""
ServerRoot {root}
ServerName localhost
LoadModule mpm_prefork_module {mods}/mod_mpm_prefork.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule alias_module {mods}/mod_alias.so
LoadModule cgi_module {mods}/mod_cgi.so
User www-data
Group www-data
Listen 127.0.0.1:{PORT}
Listen [::1]:{PORT}
PidFile {root}/httpd.pid
ErrorLog {root}/error.log
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-agent}}i\\" %D" timed
CustomLog {root}/access.log timed
Mutex file:{root}
StartServers 4
MinSpareServers 4
MaxSpareServers 8
MaxRequestWorkers 16
KeepAlive Off
DocumentRoot {root}/htdocs
<Directory {root}>
    Require all granted
</Directory>
ScriptAlias /stall {cgi}/stall
""")
    return Proc(ns, ["apache2", "-DFOREGROUND", "-f", str(conf)], log)


SERVERS = {"nginx": ("nginx", _nginx), "apache": ("apache2", _apache)}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("server", list(SERVERS))
def test_ab_slow_requests_are_found_and_explained(tmp_path, webroot, server, host):
    program, start = SERVERS[server]
    missing = have(program, "ab")
    if missing:
        pytest.skip(f"{missing} is not installed (scripts/install.sh --test installs it)")
    url = f"http://{'[::1]' if ':' in host else host}:{PORT}"
    with Namespace.create(f"sttest-{server}-{os.getpid()}", {"net.core.somaxconn": "4"}) as ns:
        proc = start(webroot, ns.name, tmp_path / f"{server}.log")
        try:
            _wait_ready(ns.name, f"{url}/fast")
            trace = Trace(ns.name, PORT, tmp_path / "run")
            try:
                ab = ["ab", "-q", "-s", "20", "-r"]
                fast = Proc(ns.name, ab + ["-c", str(CONCURRENCY), "-n", str(REQUESTS), "-g",
                                           str(tmp_path / "fast.tsv"), f"{url}/fast"], tmp_path / "ab-fast.log")
                stall = Proc(ns.name, ab + ["-c", "1", "-n", str(STALLS), "-g", str(tmp_path / "stall.tsv"),
                                            f"{url}/stall"], tmp_path / "ab-stall.log")
                assert fast.wait(180) == 0, (tmp_path / "ab-fast.log").read_text()
                assert stall.wait(180) == 0, (tmp_path / "ab-stall.log").read_text()
                time.sleep(0.3)  # the last connections close
            finally:
                assert trace.stop() == 0, "".join(trace.err)
        finally:
            proc.stop()
    logs = [tmp_path / "fast.tsv", tmp_path / "stall.tsv"]
    res = report(tmp_path / "run", logs, ["--threshold", "100ms", "--relative", "0"])
    assert res.returncode == 0, res.stderr

    slow = pd.concat([_client_slow(log) for log in logs], ignore_index=True)
    assert len(slow) > 0, "no request took over 100 ms"
    stalls = slow[slow["source"].str.startswith("stall.tsv")]
    assert len(stalls) >= STALLS * 0.9, f"only {len(stalls)} of {STALLS} stalled requests took over 100 ms"
    slow.loc[stalls.index, "expected"] = "server_processing"
    result = score(f"{server}+ab {host}", tmp_path / "run", slow)
    (tmp_path / "run" / "score.json").write_text(json.dumps(result.__dict__, indent=1))
    print(result.line())

    assert result.found == result.client_slow, result.line()
    assert result.expected.get("server_processing", 0) >= 0.95 * len(stalls), result.line()
    assert_no_post_close_retransmit(tmp_path / "run")

    # the server's own access log (its time for each request, to the second) joins as well
    access = tmp_path / "access.log"
    shutil.copy(webroot / "access.log", access)
    res = report(tmp_path / "run", [access], ["--threshold", "100ms", "--relative", "0",
                                             "--out", str(tmp_path / "by-access-log")])
    assert res.returncode == 0, res.stderr
    served = _server_slow(access)
    assert len(served) >= STALLS * 0.9, f"the access log has {len(served)} slow requests"
    served["expected"] = "server_processing"
    by_log = score(f"{server} access log {host}", tmp_path / "by-access-log", served)
    print(by_log.line())
    assert by_log.found == by_log.client_slow, by_log.line()
    assert by_log.expected["server_processing"] >= 0.95 * len(served), by_log.line()


def _wait_ready(ns: str, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", ns, "ab", "-q", "-n", "1", "-s", "2", url],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server did not answer {url}")


def _server_slow(path: Path) -> pd.DataFrame:
    """The server's slow requests in its access log (the request's time is the last field:
    nginx seconds, Apache us), all of them the stalls (a server does not see the client's
    retransmit waits)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        last = line.rsplit(" ", 1)[-1]
        ms = float(last) * 1000 if "." in last else int(last) / 1000
        if ms > 100:
            assert "/stall" in line, line
            rows.append({"source": f"{path.name}:{n}", "ms": ms})
    return pd.DataFrame(rows, columns=["source", "ms"])


def _client_slow(path: Path) -> pd.DataFrame:
    """ab's own slow requests (`ttime` over 100 ms), named as the report names entries
    (`file:line`, the header being line 1)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        cells = line.split("\t")
        if n > 1 and len(cells) >= 6 and int(cells[4]) > 100:
            rows.append({"source": f"{path.name}:{n}", "ms": int(cells[4])})
    return pd.DataFrame(rows, columns=["source", "ms"])
