"""The echo server of the original question, instrumented: one record per connection.

Protocol (per connection): accept; read the full request (`payload` bytes, however many pieces
it arrives in); echo it; read the second request; echo it; read until EOF; close. The listening
socket has SO_REUSEADDR and, by default, SO_LINGER {1, 0} as in the original: accepted sockets
inherit it, so close() sends a RST and leaves no TIME_WAIT. `listen(backlog)`, default 1.

Models: `blocking` (one thread, the original), `threaded` (`threads` threads blocking in
accept() on the same socket), `epoll` (one thread, non-blocking sockets).

Library use: `start_server_process(ServerOptions(...), run_dir)` runs it in a child process and
returns once the socket listens; the CLI runs `serve()` in the foreground.
"""
from __future__ import annotations

import dataclasses
import errno
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from common.netns import enter as enter_netns
from bench._proc import (DRAIN_ROOM, ERROR, MAX_PAYLOAD, OK, RESET, SHORT, Stop, StopHandler,
                         no_pandas, quiet_threads, set_pdeathsig)
from common.errors import SpikeTraceError
from common.meta import ServerParams

if TYPE_CHECKING:
    from bench._records import RowBuffer

MODELS = ("blocking", "threaded", "epoll")


class ServerOptions(ServerParams):
    """The options (fields: common.meta.ServerParams, recorded as meta.json `params.server`)."""

    def validate(self) -> None:
        if self.model not in MODELS:
            raise SpikeTraceError(f"unknown server model '{self.model}' (choose {', '.join(MODELS)})")
        if not 1 <= self.payload <= MAX_PAYLOAD:
            raise SpikeTraceError(
                f"--payload must be between 1 byte and 16 MiB ({MAX_PAYLOAD}), not {self.payload}")
        if not 0 <= self.port <= 65535:
            raise SpikeTraceError(f"--port must be between 0 and 65535, not {self.port}")
        if self.backlog < 0:
            raise SpikeTraceError(f"--backlog must be 0 or more, not {self.backlog}")
        if not 0 <= self.think_ms <= 60_000:  # NaN fails too
            raise SpikeTraceError(f"--think-ms must be between 0 and 60,000 ms, not {self.think_ms}")
        if self.threads < 1:
            raise SpikeTraceError(f"--threads must be at least 1, not {self.threads}")
        if self.duration_s is not None and not 0 < self.duration_s <= 366 * 86400:
            raise SpikeTraceError(f"--duration must be positive and at most a year, not {self.duration_s}")
        if not 0 < self.flush_interval_s <= 3600:
            raise SpikeTraceError(f"flush_interval_s must be positive and at most an hour, not "
                                  f"{self.flush_interval_s}")


@dataclasses.dataclass
class ServerStats:
    connections: int = 0
    outcomes: Dict[str, int] = dataclasses.field(default_factory=dict)
    port: int = 0


def open_listener(opts: ServerOptions) -> socket.socket:
    """The listening socket, or a `SpikeTraceError` saying why it cannot be had."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts.linger:
            # struct linger {int l_onoff = 1; int l_linger = 0;}: close() resets the connection
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.bind((opts.host, opts.port))
        sock.listen(opts.backlog)
    except OSError as exc:
        sock.close()
        where = f"{opts.host}:{opts.port}"
        if exc.errno == errno.EADDRINUSE:
            raise SpikeTraceError(
                f"port {opts.port} is already in use on {opts.host} (is another server running? "
                "stop it or choose another --port)")
        if exc.errno == errno.EACCES:
            raise SpikeTraceError(f"cannot listen on {where}: permission denied (ports below 1024 need root)")
        if exc.errno == errno.EADDRNOTAVAIL:
            raise SpikeTraceError(f"cannot listen on {where}: no such local address")
        raise SpikeTraceError(f"cannot listen on {where}: {exc.strerror or exc}")
    except (socket.gaierror, OverflowError, UnicodeError) as exc:
        sock.close()
        raise SpikeTraceError(f"cannot listen on {opts.host}:{opts.port}: {exc}")
    return sock


# The order of a record tuple (the other columns are constant per server thread).
FIELDS = ("conn_id", "peer_addr", "peer_port", "t_accept", "t_request1", "t_reply1",
          "t_request2", "t_reply2", "t_eof", "t_close", "bytes_in", "outcome")


def _buffer(run_dir, worker: int, port: int, flush_interval_s: float) -> RowBuffer:
    from bench._records import RowBuffer  # imports pyarrow: after quiet_threads()

    return RowBuffer(run_dir, "server", prefix=f"s{worker}", fields=FIELDS,
                     constants={"worker": worker, "pid": os.getpid(), "local_port": port},
                     chunk_rows=32768, flush_interval_s=flush_interval_s)


def _read_rest(fd: int, view, got: int, want: int) -> int:
    """Keep reading until `want` bytes are in `view`; return how many arrived (less at EOF)."""
    while got < want:
        n = os.readv(fd, [view[got:want]])
        if n == 0:
            break
        got += n
    return got


def _write_all(fd: int, data, n: int) -> None:
    """Finish a write that a signal cut short (a blocking TCP write otherwise sends it all)."""
    view = memoryview(data)
    while n < len(view):
        n += os.write(fd, view[n:])


def _serve_blocking(lsock: socket.socket, opts: ServerOptions, buf: RowBuffer,
                    stop: Optional[StopHandler], halt: Optional[threading.Event] = None,
                    id_step: int = 1) -> None:
    """The original's loop.

    Hot path: the accepted connection stays a bare fd (os.readv/os.write/os.close: no socket
    object, whose creation costs a getsockname() syscall), one preallocated buffer, functions
    in locals, one tuple appended per connection.
    """
    P = opts.payload
    mem = bytearray(P + DRAIN_ROOM)
    view = memoryview(mem)
    req = view[:P]
    into_req, into_all = [req], [view]
    think = opts.think_ms / 1000.0
    sleep, mono = time.sleep, time.monotonic_ns
    readv, write, close = os.readv, os.write, os.close
    accept = lsock._accept  # (fd, addr) without building a socket object
    rows = buf.rows
    record = rows.append
    flush_at = buf.slice_rows
    conn_id = buf.constants["worker"]  # threads number their connections w, w+T, w+2T, ...
    while True:
        if think:
            sleep(think)
        try:
            fd, addr = accept()
        except OSError:
            if halt is not None and halt.is_set():
                return
            raise
        t_acc = mono()
        t_rq1 = t_rp1 = t_rq2 = t_rp2 = t_eof = 0
        got = 0
        outcome, stopped = OK, None
        try:
            got = readv(fd, into_req)
            if got < P:
                got = _read_rest(fd, view, got, P)
            if got < P:
                outcome = SHORT
            else:
                t_rq1 = mono()
                n = write(fd, req)
                if n < P:
                    _write_all(fd, req, n)
                t_rp1 = mono()
                n = readv(fd, into_req)
                if n < P:
                    n = _read_rest(fd, view, n, P)
                got += n
                if n < P:
                    outcome = SHORT
                else:
                    t_rq2 = mono()
                    n = write(fd, req)
                    if n < P:
                        _write_all(fd, req, n)
                    t_rp2 = mono()
                    n = readv(fd, into_all)
                    while n:
                        got += n
                        n = readv(fd, into_all)
                    t_eof = mono()
        except ConnectionResetError:
            outcome = RESET
        except OSError:
            outcome = ERROR
        except Stop as exc:  # stopped in mid-connection: keep what it reached
            outcome, stopped = ERROR, exc
        finally:
            close(fd)
        t_close = mono()
        record((conn_id, addr[0], addr[1], t_acc, t_rq1, t_rp1, t_rq2, t_rp2, t_eof, t_close,
                got, outcome))
        conn_id += id_step
        if stopped is not None:
            raise stopped
        if len(rows) >= flush_at:  # a few hundred rows to Arrow; a writer thread does the I/O
            if stop is not None:
                with stop.critical():
                    buf.convert()
            else:
                buf.convert()


def _serve_threaded(lsock: socket.socket, opts: ServerOptions, bufs: List[RowBuffer]) -> None:
    """`threads` threads each run the blocking loop on the shared listening socket."""
    halt = threading.Event()
    threads = [threading.Thread(target=_serve_blocking, args=(lsock, opts, b, None, halt, opts.threads),
                                name=f"server-{w}", daemon=True) for w, b in enumerate(bufs)]
    for t in threads:
        t.start()
    try:
        while True:  # the main thread only waits for a stop signal
            signal.pause()
    finally:
        halt.set()
        try:
            lsock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked in accept()
        except OSError:
            pass
        deadline = time.monotonic() + 2.0
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))


def serve(opts: ServerOptions, run_dir: Optional[os.PathLike] = None,
          on_ready: Optional[Callable[[int], None]] = None,
          stop: Optional[StopHandler] = None) -> ServerStats:
    """Run the server in this process until SIGINT/SIGTERM or `opts.duration_s`.

    `on_ready(port)` is called once the socket listens. Every finished connection's record is
    flushed to `run_dir/server.parquet` before returning (if `run_dir` is given).
    """
    opts.validate()
    quiet_threads()
    stop = stop or StopHandler().install()
    lsock = open_listener(opts)
    port = lsock.getsockname()[1]
    workers = opts.threads if opts.model == "threaded" else 1
    bufs = [_buffer(run_dir, w, port, opts.flush_interval_s) for w in range(workers)]
    from bench._records import hot_loop_mode

    hot_loop_mode()
    try:
        if opts.duration_s:
            signal.setitimer(signal.ITIMER_REAL, opts.duration_s)
        if on_ready is not None:
            on_ready(port)
        stop.check()
        if opts.model == "blocking":
            _serve_blocking(lsock, opts, bufs[0], stop)
        elif opts.model == "epoll":
            from bench.server_epoll import serve_epoll

            serve_epoll(lsock, opts, bufs[0], stop)
        else:
            _serve_threaded(lsock, opts, bufs)
    except Stop:
        pass
    finally:
        _disarm(stop)
        signal.setitimer(signal.ITIMER_REAL, 0)
        lsock.close()
        stats = ServerStats(port=port)
        for b in bufs:
            b.close()
            stats.connections += b.flushed
            for outcome, count in b.outcomes.items():
                stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + count
    return stats


def _disarm(stop: StopHandler) -> None:
    while True:  # a second signal must not interrupt the final flush
        try:
            stop.disarm()
            return
        except Stop:
            continue


# --- the server as a child process (library API for `spiketrace run`) ---------------------

def _child_main(opts: ServerOptions, run_dir, netns, conn, parent_pid: int) -> None:
    stop = StopHandler().install()
    set_pdeathsig(signal.SIGTERM, parent_pid)
    no_pandas()
    try:
        enter_netns(netns)
        stats = serve(opts, run_dir, on_ready=lambda port: conn.send(("ready", port)), stop=stop)
    except SpikeTraceError as exc:
        conn.send(("error", str(exc)))
        return
    except Stop:
        conn.send(("done", 0))
        return
    except Exception as exc:  # an unexpected failure: tell the parent rather than hang it
        conn.send(("error", f"server process failed: {exc!r}"))
        raise
    try:
        conn.send(("done", stats.connections))
    except OSError:
        pass


class ServerProcess:
    """A bench server running in a child process. `stop()` flushes its records and joins it."""

    def __init__(self, process, conn, port: int):
        self.process = process
        self.pid: int = process.pid
        self.port = port
        self._conn = conn
        self.connections: Optional[int] = None

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """Stop the server (SIGTERM), wait for it to flush; return connections served. Idempotent."""
        if self.connections is not None or self.process is None:
            return self.connections
        if self.process.is_alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.connections = 0
        try:
            while self._conn.poll(0):
                kind, value = self._conn.recv()
                if kind == "done":
                    self.connections = int(value)
        except (EOFError, OSError):
            pass
        self._conn.close()
        return self.connections

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server_process(opts: ServerOptions, run_dir: Optional[os.PathLike] = None,
                         netns: Optional[str] = None, start_timeout: float = 120.0) -> ServerProcess:
    """Start the server in a child process; return once it listens. A server that cannot listen
    says so at once; `start_timeout` only bounds a hang (a spawned child imports the project
    afresh: seconds on a loaded host, a minute under qemu's TCG in the kernel matrix).

    Raises `SpikeTraceError` if it cannot listen (port in use, bad address, bad options).
    """
    opts.validate()
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")  # a clean child: no inherited BPF fds or threads
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, name="spiketrace-bench-server",
                       args=(opts, run_dir, netns, child_conn, os.getpid()), daemon=True)
    proc.start()
    child_conn.close()
    try:
        if not parent_conn.poll(start_timeout):
            raise SpikeTraceError(f"the bench server did not start within {start_timeout:.0f} s")
        kind, value = parent_conn.recv()
    except EOFError:
        proc.join(1.0)
        raise SpikeTraceError(f"the bench server exited during start (exit code {proc.exitcode})")
    except BaseException:
        proc.kill()
        proc.join(1.0)
        parent_conn.close()
        raise
    if kind != "ready":
        proc.join(5.0)
        parent_conn.close()
        raise SpikeTraceError(str(value))
    return ServerProcess(proc, parent_conn, int(value))
