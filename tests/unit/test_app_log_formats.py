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
