"""PostgreSQL traced as a real server, driven by its own benchmark client (pgbench -C: a new
connection per transaction), in a private network namespace with `net.core.somaxconn` = 4, over
IPv4 and IPv6. 2% of the transactions run a script that sleeps 200 ms in the server (an
application stall on purpose: pgbench's log names the script of every transaction).

Scored against what the client measured itself (pgbench -l, one line per transaction): every
transaction the client saw take over 100 ms must be a spike of the report, matched to its kernel
connection; the stalls must be named `server_processing` (the server held the request); no spike
may be explained by a segment retransmitted after its sender closed (a tail loss probe in
FIN_WAIT1 that the peer drops as TCP_OLD_DATA is close-time noise). The figures
(found, causes, the stalls' causes) are written to the run directory as score.json.
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
from tests.realapps.harness import Proc, Trace, assert_no_post_close_retransmit, have, pg_bin, report, score

pytestmark = [pytest.mark.bpf, pytest.mark.slow, pytest.mark.realapp]

PORT = 5432
SECONDS = int(os.environ.get("SPIKETRACE_TEST_PGBENCH_S", "8"))


@pytest.fixture
def pgdata():
    """A data directory the postgres user owns (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="spiketrace-pg-"))
    shutil.chown(d, "postgres")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_pgbench_slow_transactions_are_found_and_explained(tmp_path, pgdata, host):
    missing = have(pg_bin("postgres"), pg_bin("pgbench"), pg_bin("initdb"), "runuser")
    if missing:
        pytest.skip(f"{missing} is not installed (scripts/install.sh --test installs PostgreSQL)")
    subprocess.run(["runuser", "-u", "postgres", "--", pg_bin("initdb"), "-D", str(pgdata / "data"),
                    "-A", "trust", "-U", "postgres"], check=True, capture_output=True, cwd="/tmp", timeout=120)
    (tmp_path / "fast.sql").write_text("SELECT 1;\n")
    (tmp_path / "stall.sql").write_text("SELECT pg_sleep(0.2);\n")
    with Namespace.create(f"sttest-pg-{os.getpid()}", {"net.core.somaxconn": "4"}) as ns:
        server = Proc(ns.name, [pg_bin("postgres"), "-D", str(pgdata / "data"), "-k", str(pgdata),
                                "-c", "listen_addresses=127.0.0.1,::1", "-c", f"port={PORT}",
                                "-c", "max_connections=200", "-c", "fsync=off"],
                      tmp_path / "postgres.log", user="postgres", cwd="/tmp")
        try:
            _wait_ready(ns.name, host)
            pgbench = [pg_bin("pgbench"), "-h", host, "-p", str(PORT), "-U", "postgres"]
            init = Proc(ns.name, pgbench + ["-i", "-s", "1", "postgres"], tmp_path / "init.log")
            assert init.wait(120) == 0, (tmp_path / "init.log").read_text()
            trace = Trace(ns.name, PORT, tmp_path / "run")
            try:
                bench = Proc(ns.name, pgbench + ["-C", "-c", "16", "-j", "4", "-T", str(SECONDS), "-l",
                                                 f"--log-prefix={tmp_path}/pgbench_log",
                                                 "-f", f"{tmp_path}/fast.sql@98", "-f", f"{tmp_path}/stall.sql@2",
                                                 "postgres"], tmp_path / "pgbench.log")
                assert bench.wait(SECONDS + 120) == 0, (tmp_path / "pgbench.log").read_text()
            finally:
                assert trace.stop() == 0, "".join(trace.err)
        finally:
            server.stop(sig=2)  # SIGINT: PostgreSQL's fast shutdown
    logs = sorted(tmp_path.glob("pgbench_log.*"))
    assert logs
    proc = report(tmp_path / "run", logs, ["--threshold", "100ms", "--relative", "0"])
    assert proc.returncode == 0, proc.stderr

    slow = _client_slow(logs)
    assert len(slow) > 0, "no transaction took over 100 ms: the load did not stress the server"
    stalls = slow[slow["script"] == 1]
    slow.loc[stalls.index, "expected"] = "server_processing"
    result = score(f"postgres+pgbench {host}", tmp_path / "run", slow)
    expl = pd.read_parquet(tmp_path / "run" / "explanations.parquet").set_index("source")
    stall_causes = expl.loc[stalls["source"][stalls["source"].isin(expl.index)], "cause"].value_counts()
    (tmp_path / "run" / "score.json").write_text(json.dumps(
        {**result.__dict__, "stalls": int(len(stalls)), "stall_causes": stall_causes.to_dict()}, indent=1))
    print(result.line(), "stalls:", stall_causes.to_dict())

    assert result.found == result.client_slow, result.line()
    # the injected application stall is named as the server's own time (server_processing,
    # from the conn_life probe: the server's read of the query to its reply). The goal is 95%;
    # measured 95.8-100% (24-44 stalls a run); 90% here: pgbench's 16 concurrent clients make
    # look-alike connections, and one or two matched to a look-alike on a loaded machine is noise
    assert result.expected.get("server_processing", 0) >= 0.9 * len(stalls), result.line()
    assert_no_post_close_retransmit(tmp_path / "run")


def _wait_ready(ns: str, host: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "netns", "exec", ns, pg_bin("pg_isready"), "-h", host, "-p", str(PORT)],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("PostgreSQL did not become ready")


def _client_slow(logs) -> pd.DataFrame:
    """pgbench's own slow transactions: `time` (us) over 100 ms, with the report's name for each
    entry (`file:line`) and the script it ran (1 = the stall)."""
    rows = []
    for path in logs:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            cells = line.split()
            if len(cells) >= 6 and int(cells[2]) > 100_000:
                rows.append({"source": f"{path.name}:{n}", "script": int(cells[3]), "us": int(cells[2])})
    return pd.DataFrame(rows, columns=["source", "script", "us"])
