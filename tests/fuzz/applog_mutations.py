"""Seeded mutations of application logs (`spiketrace report --transactions`): odd lines, headers,
separators and cuts in original-trace's client logs, each reported against that trace with the
check of tests/fuzz/mutations.py."""
from __future__ import annotations

import random
from pathlib import Path
from typing import List

from tests.fuzz.mutations import GOLDEN, Outcome, check_report, fresh_copy

ODD_LINES = ["", "   ", "nan", "inf", "-inf", "-1", "1e309", "0", "abc", "\x00\x01", "1,2,3,4,5,6,7",
             '{"duration": "x"}', '{"duration": null}', '{"duration": -5, "start": 1e30}', "[1, 2]",
             "1795704783.29 -0.5 47260", "1795704783.29 nan 47260", "1795704783.29 inf 99999999",
             "nan nan nan", "\ufeffstart duration_s", "x" * 5000, "1795704783.29\t0.004\t47260", "1;2;3",
             "2026-13-45T99:99:99Z 0.1", "1e400 0.1 1", "0x10 0x20 0x30", "1795704783.29 0.004 -47260",
             "1795704783.29 0.004 65536", "\x1b[31m 0.1", "1795704783.29 0.004 47260 extra fields here"]
HEADERS = ["start duration_s local_port", "duration", "timestamp,latency_ms", "ts\tduration_us", "",
           "end duration_ms remote_port", '{"start": 1, "duration": 2}', "start,start,duration"]


def mutate_app_log(text: str, rng: random.Random) -> str:
    """Odd lines in the body mostly (a broken header makes the whole file unreadable, which is
    right but tests little), sometimes another header, a cut, or a changed character."""
    lines = text.splitlines()
    for _ in range(rng.randint(1, 6)):
        choice = rng.choice([0, 0, 1, 1, 2, 3, 4, 4])
        body = range(1, len(lines)) if len(lines) > 1 else range(len(lines))
        if choice == 0 and body:
            lines[rng.choice(body)] = rng.choice(ODD_LINES)
        elif choice == 1:
            lines.insert(rng.randint(1, max(len(lines), 1)), rng.choice(ODD_LINES))
        elif choice == 2 and lines and rng.random() < 0.5:
            lines[0] = rng.choice(HEADERS)
        elif choice == 3 and body:
            k = rng.choice(body)
            lines = lines[:k] if rng.random() < 0.5 else lines[:1] + lines[k:]
        elif body:
            k = rng.choice(body)
            line = lines[k]
            if line:
                pos = rng.randrange(len(line))
                lines[k] = line[:pos] + rng.choice("x.-e,\t ;0") + line[pos + 1:]
    sep = "\r\n" if rng.random() < 0.1 else "\n"
    return sep.join(lines) + (sep if rng.random() < 0.8 else "")



def run_app_log_campaign(base: Path, count: int, seed: int = 0) -> List[Outcome]:
    """`count` mutated copies of original-trace's client logs, each reported with -t."""
    run = fresh_copy("original-trace", base / "trace")
    logs = sorted((GOLDEN / "original-trace" / "clients").glob("*.log"))
    outcomes = []
    for k in range(count):
        rng = random.Random(seed * 100_003 + k)
        chosen = rng.sample(logs, rng.randint(1, len(logs)))
        paths = []
        for i, log in enumerate(chosen):
            text = log.read_text()
            if rng.random() < 0.85:
                text = mutate_app_log(text, rng)
            p = base / f"a{k:04d}-{i}.log"
            p.write_text(text, encoding="utf-8", errors="surrogateescape")
            paths.append(p)
        out = check_report(run, app_logs=paths)
        out.seed, out.mutation = k, "app logs: " + ", ".join(p.name for p in chosen)
        outcomes.append(out)
        for p in paths:
            p.unlink()
    return outcomes
