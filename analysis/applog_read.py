"""Reading an application's latency log (`spiketrace report --transactions FILE`): the formats
accepted, each entry's duration, timestamp (as written; analysis.applog converts and matches)
and ports. See analysis.applog for the formats and docs/your-application.md.

Formats are told apart by their first line, or forced with `--log-format`:
- `ab-g`: ApacheBench's `-g FILE` TSV (`starttime seconds ctime dtime ttime wait`): start in whole
  epoch seconds (`seconds`), duration `ttime` ms;
- `pgbench-l`: pgbench's `-l` per-transaction log (`client_id transaction_no time script_no
  time_epoch time_us [schedule_lag [retries]]`, no header): duration `time` us, *end* at
  `time_epoch.time_us`; `script_no` is kept (a test can tell which script a transaction ran);
- `nginx-access`, `apache-access`: a web server's access log in the common or combined format
  with the request's time added last: nginx `$request_time` (seconds, ms resolution; the entry
  *ends* at `[$time_local]`, when it was logged), Apache `%D` (us; the entry *starts* at `[%t]`,
  when the request was received); timestamps in whole seconds;
- `plain`, `csv`, `tsv`, `columns`, `jsonl`: see analysis.applog.

Over 400 lines on purpose: each format's reader is short, and all share one line loop and one
set of refusal messages (a file none of them reads gets one line naming every format).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from common.errors import SpikeTraceError
from common.vocab import LOG_FORMATS

S = 1_000_000_000
MS = 1_000_000
MAX_DURATION_NS = 366 * 86_400 * S
_DURATION = re.compile(r"^(duration|latency|elapsed)(?:_(s|ms|us|ns))?$")
_DUR_SCALE = {None: 1e9, "s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}
TS_COLUMNS = {"start": "start", "t_start": "start", "end": "end", "t_end": "end",
              "timestamp": None, "ts": None, "time": None}


@dataclasses.dataclass
class AppLog:
    """The entries of one or more application log files, as read (times not yet converted)."""

    entries: pd.DataFrame  # file, line, worker, duration_ns, ts (float; NaN none), ts_iso, ts_kind,
    #                        local_port, remote_port
    files: List[str]
    formats: List[str]  # per file: plain, csv, tsv, columns, jsonl
    warnings: List[str] = dataclasses.field(default_factory=list)
    clock: str = "auto"  # auto | wall | monotonic
    clock_offset_ns: Optional[int] = None  # added to the log's times (--clock-offset); None: estimated

    def __len__(self) -> int:
        return len(self.entries)


# ---- reading ------------------------------------------------------------------------------
FORMATS = LOG_FORMATS
# common / combined log format with the request's time as the last field
_ACCESS = re.compile(r'^\S+ \S+ \S+ \[(?P<time>[^\]]+)\] "[^"]*" \d{3} \S+(?: "[^"]*" "[^"]*")?.* (?P<dur>[0-9.]+)$')
AB_G_HEADER = ["starttime", "seconds", "ctime", "dtime", "ttime", "wait"]


def read_app_log(paths: Sequence, ts_kind: Optional[str] = None, clock: str = "auto",
                 log_format: Optional[str] = None) -> AppLog:
    """Read application log files (see the module docstring for the formats); `log_format`
    forces one of FORMATS instead of telling it from the first line."""
    if log_format is not None and log_format not in FORMATS:
        raise SpikeTraceError(f"--log-format {log_format}: choose one of {', '.join(FORMATS)}")
    if ts_kind not in (None, "start", "end"):
        raise SpikeTraceError(f"--ts-kind {ts_kind}: choose start or end")
    if clock not in ("auto", "wall", "monotonic"):
        raise SpikeTraceError(f"--clock {clock}: choose auto, wall or monotonic")
    parts, formats, warnings = [], [], []
    for worker, path in enumerate(paths):
        df, fmt, warn = _read_one(Path(path), ts_kind or "start", log_format)
        df["worker"] = worker
        df["file"] = str(path)
        parts.append(df)
        formats.append(fmt)
        warnings += warn
    if not parts:
        raise SpikeTraceError("no application log given")
    entries = pd.concat(parts, ignore_index=True)
    return AppLog(entries=entries, files=[str(p) for p in paths], formats=formats, warnings=warnings,
                  clock=clock)


def _read_one(path: Path, ts_kind: str, forced: Optional[str] = None) -> Tuple[pd.DataFrame, str, List[str]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise SpikeTraceError(f"{path}: no such file (--transactions)")
    except OSError as exc:
        raise SpikeTraceError(f"{path}: cannot read it ({exc.strerror})")
    lines = text.splitlines()
    numbered = [(i + 1, ln.strip()) for i, ln in enumerate(lines)]
    numbered = [(n, ln) for n, ln in numbered if ln and not ln.startswith("#")]
    if not numbered:
        raise SpikeTraceError(f"{path}: empty (no entries)")
    first = numbered[0][1]
    fmt = forced or _tell_format(first)
    if fmt == "ab-g":
        return _read_ab_g(path, numbered)
    if fmt == "pgbench-l":
        return _read_pgbench(path, numbered)
    if fmt in ("nginx-access", "apache-access"):
        return _read_access(path, numbered, fmt)
    if fmt == "jsonl":
        return _read_jsonl(path, numbered, ts_kind)
    if fmt == "plain":
        return _read_plain(path, numbered)
    if fmt is None:
        raise SpikeTraceError(
            f"{path}:{numbered[0][0]}: not a log format spiketrace reads (several numbers and no header "
            f"line); accepted: {', '.join(FORMATS)} (docs/your-application.md). Add a header naming the "
            "columns (e.g. `start duration_s local_port`), or force a format with --log-format")
    return _read_table(path, numbered, ts_kind)


def _tell_format(first: str) -> Optional[str]:
    """The format of a file from its first line; None if it is numbers no known format has."""
    if first.startswith("{"):
        return "jsonl"
    if first.split("\t") == AB_G_HEADER or first.split() == AB_G_HEADER:
        return "ab-g"
    access = _ACCESS.match(first)
    if access:
        return "nginx-access" if "." in access["dur"] else "apache-access"
    if _is_number(first):
        cells = first.replace(",", " ").split()
        if len(cells) == 1:
            return "plain"
        if _pgbench_row(cells) is not None:
            return "pgbench-l"
        return None
    return "table"


def _pgbench_row(cells: List[str]) -> Optional[Tuple[int, int, int, float]]:
    """(client, duration us, script, end epoch s) of a pgbench -l line, None if it is not one:
    6 to 8 integer fields, `time_epoch` a plausible epoch second, `time_us` below a second."""
    if not 6 <= len(cells) <= 8:
        return None
    try:
        v = [int(c) for c in cells[:6]]
    except ValueError:
        return None
    client, _txn, dur_us, script, epoch, usec = v
    if dur_us < 0 or not 1e8 < epoch < 1e10 or not 0 <= usec < 1_000_000:
        return None
    return client, dur_us, script, epoch + usec / 1e6


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", " ").split()[0])
        return True
    except (ValueError, IndexError):
        return False


def _empty_frame(n: int) -> Dict[str, np.ndarray]:
    return {"line": np.zeros(n, np.int64), "duration_ns": np.zeros(n, np.int64),
            "ts": np.full(n, np.nan), "ts_iso": np.full(n, None, dtype=object),
            "ts_kind": np.full(n, "", dtype=object), "local_port": np.zeros(n, np.int64),
            "remote_port": np.zeros(n, np.int64), "ts_resolution_ns": np.zeros(n, np.int64),
            "script": np.full(n, -1, np.int64)}


def _parse_lines(path: Path, numbered, parse, what: str):
    """(values, their line numbers, a warning list) of the lines `parse` reads (it returns None
    for a line that is not one of `what`; the skipped lines are counted in the warning)."""
    values, line_no, bad = [], [], []
    for n, ln in numbered:
        v = parse(ln)
        if v is None:
            bad.append(n)
            continue
        values.append(v)
        line_no.append(n)
    warn = [f"{path}: skipped {len(bad):,} line(s) that are not {what} (first: line {bad[0]})"] if bad else []
    return values, np.asarray(line_no, np.int64), warn


def _plain_value(ln: str) -> Optional[float]:
    cells = ln.split()
    try:
        v = float(cells[0]) if len(cells) == 1 else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) and v >= 0 else None


def _read_plain(path: Path, numbered) -> Tuple[pd.DataFrame, str, List[str]]:
    nums, line_no, warn = _parse_lines(path, numbered, _plain_value, "a duration in seconds")
    cols = _empty_frame(len(nums))
    cols["line"] = line_no
    cols["duration_ns"] = np.round(np.asarray(nums, float) * 1e9).astype(np.int64)
    return pd.DataFrame(cols), "plain", warn


def _columns(names: List[str], path: Path, ts_kind: str) -> Dict[str, Tuple[str, object]]:
    """Header names -> role: duration (scale), start/end/ts (kind), local_port, remote_port."""
    seen = set()
    for name in names:
        key = str(name).strip().lower()
        if key in seen:
            raise SpikeTraceError(f"{path}: column {name!r} appears twice in the header")
        seen.add(key)
    roles: Dict[str, Tuple[str, object]] = {}
    for name in names:
        key = str(name).strip().lower()
        m = _DURATION.match(key)
        if m and "duration" not in roles:
            roles["duration"] = (name, _DUR_SCALE[m.group(2)])
        elif key in TS_COLUMNS:
            kind = TS_COLUMNS[key] or ts_kind
            roles.setdefault(kind, (name, None))
        elif key in ("local_port", "remote_port"):
            roles[key] = (name, None)
    if "duration" not in roles and not ("start" in roles and "end" in roles):
        raise SpikeTraceError(
            f"{path}: no duration column (name one duration_s, duration_ms, duration_us, duration_ns "
            f"or duration, or give both start and end); columns: {', '.join(map(str, names))}")
    return roles


def _frame_from_columns(path: Path, data: pd.DataFrame, line_no: np.ndarray, ts_kind: str,
                        fmt: str) -> Tuple[pd.DataFrame, str, List[str]]:
    roles = _columns(list(data.columns), path, ts_kind)
    n = len(data)
    cols = _empty_frame(n)
    cols["line"] = line_no.astype(np.int64)
    warn: List[str] = []
    ts_vals = {}
    for kind in ("start", "end"):
        if kind in roles:
            ts_vals[kind] = _timestamps(data[roles[kind][0]], path)
    if "duration" in roles:
        name, scale = roles["duration"]
        with np.errstate(over="ignore"):  # an absurd value becomes inf, refused below
            dur = pd.to_numeric(data[name], errors="coerce").to_numpy(dtype=float) * scale
    else:
        (s_num, s_iso), (e_num, e_iso) = ts_vals["start"], ts_vals["end"]
        if s_iso is not None and e_iso is not None:
            a, b = _iso_to_ns(s_iso), _iso_to_ns(e_iso)
            dur = np.where((a == _NO_TIME) | (b == _NO_TIME), np.nan, (b - a).astype(float))
        elif s_iso is not None or e_iso is not None:
            raise SpikeTraceError(f"{path}: start and end must both be ISO 8601 or both numbers")
        else:
            dur = _scale_like(e_num) - _scale_like(s_num)
    ok = np.isfinite(dur) & (dur >= 0) & (dur < MAX_DURATION_NS)  # beyond a year: not a duration
    if (~ok).any():
        first = int(line_no[np.flatnonzero(~ok)[0]])
        warn.append(f"{path}: skipped {int((~ok).sum()):,} entr(ies) without a valid duration (first: line {first})")
    cols["duration_ns"] = np.where(ok, np.round(np.nan_to_num(dur)), 0).astype(np.int64)
    kind = "start" if "start" in ts_vals else ("end" if "end" in ts_vals else "")
    if kind:
        num, iso = ts_vals[kind]
        cols["ts"] = num
        cols["ts_iso"] = iso if iso is not None else cols["ts_iso"]
        cols["ts_kind"] = np.full(n, kind, dtype=object)
    for port in ("local_port", "remote_port"):
        if port in roles:
            v = pd.to_numeric(data[roles[port][0]], errors="coerce").to_numpy(dtype=float)
            valid = np.isfinite(v) & (v >= 0) & (v <= 65535) & (v == np.round(v))
            given = ~np.isnan(v)
            if (given & ~valid & ok).any():
                first = int(line_no[np.flatnonzero(given & ~valid & ok)[0]])
                warn.append(f"{path}: {int((given & ~valid & ok).sum()):,} entr(ies) with a {port} that is not "
                            f"a port (0-65535), taken as unknown (first: line {first})")
            cols[port] = np.where(valid, v, 0).astype(np.int64)
    df = pd.DataFrame(cols)
    return df[ok].reset_index(drop=True), fmt, warn


def _scale_like(values: np.ndarray) -> np.ndarray:
    """Numbers in one unit for a start/end difference: epoch seconds (< 1e11) to ns."""
    v = np.asarray(values, float)
    med = np.nanmedian(v) if np.isfinite(v).any() else 0
    return v * 1e9 if med < 1e11 else v


def _timestamps(col: pd.Series, path: Path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(numbers or NaN, ISO strings or None): numbers are kept as given (their unit is told at
    match time, against the run's clock); strings that are not numbers must be ISO 8601."""
    num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    text = col.astype(object).where(col.notna(), None)
    strings = np.isnan(num) & text.notna().to_numpy()
    if not strings.any():
        return num, None
    iso = np.full(len(col), None, dtype=object)
    iso[strings] = text.to_numpy()[strings]
    return num, iso


_NO_TIME = np.iinfo(np.int64).min
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _iso_to_ns(iso: np.ndarray) -> np.ndarray:
    """ISO 8601 strings -> epoch ns as int64 (exact; _NO_TIME where None). Naive times are
    taken as the local time zone."""
    out = np.full(len(iso), _NO_TIME, dtype=np.int64)
    local = _dt.datetime.now().astimezone().tzinfo
    for i, s in enumerate(iso):
        if s is None:
            continue
        txt = str(s).strip().replace("Z", "+00:00")
        try:
            d = _dt.datetime.fromisoformat(txt)
        except ValueError:
            try:
                d = _dt.datetime.fromisoformat(txt.replace(" ", "T", 1))
            except ValueError:
                raise SpikeTraceError(f"unreadable timestamp {s!r}: use ISO 8601 "
                                      "(2026-11-26T14:00:00.123+00:00) or epoch seconds")
        if d.tzinfo is None:
            d = d.replace(tzinfo=local)
        delta = d - _EPOCH
        out[i] = (delta.days * 86400 + delta.seconds) * S + delta.microseconds * 1000
    return out


def _read_table(path: Path, numbered, ts_kind: str) -> Tuple[pd.DataFrame, str, List[str]]:
    header = numbered[0][1]
    if "," in header:
        sep, fmt = ",", "csv"
    elif "\t" in header:
        sep, fmt = "\t", "tsv"
    else:
        sep, fmt = None, "columns"
    names = [h.strip() for h in (header.split(sep) if sep else header.split())]
    rows, line_no = [], []
    for n, ln in numbered[1:]:
        cells = [c.strip() for c in (ln.split(sep) if sep else ln.split())]
        if len(cells) < len(names):
            cells += [""] * (len(names) - len(cells))
        rows.append(cells[:len(names)])
        line_no.append(n)
    data = pd.DataFrame(rows, columns=names).replace("", np.nan)
    return _frame_from_columns(path, data, np.asarray(line_no, np.int64), ts_kind, fmt)


def _read_ab_g(path: Path, numbered) -> Tuple[pd.DataFrame, str, List[str]]:
    """ApacheBench -g: `starttime<TAB>seconds<TAB>ctime<TAB>dtime<TAB>ttime<TAB>wait`, times in
    ms, the start in whole epoch seconds (so each start is known to within a second)."""
    rows, line_no, warn = _parse_lines(path, numbered[1:], _ab_g_row, "ab -g rows")
    cols = _empty_frame(len(rows))
    cols["line"] = line_no
    cols["duration_ns"] = np.asarray([round(t * 1e6) for _, t in rows], np.int64)
    cols["ts"] = np.asarray([float(sec) for sec, _ in rows], float)
    cols["ts_kind"] = np.full(len(rows), "start", dtype=object)
    cols["ts_resolution_ns"] = np.full(len(rows), S, np.int64)
    return pd.DataFrame(cols), "ab-g", warn


def _ab_g_row(ln: str) -> Optional[Tuple[int, float]]:
    """(start in epoch seconds, ttime ms) of an ab -g line, None if it is not one."""
    cells = ln.split("\t")
    try:
        seconds, ttime = int(cells[1]), float(cells[4])
    except (IndexError, ValueError):
        return None
    return (seconds, ttime) if math.isfinite(ttime) and ttime >= 0 else None


def _read_pgbench(path: Path, numbered) -> Tuple[pd.DataFrame, str, List[str]]:
    """pgbench -l: one line per transaction, its end at `time_epoch.time_us` and its latency
    `time` in us (with -C, connection included); `script_no` is kept as `script`."""
    rows, line_no, warn = _parse_lines(path, numbered, lambda ln: _pgbench_row(ln.split()),
                                       "pgbench -l rows")
    cols = _empty_frame(len(rows))
    cols["line"] = line_no
    cols["duration_ns"] = np.asarray([d * 1000 for _, d, _, _ in rows], np.int64)
    cols["ts"] = np.asarray([end for _, _, _, end in rows], float)
    cols["ts_kind"] = np.full(len(rows), "end", dtype=object)
    cols["ts_resolution_ns"] = np.full(len(rows), 1000, np.int64)
    cols["script"] = np.asarray([sc for _, _, sc, _ in rows], np.int64)
    return pd.DataFrame(cols), "pgbench-l", warn


def _read_access(path: Path, numbered, fmt: str) -> Tuple[pd.DataFrame, str, List[str]]:
    """A web server's access log (see the module docstring): nginx's entry ends at its
    timestamp, Apache's starts at it; both to the second."""
    scale = 1e9 if fmt == "nginx-access" else 1e3
    rows, line_no, warn = _parse_lines(path, numbered, lambda ln: _access_row(ln, scale),
                                       f"{fmt} lines (common/combined format, the request's time last)")
    cols = _empty_frame(len(rows))
    cols["line"] = line_no
    cols["duration_ns"] = np.asarray([d for _, d in rows], np.int64)
    cols["ts"] = np.asarray([t for t, _ in rows], float)
    cols["ts_kind"] = np.full(len(rows), "end" if fmt == "nginx-access" else "start", dtype=object)
    cols["ts_resolution_ns"] = np.full(len(rows), S, np.int64)
    return pd.DataFrame(cols), fmt, warn


def _access_row(ln: str, scale: float) -> Optional[Tuple[float, int]]:
    """(epoch seconds, duration ns) of an access-log line, None if it is not one."""
    m = _ACCESS.match(ln)
    if not m:
        return None
    try:
        when = _dt.datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z").timestamp()
        dur = float(m["dur"]) * scale
    except ValueError:
        return None
    return (when, int(round(dur))) if math.isfinite(dur) and dur >= 0 else None


def _read_jsonl(path: Path, numbered, ts_kind: str) -> Tuple[pd.DataFrame, str, List[str]]:
    rows, line_no = [], []
    for n, ln in numbered:
        try:
            obj = json.loads(ln)
        except ValueError as exc:
            raise SpikeTraceError(f"{path}:{n}: not a JSON object ({exc})")
        if not isinstance(obj, dict):
            raise SpikeTraceError(f"{path}:{n}: not a JSON object")
        rows.append(obj)
        line_no.append(n)
    data = pd.DataFrame(rows)
    return _frame_from_columns(path, data, np.asarray(line_no, np.int64), ts_kind, "jsonl")


