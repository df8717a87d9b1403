"""The load generator of the original question, instrumented: one record per transaction.

A transaction: socket(); connect (busy retry on the same socket like the original, or retry
with backoff); send the request (`payload` bytes of "asd"...); read the full echo; again;
close(). Each is timed with CLOCK_MONOTONIC (`time.monotonic_ns()`, the clock of
`bpf_ktime_get_ns()`), so the tracer's kernel events join the records without conversion.

`run_clients()` runs `concurrency` worker processes. Each enters the network namespace, opens
its Parquet writer, reports ready and waits for "go", so the caller's `on_start(pids)` can
register the pids with the tracer before any load. Closed loop by default; with `rate` the
transactions are scheduled at fixed times and latency is counted from the *scheduled* start
(no coordinated omission). Records stream to `transactions.parquet` in parts, at least every
`flush_interval_s` (1 s: a SIGKILL loses at most that much); SIGINT, SIGTERM
and the parent's death (PR_SET_PDEATHSIG) make a worker flush what it completed and exit.

Over 400 lines on purpose: the worker's hot loop and the parent's supervision of the workers
(ready/go handshake, progress, stop, errors) share their wire format and are read together.
"""
from __future__ import annotations

import _socket
import dataclasses
import errno
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional

from common.netns import enter as enter_netns
from bench._proc import (MAX_PAYLOAD, Stop, StopHandler, no_pandas, quiet_threads,
                         set_pdeathsig)
from common.errors import SpikeTraceError
from common.meta import ClientParams

if TYPE_CHECKING:
    from bench._records import RowBuffer

RETRY_MODES = ("busy", "backoff")
SLOW_NS = 100_000_000  # "slow" in the progress counter: over 100 ms
OK, CONNECT_FAILED, RESET, SHORT, ERROR = "ok", "connect_failed", "reset", "short_reply", "error"
FIELDS = ("id", "local_addr", "local_port", "t_start", "t_connected", "t_reply1", "t_reply2",
          "t_end", "connect_attempts", "last_errno", "outcome")

# Worker state slots in the shared status array (STATUS_SLOTS per worker).
ST_STATE, ST_ERRNO, ST_LAST, ST_ROWS, ST_OK = range(5)
STATUS_SLOTS = 5
S_STARTING, S_READY, S_RUNNING, S_DONE, S_UNREACHABLE, S_FAILED = range(6)


class ClientOptions(ClientParams):
    """The options (fields: common.meta.ClientParams, recorded as meta.json `params.client`)."""

    def validate(self) -> None:
        if self.n < 1:
            raise SpikeTraceError(f"-n must be at least 1 transaction, not {self.n}")
        if self.concurrency < 1:
            raise SpikeTraceError(f"--concurrency must be at least 1, not {self.concurrency}")
        if not 1 <= self.payload <= MAX_PAYLOAD:
            raise SpikeTraceError(
                f"--payload must be between 1 byte and 16 MiB ({MAX_PAYLOAD}), not {self.payload}")
        if self.rate is not None and not 0 < self.rate <= 1e6:  # NaN fails too
            raise SpikeTraceError(f"--rate must be positive and at most 1,000,000/s, not {self.rate}")
        if self.connect_retry not in RETRY_MODES:
            raise SpikeTraceError(
                f"--connect-retry must be one of {', '.join(RETRY_MODES)}, not '{self.connect_retry}'")
        if not 1 <= self.port <= 65535:
            raise SpikeTraceError(f"--port must be between 1 and 65535, not {self.port}")
        if not 0 < self.connect_timeout_s <= 86400:
            raise SpikeTraceError(f"--connect-timeout must be positive and at most a day, not "
                                  f"{self.connect_timeout_s}")
        if not 0 < self.flush_interval_s <= 3600:
            raise SpikeTraceError(f"flush_interval_s must be positive and at most an hour, not "
                                  f"{self.flush_interval_s}")
        try:
            socket.inet_aton(self.host)
        except OSError:
            raise SpikeTraceError(f"--host must be an IPv4 address, not '{self.host}'")


@dataclasses.dataclass
class ClientResult:
    transactions: int  # records written
    elapsed_s: float  # from "go" to the end of the last transaction
    ok: int = 0
    failed: int = 0
    slow: int = 0  # over 100 ms
    interrupted: bool = False  # Ctrl-C / SIGTERM / a worker died
    stopped: bool = False  # the caller's stop_event
    worker_pids: List[int] = dataclasses.field(default_factory=list)
    errors: List[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.transactions / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "complete"


class _Unreachable(Exception):
    def __init__(self, err: int):
        super().__init__(err)
        self.err = err


def request_bytes(payload: int) -> bytes:
    """The original's request: "asd" * 1000 for 3000 bytes."""
    return (b"asd" * (payload // 3 + 1))[:payload]


def _connect_slow(s, addr, err: int, opts: ClientOptions, t_start: int):
    """The retry path after a failed first connect. Returns (socket or None, attempts, errno)."""
    mono = time.monotonic_ns
    deadline = t_start + int(opts.connect_timeout_s * 1e9)
    attempts = 1
    if opts.connect_retry == "busy":
        # the original: `while connect_ex(addr) != 0: continue`, on the same socket
        connect_ex = s.connect_ex
        while True:
            attempts += 1
            e = connect_ex(addr)
            if e == 0 or e == errno.EISCONN:
                return s, attempts, err
            err = e
            if mono() >= deadline:
                s.close()
                return None, attempts, err
    delay = 0.001
    while True:
        s.close()
        if mono() + delay * 1e9 >= deadline:
            return None, attempts, err
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
        s = _new_socket(opts)
        attempts += 1
        e = s.connect_ex(addr)
        if e == 0:
            return s, attempts, err
        err = e


def _new_socket(opts: ClientOptions):
    s = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if opts.nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _sockname(s):
    try:
        return s.getsockname()
    except OSError:
        return "", 0


def _read_rest(s, view, got: int, want: int) -> int:
    recv_into = s.recv_into
    while got < want:
        n = recv_into(view[got:want], want - got)
        if n == 0:
            break
        got += n
    return got


def _transactions(worker: int, opts: ClientOptions, buf: RowBuffer, progress, status,
                  t_go: int, stop: StopHandler) -> None:
    """The hot loop: transactions worker, worker + C, worker + 2C, ... < n."""
    C, P = opts.concurrency, opts.payload
    msg = request_bytes(P)
    half = P // 2
    part1, part2 = msg[:half], msg[half:]
    split = opts.split_writes and P > 1
    nodelay = opts.nodelay
    period = 1e9 / opts.rate if opts.rate else 0.0
    mem = bytearray(P)
    view = memoryview(mem)
    addr = (opts.host, opts.port)
    mono, sleep, Sock = time.monotonic_ns, time.sleep, _socket.socket
    AF, ST, TCP, NODELAY = socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.TCP_NODELAY
    rows = buf.rows
    record = rows.append
    flush_at = buf.slice_rows
    p_done, p_slow = 2 * worker, 2 * worker + 1
    s_last = worker * STATUS_SLOTS + ST_LAST
    done = slow = 0
    t4 = 0
    slow_ns = SLOW_NS
    for k in range(worker, opts.n, C):
        if period:
            t0 = t_go + int(k * period)  # the scheduled start: latency counts from here
            now = mono()
            if now < t0:
                sleep((t0 - now) / 1e9)
        else:
            t0 = mono()
        s = Sock(AF, ST)
        if nodelay:
            s.setsockopt(TCP, NODELAY, 1)
        attempts, err = 1, 0
        e = s.connect_ex(addr)
        if e:
            s, attempts, err = _connect_slow(s, addr, e, opts, t0)
            if s is None:
                if done == 0:
                    raise _Unreachable(err)
                t4 = mono()
                record((k, "", 0, t0, 0, 0, 0, t4, attempts, err, CONNECT_FAILED))
                done += 1
                progress[p_done] = done
                continue
        t1 = mono()
        t2 = t3 = 0
        try:
            if split:
                s.sendall(part1)
                s.sendall(part2)
            else:
                s.sendall(msg)
            # bookkeeping while the server works on the request: off the critical path
            laddr, lport = s.getsockname()
            outcome = OK
            n = s.recv_into(view, P)
            if n < P:
                n = _read_rest(s, view, n, P)
            if n < P:
                outcome = SHORT
            else:
                t2 = mono()
                if split:
                    s.sendall(part1)
                    s.sendall(part2)
                else:
                    s.sendall(msg)
                n = s.recv_into(view, P)
                if n < P:
                    n = _read_rest(s, view, n, P)
                if n < P:
                    outcome = SHORT
                else:
                    t3 = mono()
        except ConnectionResetError as exc:
            outcome, err = RESET, exc.errno
            laddr, lport = _sockname(s)
        except OSError as exc:
            outcome, err = ERROR, exc.errno or 0
            laddr, lport = _sockname(s)
        s.close()
        t4 = mono()
        record((k, laddr, lport, t0, t1, t2, t3, t4, attempts, err, outcome))
        done += 1
        if not done & 7:  # the parent polls this ~10 times a second
            progress[p_done] = done
        if t4 - t0 > slow_ns:
            slow += 1
            progress[p_slow] = slow
        if len(rows) >= flush_at:  # a few hundred rows to Arrow; a writer thread does the I/O
            status[s_last] = t4
            progress[p_done] = done
            with stop.critical():
                buf.convert()
    status[s_last] = t4
    progress[p_done] = done


def _worker_main(worker: int, opts: ClientOptions, run_dir: str, netns: Optional[str],
                 progress, status, t_go_value, go, parent_pid: int) -> None:
    stop = StopHandler().install()
    set_pdeathsig(signal.SIGTERM, parent_pid)
    quiet_threads()
    no_pandas()
    base = worker * STATUS_SLOTS
    buf = None
    try:
        enter_netns(netns)
        from bench._records import RowBuffer, hot_loop_mode  # imports pyarrow

        buf = RowBuffer(run_dir, "transactions", prefix=f"w{worker}", fields=FIELDS,
                        constants={"worker": worker, "pid": os.getpid(),
                                   "remote_addr": opts.host, "remote_port": opts.port},
                        chunk_rows=opts.chunk_rows, flush_interval_s=opts.flush_interval_s)
        hot_loop_mode()
        status[base + ST_STATE] = S_READY
        go.wait()
        status[base + ST_STATE] = S_RUNNING
        _transactions(worker, opts, buf, progress, status, t_go_value.value, stop)
        status[base + ST_STATE] = S_DONE
    except Stop:
        status[base + ST_STATE] = S_DONE
    except _Unreachable as exc:
        status[base + ST_ERRNO] = exc.err
        status[base + ST_STATE] = S_UNREACHABLE
    except BaseException:
        status[base + ST_STATE] = S_FAILED
        raise
    finally:
        while True:  # a second signal must not interrupt the final flush
            try:
                stop.disarm()
                break
            except Stop:
                continue
        if buf is not None:
            if buf.rows:  # stopped between two conversions: the last end is in the buffer
                status[base + ST_LAST] = max(status[base + ST_LAST], buf.rows[-1][7])
            buf.close()
            status[base + ST_ROWS] = buf.flushed
            status[base + ST_OK] = buf.outcomes.get(OK, 0)


def _unreachable_message(opts: ClientOptions, err: int) -> str:
    why = os.strerror(err) if err else "no answer"
    hint = ""
    if err == errno.ECONNREFUSED:
        hint = f"; is the server running? Start it with `spiketrace bench server --port {opts.port}`"
    return (f"cannot connect to {opts.host}:{opts.port}: {why} for {opts.connect_timeout_s:g} s "
            f"(--connect-timeout){hint}")


def run_clients(opts: ClientOptions, run_dir: os.PathLike, netns: Optional[str] = None,
                on_start: Optional[Callable[[List[int]], None]] = None,
                on_progress: Optional[Callable[[int, int], None]] = None,
                stop_event=None, poll_s: float = 0.1) -> ClientResult:
    """Run the load; return when all workers finished (or were stopped) and flushed.

    `on_start(pids)` runs once every worker is ready, before any transaction; `on_progress(done,
    slow)` every `poll_s`; `stop_event` (anything with `is_set()`) ends the run early
    (`stopped=True`). Any exception in the caller's thread (KeyboardInterrupt, a SIGTERM
    handler's exception) first stops the workers and waits until they flushed what they
    completed, then propagates. A worker that dies sets `interrupted=True` and an `errors` line.
    Raises `SpikeTraceError` for bad options or a server unreachable from the start.
    """
    opts.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = min(opts.concurrency, opts.n)
    if workers != opts.concurrency:
        opts = dataclasses.replace(opts, concurrency=workers)
    ctx = multiprocessing.get_context("spawn")  # clean children: no inherited BPF fds/threads
    progress = ctx.RawArray("q", 2 * workers)
    status = ctx.RawArray("q", STATUS_SLOTS * workers)
    t_go = ctx.RawValue("q", 0)
    go = ctx.Event()
    procs = [ctx.Process(target=_worker_main, name=f"spiketrace-bench-client-{w}",
                         args=(w, opts, str(run_dir), netns, progress, status, t_go, go, os.getpid()),
                         daemon=True) for w in range(workers)]
    result = ClientResult(transactions=0, elapsed_s=0.0)
    unreachable = 0
    try:
        for p in procs:
            p.start()
        result.worker_pids = [p.pid for p in procs]
        _wait_ready(procs, status)
        if on_start is not None:
            on_start(list(result.worker_pids))
        t_go.value = time.monotonic_ns()
        go.set()
        while any(p.is_alive() for p in procs):
            time.sleep(poll_s)
            if on_progress is not None:
                on_progress(sum(progress[0::2]), sum(progress[1::2]))
            if stop_event is not None and stop_event.is_set() and not result.stopped:
                result.stopped = True
                _signal_all(procs, signal.SIGTERM)
            states = status[ST_STATE::STATUS_SLOTS]
            if S_UNREACHABLE in states and not unreachable:
                w = states.index(S_UNREACHABLE)
                unreachable = status[w * STATUS_SLOTS + ST_ERRNO] or errno.ETIMEDOUT
                _signal_all(procs, signal.SIGTERM)
    finally:  # also on KeyboardInterrupt: every worker flushes before the exception goes on
        _signal_all(procs, signal.SIGTERM)
        _join_all(procs)
    states = status[ST_STATE::STATUS_SLOTS]
    for w, p in enumerate(procs):
        if states[w] == S_FAILED or (p.exitcode not in (0, None) and states[w] != S_DONE):
            result.errors.append(f"client worker {w} (pid {p.pid}) failed (exit code {p.exitcode})")
            result.interrupted = True
    result.transactions = sum(status[ST_ROWS::STATUS_SLOTS])
    result.ok = sum(status[ST_OK::STATUS_SLOTS])
    result.failed = result.transactions - result.ok
    result.slow = sum(progress[1::2])
    last = max(status[ST_LAST::STATUS_SLOTS]) if workers else 0
    if last and t_go.value:
        result.elapsed_s = (last - t_go.value) / 1e9
    if on_progress is not None:
        on_progress(result.transactions, result.slow)
    if unreachable and result.transactions == 0:
        raise SpikeTraceError(_unreachable_message(opts, unreachable))
    if unreachable:
        result.errors.append(_unreachable_message(opts, unreachable))
    return result


def _wait_ready(procs, status, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = status[ST_STATE::STATUS_SLOTS]
        if all(s == S_READY for s in states):
            return
        for w, p in enumerate(procs):
            if not p.is_alive():
                raise SpikeTraceError(
                    f"client worker {w} exited during start (exit code {p.exitcode})")
        if time.monotonic() > deadline:
            raise SpikeTraceError(f"client workers were not ready within {timeout:.0f} s")
        time.sleep(0.005)


def _signal_all(procs, sig: int) -> None:
    for p in procs:
        if p.is_alive() and p.pid:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass


def _join_all(procs, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        if p.pid is None:
            continue
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
