"""Tracer overhead on the seed workload: transactions/s traced vs untraced.

The workload is the question's: a new connection per transaction, 3,000 bytes sent and echoed
twice, server with SO_LINGER {1, 0} (so every close is a reset) and listen(backlog); N client
processes in closed loop, running throughout.

How it is compared: this VM's speed wanders by ~10% from one tenth of a second to the next (a
pure CPU loop shows it too), so two runs of a few seconds each differ by as much as the effect
measured. The tracer is therefore compiled and loaded once, and its probes are attached
(Tracer.resume) and detached (Tracer.pause) between short windows, in pairs whose order
alternates (untraced-traced, traced-untraced, ...); the clients' completed transactions are
counted per window. Each pair gives a ratio, and with a hundred pairs or more the median ratio
is steady to about a percent. CPU time per transaction (clients + server, from
/proc/<pid>/schedstat; BPF programs are charged to the task they interrupt) is printed too.

    sudo .venv/bin/python benchmarks/tracer_overhead.py                 # 1 and 4 clients
    sudo .venv/bin/python benchmarks/tracer_overhead.py --pairs 300 --clients 1 --config run

Two tracer configurations are measured against the same untraced windows: as `spiketrace run`
sets it (the bench server logs its own accept times, so the accept-wait probe is left out) and
as `spiketrace trace` sets it (every probe).

Targets: traced/untraced >= 0.97 with 1 client, >= 0.95 with 4 clients.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spiketrace.orchestrate import TRACER_FUNCTION_ONLY, TRACER_SKIP  # noqa: E402

PAYLOAD = b"asd" * 1000
TARGETS = {1: 0.97}  # else 0.95
SETTLE_S = 0.05      # after attaching or detaching, before a window starts


def _recv_exactly(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(n - got)
        if not chunk:
            raise ConnectionError("short reply")
        got += len(chunk)


def _server_worker(lsock: socket.socket) -> None:
    while True:
        conn, _ = lsock.accept()
        try:
            for _ in range(2):
                _recv_exactly(conn, len(PAYLOAD))
                conn.sendall(PAYLOAD)
        except OSError:
            pass
        conn.close()


def _client(port: int, done, slot: int, stop, deadline: float) -> None:
    """Closed loop until `stop` (or the deadline): done[slot] = transactions completed."""
    addr = ("127.0.0.1", port)
    n = 0
    while not stop.is_set() and time.monotonic() < deadline:
        s = socket.socket()
        while s.connect_ex(addr) != 0:  # the seed's busy retry
            pass
        for _ in range(2):
            s.sendall(PAYLOAD)
            _recv_exactly(s, len(PAYLOAD))
        s.close()
        n += 1
        done[slot] = n


def start_server(workers: int):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(max(1, workers))
    procs = [mp.Process(target=_server_worker, args=(lsock,), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    return lsock.getsockname()[1], procs, lsock


def _cpu_ns(pids) -> int:
    """Time on CPU of these processes' main threads, ns (/proc/<pid>/schedstat)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/schedstat") as fh:
            total += int(fh.read().split()[0])
    return total


class Load:
    """N clients in closed loop against the server, counted from outside."""

    def __init__(self, port: int, clients: int, max_seconds: float):
        self.done = mp.RawArray("q", clients)
        self.stop = mp.Event()
        deadline = time.monotonic() + max_seconds
        self.procs = [mp.Process(target=_client, args=(port, self.done, i, self.stop, deadline),
                                 daemon=True) for i in range(clients)]
        for p in self.procs:
            p.start()

    def pids(self):
        return [p.pid for p in self.procs]

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()


def window(load: Load, seconds: float, cpu_pids) -> tuple:
    """(transactions/s, CPU µs per transaction) over the next `seconds`."""
    n0, c0, t0 = sum(load.done), _cpu_ns(cpu_pids), time.monotonic()
    time.sleep(seconds)
    n1, c1, t1 = sum(load.done), _cpu_ns(cpu_pids), time.monotonic()
    n = max(1, n1 - n0)
    return n / (t1 - t0), (c1 - c0) / 1e3 / n


# the tracer as each command configures it (spiketrace trace: every probe)
CONFIGS = {"run": {"skip": list(TRACER_SKIP), "function_only": list(TRACER_FUNCTION_ONLY)},
           "trace": {}}


def measure(clients: int, pairs: int, seconds: float, configs) -> dict:
    """Per configuration: median ratio of traced to untraced windows over `pairs` rounds; each
    round has one untraced window and one per configuration, in an order that rotates."""
    from tracer.btf import netns_inum_of
    from tracer.session import Tracer, TracerConfig

    port, servers, lsock = start_server(clients)
    names = [None] + list(configs)
    runs = {name: [] for name in names}  # -> [(transactions/s, CPU µs per transaction)]
    tracers = {}
    load = Load(port, clients,
                max_seconds=60 + pairs * len(names) * (seconds + SETTLE_S + 0.5))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cpu_pids = [p.pid for p in servers] + load.pids()
                for name in configs:
                    tracer = Tracer(TracerConfig(ports=[port], netns_inum=netns_inum_of(os.getpid()),
                                                 **CONFIGS[name]), Path(tmp) / name)
                    (Path(tmp) / name).mkdir()
                    tracers[name] = tracer
                    tracer.start()
                    tracer.add_pids(cpu_pids)
                    tracer.start_thread()
                    tracer.pause()
                attached = None
                time.sleep(0.5)  # warm-up
                for i in range(pairs):
                    k = i % len(names)
                    for name in names[k:] + names[:k]:
                        if name != attached:
                            if attached is not None:
                                tracers[attached].pause()
                            if name is not None:
                                tracers[name].resume()
                            attached = name
                        time.sleep(SETTLE_S)
                        runs[name].append(window(load, seconds, cpu_pids))
            finally:
                stats = {name: t.stop() for name, t in tracers.items()}
    finally:
        load.close()
        for p in servers:
            p.kill()
        lsock.close()
    untraced = runs[None]
    out = {}
    for name in configs:
        traced = runs[name]
        ratios = [t[0] / u[0] for t, u in zip(traced, untraced)]
        out[name] = {"pairs": len(ratios),
                     "untraced": statistics.median(u[0] for u in untraced),
                     "traced": statistics.median(t[0] for t in traced),
                     "median_ratio": statistics.median(ratios),
                     "quartiles": statistics.quantiles(ratios, n=4),
                     "cpu_us_untraced": statistics.median(u[1] for u in untraced),
                     "cpu_us_traced": statistics.median(t[1] for t in traced),
                     "cpu_ratio": statistics.median(t[1] / u[1] for t, u in zip(traced, untraced)),
                     # connections open across one of this benchmark's own detaches miss
                     # the changes made meanwhile, and the tracer says so (missed_state_change):
                     # not a loss of the tracer's, so not counted here
                     "lost_events": stats[name].lost_events
                     - stats[name].lost_by_kind.get("missed_state_change", 0),
                     "stats": stats[name]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=120, help="rounds of windows (>= 5)")
    ap.add_argument("--seconds", type=float, default=0.25, help="length of each window")
    ap.add_argument("--clients", default="1,4", help="comma-separated client counts")
    ap.add_argument("--config", default="run,trace",
                    help="tracer configurations, comma-separated: run (as `spiketrace run` sets "
                         "it: no accept-wait probe), trace (every probe)")
    args = ap.parse_args(argv)
    if args.pairs < 5 or args.seconds <= 0:
        ap.error("--pairs must be >= 5 and --seconds > 0")
    configs = [c for c in args.config.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        ap.error(f"--config: choose from {', '.join(CONFIGS)}")
    for clients in (int(c) for c in args.clients.split(",")):
        for name, r in measure(clients, args.pairs, args.seconds, configs).items():
            q1, _, q3 = r["quartiles"]
            print(f"{clients} client(s), tracer as `spiketrace {name}`: untraced {r['untraced']:,.0f}/s, "
                  f"traced {r['traced']:,.0f}/s, median ratio {r['median_ratio']:.3f} "
                  f"(target >= {TARGETS.get(clients, 0.95)}) over {r['pairs']} pairs of "
                  f"{args.seconds:g} s (quartiles {q1:.3f}-{q3:.3f}); CPU per transaction "
                  f"{r['cpu_us_untraced']:.0f} -> {r['cpu_us_traced']:.0f} µs (median pair ratio "
                  f"{r['cpu_ratio']:.3f}); lost events {r['lost_events']}; {r['stats']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
