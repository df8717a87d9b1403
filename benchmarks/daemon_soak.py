"""Soak: the trace daemon for minutes under a steady load of short-lived clients, to show that
its memory, its disk use and its kernel maps stay flat and nothing is lost.

    sudo .venv/bin/python benchmarks/daemon_soak.py                 # 10 min at 5,000 connections/s
    sudo .venv/bin/python benchmarks/daemon_soak.py --minutes 2 --rate 2000

The load (benchmarks/daemon_load.c) runs in a private network namespace: a new client process
every 200 connections (25 processes/s at 5,000/s), each connection sending a byte and closing;
every 500th connection's first SYN is dropped by the syn-loss injector, so the daemon also
records and explains a spike every 0.1 s. The daemon records in segments (--max-size 20M,
--max-age 4m: segments of 30 s here) with --expire-interval 10s. Every `--every` seconds it
prints one row: the daemon's RSS, its disk use, the learned pids and tracked connections in the
kernel maps, lost events, connections and spikes so far, the segments on disk, and CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from daemon_harness import Bench, value


def row(bench: Bench, t0: float, cpu0: float) -> dict:
    m = bench.scrape()
    return {
        "t_s": round(time.monotonic() - t0),
        "rss_mb": round(bench.rss_bytes() / 2**20, 1),
        "disk_mb": round((value(m, "spiketrace_recording_bytes") or 0) / 2**20, 2),
        "segments": int(value(m, "spiketrace_recording_segments") or 0),
        "pruned": int(value(m, "spiketrace_segments_pruned_total") or 0),
        "pids_learned": int(value(m, "spiketrace_map_slots_used", map="pids_learned") or 0),
        "pids_expired": int(value(m, "spiketrace_pids_expired_total") or 0),
        "conns_tracked": int(value(m, "spiketrace_map_slots_used", map="conns") or 0),
        "task_slots": int(value(m, "spiketrace_map_slots_used", map="task_slots") or 0),
        "lost": int(value(m, "spiketrace_lost_events_total", kind="all") or 0),
        "connections": int(value(m, "spiketrace_connections_total") or 0),
        "spikes": int(sum(v for (n, _l), v in m.items() if n == "spiketrace_spikes_total")),
        "rows_dropped": int(value(m, "spiketrace_rows_dropped_total") or 0),
        "cpu_pct": round(100 * (bench.cpu_s() - cpu0) / max(time.monotonic() - t0, 1e-9), 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="connections/s")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between rows")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--metrics-out", default=None,
                    help="write the daemon's last metrics scrape (Prometheus text) to this file")
    args = ap.parse_args(argv)
    import signal

    for sig in (signal.SIGINT,):  # Ctrl-C stops cleanly, also when started in the background
        signal.signal(sig, signal.default_int_handler)
    seconds = args.minutes * 60
    bench = Bench("soak", ["--max-size", "20M", "--max-age", "4m", "--expire-interval", "10s",
                           "--json", "--log", "/dev/null"])
    from spiketrace.scenarios import SCENARIOS

    (bench.tmp / "inj").mkdir()
    inj = SCENARIOS["syn-loss"].setup(bench.ns, bench.tmp / "inj", drop_every=500)
    rows = []
    try:
        t0, cpu0 = time.monotonic(), bench.cpu_s()
        load = bench.load(args.rate, seconds)
        print(" ".join(f"{k:>12}" for k in row(bench, t0, cpu0)), flush=True)
        while load.poll() is None:
            time.sleep(args.every)
            r = row(bench, t0, cpu0)
            rows.append(r)
            print(" ".join(f"{v:>12}" for v in r.values()), flush=True)
        print("load:", load.stdout.read().strip())
        time.sleep(12)  # one more sweep after the last client exited
        r = row(bench, t0, cpu0)
        rows.append(r)
        print("after the load:", json.dumps(r))
        lost = {dict(labels).get("kind"): int(v) for (name, labels), v in bench.scrape().items()
                if name == "spiketrace_lost_events_total" and v}
        print("lost events by kind:", json.dumps(lost) if lost else "none")
        if args.metrics_out:
            import urllib.request

            with urllib.request.urlopen(bench.url, timeout=10) as resp, open(args.metrics_out, "wb") as fh:
                fh.write(resp.read())
    finally:
        inj.teardown()
        err = bench.close()
    print("daemon:", " | ".join(line for line in err.splitlines() if not line.startswith("--"))[-600:])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
