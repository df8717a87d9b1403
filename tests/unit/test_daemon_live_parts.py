"""The daemon's parts that need no root: the in-memory run reads like the run directory (so the
live analysis is the report's), the live window's bounds and counter bases, the live lines and
JSON objects, workload names from cgroup paths, sizes, the metrics address, --log reopening."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from common.errors import SpikeTraceError
from common.rundir import MemoryRun, RunDir
from common.schema import SCHEMAS

DATA = Path(__file__).resolve().parents[1] / "data"


def _columns(run: RunDir, table: str) -> dict:
    df = run.table(table)
    return {c: df[c].tolist() for c in SCHEMAS[table].names}


def test_memory_run_gives_the_report_the_same_explanations():
    from analysis import AnalysisOptions, analyse

    disk = RunDir.open(DATA / "original-trace")
    tables = {t: _columns(disk, t) for t in ("events", "connections", "counters", "histograms") if disk.has(t)}
    mem = MemoryRun(disk.path, disk.meta, tables)
    assert mem.has("connections") and not mem.has("transactions") and mem.rows("events") == disk.rows("events")
    for name in tables:
        pd.testing.assert_frame_equal(mem.table(name), disk.table(name), check_dtype=False)
        a, b = mem.table(name, categories=True), disk.table(name, categories=True)
        assert [str(t) for t in a.dtypes] == [str(t) for t in b.dtypes]
    assert mem.table("transactions").empty and list(mem.table("transactions").columns) == SCHEMAS["transactions"].names
    opts = AnalysisOptions()
    live, post = analyse(mem, opts).explanations, analyse(disk, opts).explanations
    assert len(post) > 0
    cols = ["txn_id", "local_port", "t_start", "latency_ns", "cause", "cause_detail", "causes", "sentence"]
    pd.testing.assert_frame_equal(live[cols], post[cols])


def test_window_keeps_counter_values_across_the_horizon_and_bounds_rows():
    from spiketrace.live import LiveWindow

    w = LiveWindow(horizon_s=10, max_rows=5)
    s = int(1e9)
    w.add_counters({"t_ns": [1 * s, 2 * s, 30 * s], "name": ["A", "A", "A"], "value": [1, 2, 5]})
    snap = w.snapshot(since_ns=20 * s)
    assert list(zip(snap["counters"]["t_ns"], snap["counters"]["value"])) == [(20 * s, 2), (30 * s, 5)]
    w.trim(35 * s)  # A=2 at 2 s falls out of the window: kept as the base
    assert w.rows("counters") == 1
    assert w.snapshot(since_ns=25 * s)["counters"]["value"] == [2, 5]
    conns = {c: [0] * 8 for c in SCHEMAS["connections"].names}
    conns["t_close"] = [(30 + i) * s for i in range(8)]
    conns["t_open"] = [(29 + i) * s for i in range(8)]
    w.add("connections", conns)
    assert len(w.pending) == 8
    w.trim(36 * s)
    assert w.rows("connections") == 5  # max_rows


def test_live_line_and_json_of_a_spike():
    from common.meta import new_meta
    from spiketrace.containers import Workload
    from spiketrace.live import Spike, dumps, event_json, event_line, spike_json, spike_line

    meta = new_meta("trace", scenario="trace")
    s = Spike(key=("127.0.0.1", 41722, "127.0.0.1", 9999, meta.clock_monotonic_ns), open=False,
              t_start=meta.clock_monotonic_ns, t_end=meta.clock_monotonic_ns + 1_013_000_000,
              latency_ns=1_013_000_000, client_pid=4471, client_comm="python", server_pid=0, netns=1,
              cause="syn_retransmit", cause_detail="drop:TC_INGRESS", causes=["syn_retransmit"],
              shares_ns={"syn_retransmit": 1_012_000_000}, explained_ns=1_012_000_000,
              inferred=False, sentence="The SYN was dropped.",
              client_workload=Workload("/kubepods/pod" + "a" * 8 + "-" + "b" * 4 + "-" + "c" * 4 + "-" + "d" * 4
                                       + "-" + "e" * 12, "pod", pod="default/web", container="client"))
    line = spike_line(s, meta)
    assert "\n" not in line and "127.0.0.1:41722 > 127.0.0.1:9999" in line
    assert "took 1.01 s, syn_retransmit:drop:TC_INGRESS: The SYN was dropped. [pod default/web container client]" in line
    obj = json.loads(dumps(spike_json(s, meta)))
    assert obj["type"] == "spike" and obj["client"]["port"] == 41722 and obj["latency_ms"] == 1013.0
    assert obj["client"]["workload"]["pod"] == "default/web" and obj["server"]["workload"] is None
    assert obj["shares_ms"] == {"syn_retransmit": 1012.0} and obj["causes"] == ["syn_retransmit"]
    rq = dict(kind="runq_delay", t_ns=meta.clock_monotonic_ns, pid=12, comm="srv", saddr="", sport=0,
              daddr="", dport=0, state=0, reason=0, value=8_000_000, value2=1)
    assert "cpu 1 > -" in event_line(rq, meta.wall_time(rq["t_ns"]))  # not `?:0 > ?:0`
    ev = event_json(rq, meta, "thread 12 ran late")
    assert ev["state_name"] == "" and ev["kind"] == "runq_delay" and ev["detail"] == "thread 12 ran late"


@pytest.mark.parametrize("path,kind,label", [
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_1111_2222_333344445555.slice/"
     "cri-containerd-" + "f" * 64 + ".scope", "pod", "pod default/web-1 container nginx"),
    ("/kubepods/besteffort/pod1b2c3d4e-0000-1111-2222-333344445555/" + "f" * 64, "pod",
     "pod default/web-1 container nginx"),
    ("/system.slice/docker-" + "a" * 64 + ".scope", "container", "container web"),
    ("/system.slice/nginx.service", "unit", "unit nginx.service"),
    ("/user.slice/user-1000.slice/session-3.scope", "cgroup", "cgroup /user.slice/user-1000.slice/session-3.scope"),
    ("/", "host", ""),
])
def test_workloads_named_from_cgroup_paths(tmp_path, path, kind, label):
    from spiketrace.containers import Resolver, parse_cgroup_file

    (tmp_path / "proc/42").mkdir(parents=True)
    (tmp_path / "proc/42/cgroup").write_text(f"0::{path}\n")
    logs = tmp_path / "var/log/containers"
    logs.mkdir(parents=True)
    (logs / f"web-1_default_nginx-{'f' * 64}.log").write_text("")
    (tmp_path / "var/log/pods/default_web-1_1b2c3d4e-0000-1111-2222-333344445555").mkdir(parents=True)
    docker = tmp_path / f"var/lib/docker/containers/{'a' * 64}"
    docker.mkdir(parents=True)
    (docker / "config.v2.json").write_text(json.dumps({"Name": "/web"}))
    r = Resolver(root=str(tmp_path))
    w = r(42)
    assert w.kind == kind and w.label() == label
    assert r(43) is None and r(0) is None
    assert parse_cgroup_file("12:pids:/a\n1:name=systemd:/b\n") == "/b"
    (tmp_path / "proc/42/cgroup").unlink()
    (tmp_path / "proc/42").rmdir()
    assert r.forget_gone() == 1


def test_sizes_metrics_address_and_log_reopen(tmp_path):
    from spiketrace.metrics import parse_address
    from spiketrace.segments import parse_size
    from spiketrace.service import Output

    assert parse_size("2G") == 2 << 30 and parse_size("500k") == 500 << 10 and parse_size("1024") == 1024
    for bad in ("", "0", "-1M", "1Q", "nan"):
        with pytest.raises(SpikeTraceError):
            parse_size(bad)
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464) and parse_address("[::1]:80") == ("::1", 80)
    for bad in ("9464", "host:", "host:70000"):
        with pytest.raises(SpikeTraceError):
            parse_address(bad)
    log = tmp_path / "t.log"
    out = Output(log)
    out.write("one")
    log.rename(tmp_path / "t.log.1")
    out.write("two")
    out.reopen()
    out.write("three")
    out.close()
    assert (tmp_path / "t.log.1").read_text() == "one\ntwo\n" and log.read_text() == "three\n"
