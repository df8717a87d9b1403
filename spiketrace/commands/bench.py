"""`spiketrace bench server` / `spiketrace bench client`: the echo benchmark on its own."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from common.errors import SpikeTraceError
from common.rundir import write_meta
from spiketrace.commands.params import Duration, Number

MAX_PAYLOAD = 16 * 1024 * 1024  # bench._proc.MAX_PAYLOAD (not imported: --help stays light)


@click.group(name="bench")
def command():
    """The echo benchmark of the original question: a server and a load generator that time
    every connection/transaction (CLOCK_MONOTONIC ns, joinable with kernel events).

    \b
    Examples:
      spiketrace bench server --port 9999 &
      spiketrace bench client -n 100000 --port 9999
      spiketrace report runs/20261126T140000Z-bench
    """


# --- server ---------------------------------------------------------------------------------

@command.command("server", short_help="The echo server in the foreground (per-connection records).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=9999, show_default=True,
              help="Port (0 = any free port).")
@click.option("--backlog", type=click.IntRange(0, 65535), default=1, show_default=True,
              help="listen() backlog; the queue holds backlog + 1 connections.")
@click.option("--linger/--no-linger", default=True, show_default=True,
              help="SO_LINGER {1, 0} on the listening socket (inherited: close() sends a RST).")
@click.option("--model", type=click.Choice(["blocking", "threaded", "epoll"]), default="blocking",
              show_default=True, help="One blocking thread (the original), N threads, or epoll.")
@click.option("--threads", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Threads for --model threaded.")
@click.option("--think-ms", type=Duration("ms", lo=0, hi=60_000), default="0", show_default=True,
              help="Sleep this long before each accept() (a slow server; ms, or e.g. 5ms, 0.2s).")
@click.option("--payload", type=click.IntRange(1, MAX_PAYLOAD), default=3000, show_default=True,
              help="Request size in bytes; must match the client's.")
@click.option("--duration", type=Duration("s", lo=0, lo_open=True, hi=366 * 86400), default=None,
              help="Stop after this long (e.g. 60, 90s, 10m; a bare number is seconds).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory for server.parquet (one record per connection).")
def server(host, port, backlog, linger, model, threads, think_ms, payload, duration, out):
    """Run the echo server in the foreground until Ctrl-C (or --duration).

    Per connection: accept; read the full request; echo it; read the second; echo it; read
    until EOF; close. With --out, one record per connection goes to OUT/server.parquet.

    \b
    Examples:
      spiketrace bench server                          # the original: port 9999, listen(1), SO_LINGER
      spiketrace bench server --model epoll --backlog 128 --out runs/mine
      spiketrace bench server --think-ms 5ms --duration 10m
    """
    from bench._proc import no_pandas
    from bench.server import ServerOptions, serve

    no_pandas()  # this process only serves and writes Parquet
    opts = ServerOptions(host=host, port=port, backlog=backlog, linger=linger, model=model,
                         think_ms=think_ms, payload=payload, threads=threads, duration_s=duration)
    opts.validate()
    run_dir = _server_out(out) if out else None

    def ready(actual_port):
        click.echo(f"Listening on {host}:{actual_port} ({model}, backlog {backlog}, "
                   f"SO_LINGER {'{1, 0}' if linger else 'off'}, payload {payload} bytes); "
                   "Ctrl-C to stop", err=True)

    stats = serve(opts, run_dir, on_ready=ready)
    outcomes = ", ".join(f"{v:,} {k}" for k, v in sorted(stats.outcomes.items()))
    click.echo(f"Served {stats.connections:,} connections" + (f" ({outcomes})" if outcomes else ""),
               err=True)
    if run_dir is not None:
        _server_meta(run_dir, opts, stats)
        click.echo(f"Wrote {run_dir / 'server.parquet'}")


def _server_out(out: str) -> Path:
    from common.rundir import create_run_dir

    return create_run_dir(out, force=True)  # may hold the client's records of the same run


def _server_meta(run_dir: Path, opts, stats) -> None:
    """Add the server's counts to the run's meta.json (creating it if the client has not)."""
    from common.rundir import new_meta, now_wall, read_meta, write_meta

    try:
        meta = read_meta(run_dir)
    except SpikeTraceError:
        meta = new_meta("bench")
        meta.status = "complete"
        meta.ended_wall = now_wall()
    meta.params.server = opts
    meta.counts["server_connections"] = stats.connections
    write_meta(run_dir, meta)


# --- client ---------------------------------------------------------------------------------

@command.command("client", short_help="The load generator (per-transaction records, summary).")
@click.option("-n", "n", type=click.IntRange(1, 1_000_000_000), default=1_000_000, show_default=True,
              help="Transactions.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes, each one transaction at a time.")
@click.option("--payload", type=click.IntRange(1, MAX_PAYLOAD), default=3000, show_default=True,
              help='Request size in bytes (the original: "asd" * 1000).')
@click.option("--rate", type=Number(lo=0, lo_open=True, hi=1e6, unit="/s"), default=None,
              help="Open loop: start transactions at this total rate (per second); latency is "
                   "counted from each scheduled start.")
@click.option("--connect-retry", type=click.Choice(["busy", "backoff"]), default="busy",
              show_default=True, help="busy: retry connect() at once on the same socket (the "
                                      "original); backoff: new socket, 1 ms doubling to 100 ms.")
@click.option("--connect-timeout", type=Duration("s", lo=0, lo_open=True, hi=86400), default="10s",
              show_default=True, help="Give up a connect after this long of failures (a bare number is s).")
@click.option("--nodelay", is_flag=True, help="Set TCP_NODELAY (disable Nagle).")
@click.option("--split-writes", is_flag=True,
              help="Send each request as two writes (shows Nagle / delayed-ACK stalls).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Server address (IPv4).")
@click.option("--port", type=click.IntRange(1, 65535), default=9999, show_default=True,
              help="Server port.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory (default runs/<UTC time>-bench).")
@click.option("--force", is_flag=True, help="Replace the transactions of an existing --out.")
def client(n, concurrency, payload, rate, connect_retry, connect_timeout, nodelay, split_writes,
           host, port, out, force):
    """Run N connect/echo/echo/close transactions against the server and record each one.

    Every transaction goes to OUT/transactions.parquet as it completes (in chunks, so memory
    stays flat); Ctrl-C keeps every completed transaction.

    \b
    Examples:
      spiketrace bench client -n 1000000                # the original question's run
      spiketrace bench client -n 200000 -c 4 --connect-retry backoff
      spiketrace bench client -n 50000 --rate 2000 --out runs/open-loop
      spiketrace bench client -n 20000 --split-writes   # Nagle + delayed ACK
    """
    from bench.client import ClientOptions, run_clients
    from bench.summary import LatencySummary
    from spiketrace.recording import Recording

    opts = ClientOptions(host=host, port=port, n=n, concurrency=concurrency, payload=payload,
                         rate=rate, connect_retry=connect_retry, nodelay=nodelay,
                         split_writes=split_writes, connect_timeout_s=connect_timeout)
    opts.validate()
    path = Path(out) if out else None
    if path is not None:
        _replace_transactions(path, force)
    rec = Recording.create(path, kind="bench", scenario="bench", force=True, keep=("server",))
    rec.meta.params.client = opts
    result = None
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with rec:
            rec.ready()
            with _Progress(n, payload) as progress:
                result = run_clients(opts, rec.path, on_progress=progress.update)
            rec.status = "interrupted" if result.interrupted else "complete"
            rec.meta.params.bench_elapsed_s = result.elapsed_s
            rec.meta.notes.extend(result.errors)
    except KeyboardInterrupt:  # the workers have flushed: report what is on disk
        pass
    finally:
        signal.signal(signal.SIGTERM, old_term)

    meta = rec.meta
    summary = LatencySummary.from_run(rec.path)
    meta.counts.update(ok=summary.ok, failed=summary.transactions - summary.ok, slow=summary.slow)
    write_meta(rec.path, meta)
    interrupted = meta.status != "complete"
    for err in (result.errors if result is not None else []):
        click.echo(f"warning: {err}", err=True)
    if interrupted:
        click.echo(f"Interrupted: kept {summary.transactions:,} completed transactions.", err=True)
    rate = result.rate if result is not None and result.elapsed_s > 0 else None
    for line in summary.lines(rate=rate):
        click.echo(line)
    click.echo(f"Wrote {rec.path}")
    click.echo(f"Next: spiketrace report {rec.path}")
    if interrupted:
        sys.exit(130)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _replace_transactions(path: Path, force: bool) -> None:
    """An existing run directory may hold the server's records of the same run; it must not
    hold transactions already, unless --force replaces them."""
    from common.rundir import remove_table, table_parts

    if table_parts(path, "transactions"):
        if not force:
            raise SpikeTraceError(f"{path} already holds transactions (use --force to replace them)")
        remove_table(path, "transactions")


class _Progress:
    """A rich progress bar fed by run_clients' on_progress(done, slow) with a live rate."""

    STALL_HINT_S = 10.0

    def __init__(self, total: int, payload: int = 3000):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8,.0f} tx/s"),
            TextColumn("slow>100ms {task.fields[slow]:,}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task("bench", total=total, rate=0.0, slow=0)
        self._last = (time.monotonic(), 0)
        self._rate = 0.0
        self._started = time.monotonic()
        self._payload = payload
        self._hinted = False

    def update(self, done: int, slow: int) -> None:
        now = time.monotonic()
        t0, d0 = self._last
        if now - t0 >= 0.5:
            inst = (done - d0) / (now - t0)
            self._rate = inst if self._rate == 0 else 0.5 * self._rate + 0.5 * inst
            self._last = (now, done)
        self.progress.update(self.task, completed=done, rate=self._rate, slow=slow)
        if done == 0 and not self._hinted and now - self._started > self.STALL_HINT_S:
            # the protocol has no framing: a payload mismatch makes both sides wait forever
            self._hinted = True
            self.progress.console.print(
                f"No transaction has completed after {self.STALL_HINT_S:.0f} s: does the server "
                f"use the same --payload ({self._payload} bytes)?")

    def __enter__(self) -> "_Progress":
        self.progress.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.progress.live.transient = True  # an error message follows: no stale bar
        self.progress.stop()
