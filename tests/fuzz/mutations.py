"""Seeded mutations of real run directories (tests/data/, copied; application logs in
tests/fuzz/applog_mutations.py), and the one check every mutation must pass: `spiketrace report` ends with a report (warnings
allowed) or one clean SpikeTraceError line, never a traceback, and never silently disagrees
with meta.json's counts (rows read != counted without a warning that says so).

    python -m tests.fuzz.mutations --count 3000 --seed 7     # a longer hunt than CI's
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import random
import shutil
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from common import rundir
from common.errors import SpikeTraceError

GOLDEN = Path(__file__).resolve().parents[1] / "data"
RUNS = ("cpu-contention", "nagle-delack", "original-trace")
TABLE_COUNTS = {"transactions": "transactions", "server": "server_connections", "events": "events"}
ODD_VALUES = [None, [], {}, "", "x", "NaN", -1, 0, 1.5, True, 2 ** 70, -(2 ** 63), "2", [1, "a"],
              {"a": {"b": None}}, "\x1b[31m", float("nan"), float("inf")]


@dataclasses.dataclass
class Outcome:
    seed: int
    mutation: str
    result: str  # "report", "error", "traceback", "disagreement"
    detail: str = ""


# ---- preparing a run directory --------------------------------------------------------------
def fresh_copy(name: str, dst: Path) -> Path:
    """A golden run copied, its parts rewritten by this spiketrace's writer (page checksums)."""
    shutil.copytree(GOLDEN / name, dst)
    for part in dst.glob("*.parquet/*.parquet"):
        rundir._write_part(pq.read_table(part), part)
    return dst


def _parts(run: Path, rng: random.Random) -> List[Path]:
    return sorted(run.glob("*.parquet/*.parquet"))


# ---- meta.json mutations --------------------------------------------------------------------
def _meta(run: Path):
    return json.loads((run / "meta.json").read_text())


def _write_json(run: Path, data) -> None:
    (run / "meta.json").write_text(json.dumps(data, default=str))


def m_meta_value(run: Path, rng: random.Random) -> str:
    data = _meta(run)
    paths = list(_leaves(data))
    path = rng.choice(paths)
    value = copy.deepcopy(rng.choice(ODD_VALUES))
    _set(data, path, value)
    _write_json(run, data)
    return f"meta {'.'.join(map(str, path))} = {value!r}"


def m_meta_delete(run: Path, rng: random.Random) -> str:
    data = _meta(run)
    path = rng.choice(list(_leaves(data, keep_containers=True)))
    _delete(data, path)
    _write_json(run, data)
    return f"meta del {'.'.join(map(str, path))}"


def m_meta_counts(run: Path, rng: random.Random) -> str:
    data = _meta(run)
    key = rng.choice(["transactions", "events", "server_connections", "lost_events", "connections_counted"])
    value = rng.choice([0, 1, 5, 10 ** 9, -3, "12", None, [], 1.5])
    if not isinstance(data.get("counts"), dict):
        data["counts"] = {}
    data["counts"][key] = value
    _write_json(run, data)
    return f"meta counts.{key} = {value!r}"


def m_meta_top(run: Path, rng: random.Random) -> str:
    choice = rng.randrange(7)
    path = run / "meta.json"
    if choice == 0:
        path.write_text(json.dumps(rng.choice([[], None, "meta", 3, [1, 2]])))
        return "meta.json not an object"
    if choice == 1:
        text = path.read_text()
        path.write_text(text[:rng.randrange(len(text))])
        return "meta.json truncated"
    if choice == 2:
        path.write_bytes(b"\xff\xfe" + path.read_bytes()[2:])
        return "meta.json not UTF-8"
    if choice == 3:
        path.unlink()
        return "meta.json missing"
    if choice == 4:
        path.unlink()
        path.mkdir()
        return "meta.json a directory"
    if choice == 5:
        data = _meta(run)
        data["format_version"] = rng.choice([0, 1, 3, "2", 2.0, None, True])
        _write_json(run, data)
        return f"meta format_version {data['format_version']!r}"
    data = _meta(run)
    data[rng.choice(["kind", "status"])] = rng.choice(["", "trace", "bench", "run", "weird", 5])
    _write_json(run, data)
    return "meta kind/status changed"


def _leaves(data, prefix=(), keep_containers=False):
    if isinstance(data, dict):
        if keep_containers and prefix:
            yield prefix
        for k, v in data.items():
            yield from _leaves(v, prefix + (k,), keep_containers)
    elif isinstance(data, list) and data:
        if keep_containers:
            yield prefix
        yield from _leaves(data[0], prefix + (0,), keep_containers)
    else:
        yield prefix


def _set(data, path, value):
    for k in path[:-1]:
        data = data[k]
    if path:
        data[path[-1]] = value


def _delete(data, path):
    for k in path[:-1]:
        data = data[k]
    del data[path[-1]]


# ---- Parquet mutations ----------------------------------------------------------------------
def m_truncate(run: Path, rng: random.Random) -> str:
    part = rng.choice(_parts(run, rng))
    data = part.read_bytes()
    part.write_bytes(data[:rng.randrange(len(data))])
    return f"truncate {part.parent.name}/{part.name}"


def m_bitflip(run: Path, rng: random.Random) -> str:
    part = rng.choice(_parts(run, rng))
    data = bytearray(part.read_bytes())
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    part.write_bytes(bytes(data))
    return f"bit flips in {part.parent.name}/{part.name}"


def m_remove(run: Path, rng: random.Random) -> str:
    choice = rng.randrange(5)
    tables = sorted(run.glob("*.parquet"))
    table = rng.choice(tables)
    if choice == 0:
        part = rng.choice(sorted(table.glob("*.parquet")))
        part.unlink()
        return f"remove part {table.name}/{part.name}"
    if choice == 1:
        shutil.rmtree(table)
        return f"remove table {table.name}"
    if choice == 2:
        shutil.rmtree(table)
        table.write_bytes(b"not a directory")
        return f"table {table.name} is a file"
    if choice == 3:
        part = rng.choice(sorted(table.glob("*.parquet")))
        shutil.copy(part, part.with_name("zz-copy-000001.parquet"))
        return f"duplicate part {table.name}/{part.name}"
    part = rng.choice(sorted(table.glob("*.parquet")))
    part.write_bytes(b"")
    return f"empty file {table.name}/{part.name}"


def m_column(run: Path, rng: random.Random) -> str:
    part = rng.choice(_parts(run, rng))
    table = pq.read_table(part)
    if table.num_columns == 0:
        return "no columns"
    i = rng.randrange(table.num_columns)
    name = table.column_names[i]
    col = table.column(i)
    choice = rng.randrange(6)
    if choice == 0:
        table = table.remove_column(i)
        what = "dropped"
    elif choice == 1:
        table = table.set_column(i, name, col.cast(pa.string()) if not pa.types.is_string(col.type)
                                 else pa.array([f"x{k}" for k in range(len(col))]))
        what = "as strings"
    elif choice == 2:
        table = table.set_column(i, name, pa.nulls(len(col), type=col.type))
        what = "all null"
    elif choice == 3:
        values = [rng.choice([0, -1, 2 ** 62, -(2 ** 62), 7]) for _ in range(len(col))]
        table = table.set_column(i, name, pa.array(values, pa.int64()))
        what = "odd int64 values"
    elif choice == 4:
        table = table.set_column(i, name, pa.array([rng.random() * 1e12 for _ in range(len(col))], pa.float64()))
        what = "as float64"
    else:
        table = table.append_column("unexpected", pa.array([1] * table.num_rows, pa.int8()))
        what = "extra column"
    rundir._write_part(table, part)
    return f"column {part.parent.name}:{name} {what}"


def m_empty_part(run: Path, rng: random.Random) -> str:
    part = rng.choice(_parts(run, rng))
    rundir._write_part(pq.read_table(part).slice(0, 0), part)
    return f"zero-row part {part.parent.name}/{part.name}"


MUTATORS: Dict[str, Callable[[Path, random.Random], str]] = {
    "meta_value": m_meta_value, "meta_delete": m_meta_delete, "meta_counts": m_meta_counts,
    "meta_top": m_meta_top, "truncate": m_truncate, "bitflip": m_bitflip, "remove": m_remove,
    "column": m_column, "empty_part": m_empty_part,
}


# ---- the check ------------------------------------------------------------------------------
def check_report(run: Path, app_logs: Optional[List[Path]] = None, render_all: bool = False) -> Outcome:
    """Analyse and render `run` as `spiketrace report` does (in process); classify what happens."""
    from rich.console import Console

    from analysis import analyse
    from analysis.report import data as report_data
    from analysis.report import markdown, print_summary, write_reports

    outcome = Outcome(0, "", "report")
    try:
        rd = rundir.RunDir.open(run)
        app_log = None
        if app_logs:
            from analysis.applog import read_app_log

            app_log = read_app_log([str(p) for p in app_logs])
        result = analyse(rd, app_log=app_log)
        print_summary(result, Console(file=io.StringIO(), width=100))
        markdown.render(report_data.build(result))
        json.dumps(result.summary, allow_nan=False, default=str)
        if render_all:
            write_reports(rd, result, force=True, out_dir=run.parent / f"{run.name}-out")
            cli = _cli(["report", str(run), "--format", "terminal,md", "--force",
                        "--out", str(run.parent / f"{run.name}-cli")])
            if cli:
                return Outcome(0, "", "traceback", cli)
    except SpikeTraceError as exc:
        text = str(exc)
        if "\n" in text.strip() or not text.strip():
            return Outcome(0, "", "traceback", f"not one line: {text!r}")
        return Outcome(0, "", "error", text)
    except Exception:  # anything else would reach the user as a traceback
        return Outcome(0, "", "traceback", traceback.format_exc(limit=-6))
    disagreement = _disagreement(rd, result)
    if disagreement:
        return Outcome(0, "", "disagreement", disagreement)
    return outcome


def _cli(argv: List[str]) -> str:
    """`spiketrace ARGV` in process: '' if it ended as a user sees it should (exit 0, or one
    `spiketrace: ...` line on stderr), else what went wrong."""
    from spiketrace.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as exc:
        code = exc.code
    except Exception:
        return traceback.format_exc(limit=-6)
    lines = err.getvalue().strip().splitlines()
    if code not in (None, 0) and not (len(lines) == 1 and lines[0].startswith("spiketrace: ")):
        return f"exit {code}, stderr: {err.getvalue()!r}"
    return ""


def _disagreement(rd, result) -> str:
    """Rows read versus meta.json's counts: any difference must be in a warning."""
    counts = rd.meta.counts or {}
    got = {"transactions": result.summary["counts"]["transactions"],
           "server": result.summary["counts"]["server_connections"],
           "events": result.summary["counts"]["events"]}
    if result.summary["run"]["source"] != "transactions":
        got.pop("transactions")
    for table, key in TABLE_COUNTS.items():
        if table not in got or key not in counts:
            continue
        if got[table] != counts[key] and not any(table in w for w in result.warnings):
            return f"{table}: read {got[table]:,}, meta.json counts {counts[key]:,}, no warning"
    return ""


def signature(o: Outcome) -> str:
    """What a failure is, without its instance: the innermost frame in this project + the error."""
    if o.result != "traceback" or "Traceback" not in o.detail:
        return f"{o.result}: {o.detail[:80]}"
    import re

    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', o.detail)
    ours = [f for f in frames if "/site-packages/" not in f[0] and "/fuzz/" not in f[0]]
    where = f"{Path(ours[-1][0]).name}:{ours[-1][1]} {ours[-1][2]}" if ours else "?"
    last = o.detail.strip().splitlines()[-1]
    return f"{where}: {last[:100]}"


def run_campaign(base: Path, count: int, seed: int = 0, render_every: int = 15) -> List[Outcome]:
    """`count` seeded mutations (one to three each) of copies of the golden runs."""
    outcomes = []
    names = sorted(MUTATORS)
    masters = {name: fresh_copy(name, base / f"master-{name}") for name in RUNS}
    for k in range(count):
        rng = random.Random(seed * 100_003 + k)
        name = RUNS[k % len(RUNS)]
        run = base / f"m{k:04d}"
        shutil.copytree(masters[name], run)
        done = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            try:
                done.append(MUTATORS[rng.choice(names)](run, rng))
            except Exception as exc:  # an earlier mutation removed what this one changes
                done.append(f"(mutation skipped: {type(exc).__name__})")
        out = check_report(run, render_all=(k % render_every == 0))
        out.seed, out.mutation = k, f"{name}: " + "; ".join(done)
        outcomes.append(out)
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(base / f"{run.name}-out", ignore_errors=True)
    return outcomes


def main() -> None:
    import argparse
    import collections
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from tests.fuzz.applog_mutations import run_app_log_campaign

        outcomes = run_campaign(Path(tmp), args.count, args.seed)
        outcomes += run_app_log_campaign(Path(tmp), args.count // 3, args.seed)
    print(collections.Counter(o.result for o in outcomes))
    by_signature = collections.defaultdict(list)
    for o in outcomes:
        if o.result in ("traceback", "disagreement"):
            by_signature[signature(o)].append(o)
    for sig, found in sorted(by_signature.items(), key=lambda x: -len(x[1])):
        print(f"=== {len(found)} x {sig}\n  e.g. #{found[0].seed}: {found[0].mutation}")
        print("  " + found[0].detail.replace("\n", "\n  "))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
