"""`spiketrace trace`: the daemon's command line (the daemon is spiketrace.daemon)."""
from __future__ import annotations

import signal
from pathlib import Path

import click

from common.errors import SpikeTraceError


@click.command(name="trace")
@click.option("-p", "--port", "ports", type=int, multiple=True, metavar="PORT",
              help="Trace connections to or from this TCP port (repeatable).")
@click.option("--pid", "pids", type=int, multiple=True, metavar="PID",
              help="Trace this process's threads and sockets (repeatable).")
@click.option("--cgroup", metavar="PATH", default=None,
              help="Trace tasks in this cgroup v2 (absolute, or relative to the cgroup2 mount).")
@click.option("--netns", metavar="NAME", default=None,
              help="Trace sockets of this network namespace (`ip netns` name or ns file path).")
@click.option("-d", "--duration", "duration_s", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/<UTC time>-trace).")
@click.option("--force", is_flag=True, help="Reuse a non-empty --out directory.")
@click.option("--threshold", "threshold_ms", type=click.FloatRange(min=0, min_open=True),
              default=50.0, show_default=True,
              help="Record a connection in detail when its setup took longer than this many ms.")
@click.option("--all-events", is_flag=True,
              help="Record every state change too (more overhead; for short traces).")
@click.option("-q", "--quiet", is_flag=True, help="No line per event; summaries only.")
@click.option("--summary-interval", "summary_interval_s", type=click.FloatRange(min=1),
              default=10.0, show_default=True, help="Seconds between summary lines.")
@click.option("--flush-interval", "flush_interval_s", type=click.FloatRange(min=1), default=30.0,
              show_default=True,
              help="Seconds between flushes of the counters and meta.json (the tracer's own "
                   "tables reach disk every 5 s).")
@click.option("--print-bpf", is_flag=True, hidden=True,
              help="Print the final BPF source and flags, then exit.")
def command(print_bpf, **kwargs):
    """Trace an existing application's TCP traffic and record a run directory: a daemon that
    runs for minutes to days at low overhead. Filters (port, pid, cgroup, netns) combine;
    without any, all TCP traffic of the host is traced.

    It prints one line per notable event (retransmits, drops, resets, failed connects, long
    accept or run-queue waits, slow connections) and a summary every --summary-interval
    seconds. Stop it with Ctrl-C or SIGTERM; then explain what it saw with
    `spiketrace report`. See docs/trace.md.

    \b
    Examples:
      sudo spiketrace trace --port 8080                      # a server on port 8080
      sudo spiketrace trace --port 5432 --duration 3600 -q   # an hour, summaries only
      sudo spiketrace trace --pid $(pidof myapp) --port 443
      sudo spiketrace trace --cgroup system.slice/nginx.service --port 80
      sudo spiketrace trace --netns blue --port 9999 -o runs/blue
      spiketrace report runs/20261126T140000Z-trace           # afterwards, anywhere
    """
    from rich.console import Console

    from spiketrace.daemon import Daemon, TraceOptions, print_bpf_source, validate

    opts = TraceOptions(ports=list(kwargs.pop("ports")), pids=list(kwargs.pop("pids")), **kwargs)
    if print_bpf:
        for port in opts.ports:
            if not 1 <= port <= 65535:
                raise SpikeTraceError(f"--port {port}: out of range, a TCP port is 1-65535")
        click.echo(print_bpf_source(opts))
        return
    validate(opts)
    console = Console(stderr=True)
    daemon = Daemon(opts, console)

    def on_signal(signum, frame):
        if daemon.stopping.is_set():  # a second one: the stop is under way, let it finish
            console.print("still stopping: detaching the probes and flushing what was recorded",
                          style="dim")
            return
        daemon.stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_path = daemon.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    meta = daemon.meta
    console.print(f"{meta.status}: {meta.counts.get('events', 0):,} events, "
                  f"{meta.counts.get('connections_counted', 0):,} connections counted "
                  f"({meta.counts.get('connections_sent', 0):,} slow or anomalous recorded), "
                  f"lost events: {meta.lost_events:,}")
    click.echo(f"Wrote {run_path}")
    click.echo(f"Next: spiketrace report {run_path}   # add --transactions APP.LOG to explain "
               "your application's own slow requests")
    if meta.status != "complete":
        raise SystemExit(130)
