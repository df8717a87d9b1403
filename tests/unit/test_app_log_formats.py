"""The two most common benchmark logs read as they are: ApacheBench `-g` (TSV, start in whole
epoch seconds) and pgbench `-l` (no header, end time in epoch seconds + microseconds); a file
in no accepted format is one line naming the formats and the option that forces one."""
from __future__ import annotations

import pytest

from analysis.applog_read import FORMATS, read_app_log
from common.errors import SpikeTraceError

AB_G = ("starttime\tseconds\tctime\tdtime\tttime\twait\n"
        "Tue Dec 01 22:36:27 2026\t1796164587\t0\t1\t1\t1\n"
        "Tue Dec 01 22:36:28 2026\t1796164588\t1003\t2\t1005\t1\n")
PGBENCH = ("0 0 2435 0 1796164587 123456\n"
           "1 0 201345 1 1796164587 654321\n"
           "2 0 1200 0 1796164588 5 0\n")


def test_ab_g_is_read_with_whole_second_starts(tmp_path):
    f = tmp_path / "ab.tsv"
    f.write_text(AB_G)
    log = read_app_log([f])
    e = log.entries
    assert log.formats == ["ab-g"]
    assert e["duration_ns"].tolist() == [1_000_000, 1_005_000_000]
    assert e["ts"].tolist() == [1796164587.0, 1796164588.0]
    assert set(e["ts_kind"]) == {"start"} and set(e["ts_resolution_ns"]) == {1_000_000_000}
    assert e["line"].tolist() == [2, 3]


def test_pgbench_l_is_read_with_its_end_times_and_scripts(tmp_path):
    f = tmp_path / "pgbench_log.123"
    f.write_text(PGBENCH)
    log = read_app_log([f])
    e = log.entries
    assert log.formats == ["pgbench-l"]
    assert e["duration_ns"].tolist() == [2_435_000, 201_345_000, 1_200_000]
    assert e["ts"].tolist() == pytest.approx([1796164587.123456, 1796164587.654321, 1796164588.000005])
    assert set(e["ts_kind"]) == {"end"} and e["script"].tolist() == [0, 1, 0]


def test_a_log_in_no_accepted_format_says_which_are(tmp_path):
    f = tmp_path / "weird.log"
    f.write_text("1 2 3\n4 5 6\n")
    with pytest.raises(SpikeTraceError) as exc:
        read_app_log([f])
    text = str(exc.value)
    assert str(f) in text and "--log-format" in text
    assert all(fmt in text for fmt in FORMATS)
    # forced: the same numbers read as pgbench -l are refused row by row, never half read
    f.write_text(PGBENCH)
    assert read_app_log([f], log_format="pgbench-l").formats == ["pgbench-l"]
    with pytest.raises(SpikeTraceError, match="--log-format nope: choose one of"):
        read_app_log([f], log_format="nope")


def _traced(tmp_path, spikes):
    from tests.helpers.trace_synthetic import ClosedLoopApp, TraceRun

    app = ClosedLoopApp(workers=1, n=400, spikes={(0, k): 1.0 for k in spikes})
    run = TraceRun(tmp_path / "run")
    app.record(run)
    return app, run, run.write()


SPIKES = (30, 90, 150, 210, 270, 330)


def test_a_log_whose_clock_is_off_is_aligned_and_says_by_how_much(tmp_path):
    """A load generator whose clock runs 6.5 ms ahead of the kernel's: the offset is estimated
    from the slow entries, reported, and every slow entry keeps its own SYN retransmit."""
    from analysis import analyse
    from common.rundir import RunDir

    app, run, path = _traced(tmp_path, SPIKES)
    ahead = run.meta.clock_wall_ns - run.meta.clock_monotonic_ns + 6_500_000
    log = app.write_log(tmp_path / "w0.csv", worker=0, fmt="csv", mono_to_wall=ahead)
    result = analyse(RunDir.open(path), app_log=read_app_log([log]))
    assert result.summary["app_log"]["clock_offset_ms"] == pytest.approx(-6.5, abs=0.2)
    e = result.explanations
    assert len(e) == len(SPIKES) and set(e["cause"]) == {"syn_retransmit"}
    assert not e["inferred"].any(), e["sentence"].tolist()


def test_whole_second_starts_match_their_own_connections(tmp_path):
    """ab -g writes each start as a whole epoch second: the entry is matched within its second
    by duration, and explained by its own connection's evidence."""
    from analysis import analyse
    from common.rundir import RunDir

    app, run, path = _traced(tmp_path, SPIKES)
    to_wall = run.meta.clock_wall_ns - run.meta.clock_monotonic_ns
    lines = ["\t".join(["starttime", "seconds", "ctime", "dtime", "ttime", "wait"])]
    for r in app.df.itertuples():
        sec = (r.start + to_wall) // 1_000_000_000
        ms = round(r.duration / 1e6)
        lines.append(f"Tue Dec 01 22:36:27 2026\t{sec}\t{ms if r.spike else 0}\t0\t{ms}\t0")
    log = tmp_path / "ab.tsv"
    log.write_text("\n".join(lines) + "\n")
    result = analyse(RunDir.open(path), app_log=read_app_log([log]))
    e = result.explanations
    assert len(e) == len(SPIKES) and set(e["cause"]) == {"syn_retransmit"}
    assert not e["inferred"].any() and (e["match"] != "none").all()
    lines_slow = sorted(int(s.split(":")[1]) for s in e["source"])
    assert lines_slow == [k + 2 for k in SPIKES]  # header is line 1, entry k is line k + 2


def test_a_given_clock_offset_is_used_and_said(tmp_path):
    """--clock-offset: the log's clock 6.5 ms ahead, given rather than estimated: every slow
    entry keeps its own SYN retransmit, and the note says the offset was given."""
    from analysis import analyse
    from common.rundir import RunDir

    app, run, path = _traced(tmp_path, SPIKES)
    ahead = run.meta.clock_wall_ns - run.meta.clock_monotonic_ns + 6_500_000
    log = app.write_log(tmp_path / "w0.csv", worker=0, fmt="csv", mono_to_wall=ahead)
    app_log = read_app_log([log])
    app_log.clock_offset_ns = -6_500_000
    result = analyse(RunDir.open(path), app_log=app_log)
    assert result.summary["app_log"]["clock_offset_ms"] == -6.5
    assert any("+6.5 ms off the kernel's (as given" in w for w in result.warnings + result.summary.get("notes", []))
    e = result.explanations
    assert len(e) == len(SPIKES) and set(e["cause"]) == {"syn_retransmit"}
    assert not e["inferred"].any()


def test_access_logs_are_read_with_the_servers_time_and_their_kind_of_timestamp(tmp_path):
    """nginx: combined + $request_time (seconds; logged when the request ended); Apache:
    combined + %D (us; %t is when the request was received)."""
    ngx = tmp_path / "nginx.log"
    ngx.write_text('127.0.0.1 - - [02/Dec/2026:06:13:22 +0000] "GET /stall HTTP/1.0" 200 6 "-" "ab/2.3" 0.200\n'
                   'not an access log line\n')
    apache = tmp_path / "apache.log"
    apache.write_text('::1 - - [02/Dec/2026:06:13:22 +0000] "GET /fast HTTP/1.0" 200 - "-" "ab/2.3" 812\n')
    log = read_app_log([ngx, apache])
    assert log.formats == ["nginx-access", "apache-access"]
    e = log.entries
    assert e["duration_ns"].tolist() == [200_000_000, 812_000]
    assert e["ts_kind"].tolist() == ["end", "start"] and (e["ts_resolution_ns"] == 1_000_000_000).all()
    assert e["ts"].tolist() == [1796192002.0, 1796192002.0]
    assert any("skipped 1 line(s)" in w for w in log.warnings)


def test_absurd_durations_and_ports_are_refused_and_said(tmp_path):
    f = tmp_path / "app.csv"
    f.write_text("start,duration_s,local_port\n1796192002.0,0.5,40000\n1796192003.0,1e300,40001\n"
                 "1796192004.0,0.2,1e30\n")
    log = read_app_log([f])
    e = log.entries
    assert e["duration_ns"].tolist() == [500_000_000, 200_000_000]
    assert e["local_port"].tolist() == [40000, 0]
    assert any("without a valid duration (first: line 3)" in w for w in log.warnings)
    assert any("local_port that is not a port" in w and "line 4" in w for w in log.warnings)
