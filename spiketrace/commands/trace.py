"""`spiketrace trace`: the daemon's command line (the daemon is spiketrace.daemon)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from common.errors import SpikeTraceError
from spiketrace.commands.params import DAY_S, YEAR_S, Duration, Number


class Size(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        from spiketrace.segments import parse_size

        if isinstance(value, int):
            return value
        try:
            return parse_size(value, "")
        except SpikeTraceError as exc:
            self.fail(str(exc).lstrip(": "), param, ctx)


def _load_config(ctx, param, value):
    """--config FILE: its [trace] section becomes the defaults (the command line wins)."""
    if value is not None:
        from spiketrace.service import read_config

        ctx.default_map = {**(ctx.default_map or {}), **read_config(value, ctx.command)}
    return value


@click.command(name="trace")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), is_eager=True,
              expose_value=False, callback=_load_config, metavar="FILE",
              help="Read options from the [trace] section of an INI file, e.g. "
                   "/etc/spiketrace/trace.conf (`port = 5432`, `metrics = :9464`); the command line "
                   "wins. Example: --config deploy/systemd/trace.conf")
@click.option("-p", "--port", "ports", type=int, multiple=True, metavar="PORT",
              help="Trace connections to or from this TCP port (repeatable).")
@click.option("--pid", "pids", type=int, multiple=True, metavar="PID",
              help="Trace this process's threads and the sockets it connects or accepts (repeatable).")
@click.option("--cgroup", metavar="PATH", default=None,
              help="Trace tasks in this cgroup v2 (absolute, or relative to the cgroup2 mount).")
@click.option("--netns", metavar="NAME", default=None,
              help="Trace sockets of this network namespace (`ip netns` name or ns file path).")
@click.option("-d", "--duration", "duration_s", type=Duration("s", lo=0, lo_open=True, hi=YEAR_S), default=None,
              help="Stop after this long: 90 (seconds), 10s, 5m, 12h (default: until stopped).")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/<UTC time>-trace); with --max-size/--max-age, the "
                   "directory of its segments.")
@click.option("--force", is_flag=True, help="Reuse a non-empty --out directory.")
@click.option("--threshold", "threshold_ms", type=Duration("ms", lo=0, lo_open=True), default="50ms",
              show_default=True,
              help="Record a connection in detail when it took longer than this: 50 (ms), 50ms, 1s.")
@click.option("--all-events", is_flag=True,
              help="Record every state change too (more overhead; for short traces).")
@click.option("--exact-accept", is_flag=True,
              help="Time accept() itself on a kernel without kprobes or fentry, with the accept "
                   "syscalls' exit tracepoint. Exact, but while it is attached every syscall of "
                   "every process takes the kernel's slow path (1-3% CPU measured). Without it the "
                   "accept wait ends at the server's first read or write there (an upper bound, "
                   "equal for a server that reads right after accept()). `spiketrace doctor` shows "
                   "which one this kernel uses.")
@click.option("-q", "--quiet", is_flag=True, help="No line per event or spike; summaries only.")
@click.option("--json", "json_", is_flag=True,
              help="Print JSON lines on stdout instead of text: one object per event, spike and "
                   "summary (fields in docs/trace.md). Example: --json | vector, --json --log /var/log/st.json")
@click.option("--log", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Append the live lines (text, or JSON with --json) to FILE instead of the terminal; "
                   "SIGHUP reopens it (logrotate). Example: --log /var/log/spiketrace/trace.log")
@click.option("--no-explain", "explain", is_flag=True, flag_value=False, default=True,
              help="No live explanations (events are still printed and recorded). Example: "
                   "--no-explain --json")
@click.option("--spike-threshold", "spike_ms", type=Duration("ms", lo=0, lo_open=True),
              default="100ms", show_default=True,
              help="Live explanations: a connection at least this slow is a spike (as `report "
                   "--threshold`, with its 10x-median rule). Example: --spike-threshold 250ms")
@click.option("--open-after", "open_after_s", type=Duration("s", lo=0, hi=DAY_S), default="5s",
              show_default=True,
              help="Explain a connection still in its handshake or retransmitting after this long, "
                   "before it closes (0 disables). Example: --open-after 2s")
@click.option("--metrics", metavar="ADDR:PORT", default=None,
              help="Serve Prometheus metrics on http://ADDR:PORT/metrics. Examples: --metrics "
                   "127.0.0.1:9464, --metrics :9464 (every address)")
@click.option("--max-size", type=Size(), default=None, metavar="SIZE",
              help="Record in segments and keep at most this much on disk, removing the oldest "
                   "segments: 500M, 2G. Example: --max-size 2G --max-age 7d")
@click.option("--max-age", "max_age_s", type=Duration("s", lo=0, lo_open=True, hi=10 * YEAR_S),
              default=None, help="Record in segments and remove those older than this: 12h, 7d.")
@click.option("--segment-length", "segment_s", type=Duration("s", lo=1, hi=YEAR_S), default=None,
              help="Close a segment after this long (default: an eighth of --max-age, at most 1h; "
                   "also when it reaches an eighth of --max-size). Example: --segment-length 10m")
@click.option("--expire-interval", "expire_interval_s", type=Duration("s", lo=0.1, hi=DAY_S),
              default="30s", show_default=True,
              help="How often the kernel maps forget processes that exited. Example: --expire-interval 10s")
@click.option("--bpf-stats", is_flag=True,
              help="Turn on the kernel's BPF run-time statistics while tracing (the metrics then show "
                   "each probe's CPU time; costs ~20-40 ns per probe run). Example: --bpf-stats "
                   "--metrics :9464")
@click.option("--counter-hz", type=Number(lo=1, hi=100), default=20.0, show_default=True, metavar="HZ",
              help="How often the namespace's TCP counters and listener queues are sampled; the "
                   "sampler costs about 1% of a CPU at 20. Example: --counter-hz 10 (half the cost, "
                   "100 ms resolution)")
@click.option("--summary-interval", "summary_interval_s", type=Duration("s", lo=1, hi=DAY_S),
              default="10s", show_default=True, help="Time between summary lines: 10 (s), 30s, 5m.")
@click.option("--flush-interval", "flush_interval_s", type=Duration("s", lo=1, hi=DAY_S),
              default="30s", show_default=True,
              help="Time between flushes of the counters and meta.json: 30 (s), 1m (the tracer's "
                   "own tables reach disk every 5 s).")
@click.option("--print-bpf", is_flag=True, hidden=True,
              help="Print the final BPF source and flags, then exit.")
def command(print_bpf, json_, **kwargs):
    """Trace an existing application's TCP traffic and record a run directory: a daemon that
    runs for minutes to days at low overhead. Filters (port, pid, cgroup, netns) combine;
    without any, all TCP traffic of the host is traced.

    It prints one line per notable event (retransmits, drops, resets, failed connects, long
    accept or run-queue waits) and one per slow connection with why it was slow (the analysis
    of `spiketrace report`, live), and a summary every --summary-interval. Stop it with Ctrl-C
    or SIGTERM; SIGHUP reopens --log and starts a new segment. See docs/trace.md and, for
    systemd, containers and Kubernetes, docs/deploy.md.

    \b
    Examples:
      sudo spiketrace trace --port 8080                      # a server on port 8080
      sudo spiketrace trace --port 5432 --duration 1h -q     # an hour, summaries only
      sudo spiketrace trace --pid $(pidof myapp) --port 443
      sudo spiketrace trace --cgroup system.slice/nginx.service --port 80
      sudo spiketrace trace --netns blue --port 9999 -o runs/blue
      sudo spiketrace trace --port 80 --json --metrics :9464 --max-size 2G --max-age 7d \\
           -o /var/lib/spiketrace/web                        # in production (docs/deploy.md)
      sudo spiketrace trace --config /etc/spiketrace/trace.conf
      spiketrace report runs/20261126T140000Z-trace           # afterwards, anywhere
    """
    from rich.console import Console

    from spiketrace.daemon import Daemon, TraceOptions, print_bpf_source, validate
    from spiketrace.service import Output

    opts = TraceOptions(ports=list(kwargs.pop("ports")), pids=list(kwargs.pop("pids")), json=json_,
                        **kwargs)
    if print_bpf:
        for port in opts.ports:
            if not 1 <= port <= 65535:
                raise SpikeTraceError(f"--port {port}: out of range, a TCP port is 1-65535")
        click.echo(print_bpf_source(opts))
        return
    validate(opts)
    console = Console(stderr=True, soft_wrap=True)  # one line each, also into files and journald
    output = Output(opts.log, stream=sys.stdout if opts.json else sys.stderr)
    daemon = Daemon(opts, console, out=output)

    def on_signal(signum, frame):
        if daemon.stopping.is_set():  # a later one: the stop is under way, let it finish
            daemon.problem(f"signal-{signum}", "still stopping: detaching the probes and flushing "
                           "what was recorded")
            return
        daemon.stop(signal.Signals(signum).name)

    def on_hup(signum, frame):
        daemon.hangup()

    handlers = {signal.SIGINT: on_signal, signal.SIGTERM: on_signal, signal.SIGHUP: on_hup}
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        run_path = daemon.run()
        meta = daemon.meta
        console.print(f"{meta.status}: {meta.counts.get('events', 0):,} events, "
                      f"{meta.counts.get('connections_counted', 0):,} connections counted "
                      f"({meta.counts.get('connections_sent', 0):,} slow or anomalous recorded), "
                      f"lost events: {meta.lost_events:,}")
        say = (lambda text: click.echo(text, err=True)) if opts.json else click.echo
        say(f"Wrote {run_path}")
        say(f"Next: spiketrace report {run_path}   # add --transactions APP.LOG to explain "
            "your application's own slow requests")
    finally:
        output.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if meta.status != "complete":
        raise SystemExit(130)
