"""Sampled kernel counters of the traced network namespace -> `counters.parquet`.

`CounterSampler` runs one thread that, `hz` times a second, reads
- the TcpExt/Tcp counters of `/proc/net/netstat` and `/proc/net/snmp` (cumulative; the
  ListenOverflows/ListenDrops pair is the only trace a SYN dropped by a full accept queue
  leaves: the kernel drops it silently, with no drop-reason event),
- the TIME_WAIT count from `/proc/net/sockstat` (`tw`; a per-socket sock_diag census costs
  ~35 us per socket, the counter is free),
- accept-queue depth and backlog of the listeners on the traced ports (sock_diag).

All three come from the namespace being traced, not the sampler's own: the thread steps into
it once at start, opens the proc files and the netlink socket there, and steps back out (they
stay bound to that namespace). Files are kept open and re-read with `pread` (~20k samples/s).

Storage (long format `t_ns, name, value`, names as in docs/run-directory.md): the first sample
stores every value, later samples store only the values that changed since the previous sample,
and the last sample (at `stop()`) stores every value again, so `last - first` of any counter is
its delta over the whole run and a step function rebuilds any counter at any time.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from common.errors import SpikeTraceError
from common.netns import NetnsRef, entered, netns_path, parse_snmp, read_sysctls, run_in, thread_proc_net
from common.rundir import TableWriter
from tracer.sockdiag import ListenerProbe

# The counters that can explain a connection-setup or data-transfer stall. `names=None`
# stores every TcpExt/Tcp field instead (many change with every packet: a bigger table).
DEFAULT_COUNTERS: Tuple[str, ...] = (
    # accept queue / SYN queue
    "TcpExt.ListenOverflows", "TcpExt.ListenDrops", "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies", "TcpExt.SyncookiesSent", "TcpExt.SyncookiesRecv",
    "TcpExt.SyncookiesFailed", "TcpExt.TCPBacklogDrop", "TcpExt.TCPDeferAcceptDrop",
    "TcpExt.EmbryonicRsts",
    # retransmissions and timeouts
    "TcpExt.TCPSynRetrans", "TcpExt.TCPTimeouts", "TcpExt.TCPLossProbes",
    "TcpExt.TCPLossProbeRecovery", "TcpExt.TCPFastRetrans", "TcpExt.TCPSlowStartRetrans",
    "TcpExt.TCPSpuriousRTOs", "TcpExt.TCPRetransFail", "TcpExt.TCPLostRetransmit",
    # TIME_WAIT and aborts
    "TcpExt.TW", "TcpExt.TWRecycled", "TcpExt.TWKilled", "TcpExt.TCPTimeWaitOverflow",
    "TcpExt.TCPAbortOnData", "TcpExt.TCPAbortOnClose", "TcpExt.TCPAbortOnMemory",
    "TcpExt.TCPAbortOnTimeout", "TcpExt.TCPAbortOnLinger", "TcpExt.TCPAbortFailed",
    "TcpExt.PAWSActive", "TcpExt.PAWSEstab",
    # delayed ACKs, receive-side drops, memory pressure
    "TcpExt.DelayedACKs", "TcpExt.DelayedACKLocked", "TcpExt.DelayedACKLost",
    "TcpExt.TCPRcvQDrop", "TcpExt.TCPZeroWindowDrop", "TcpExt.TCPOFODrop",
    "TcpExt.TCPMemoryPressures", "TcpExt.TCPMinTTLDrop",
    # connection-level totals
    "Tcp.ActiveOpens", "Tcp.PassiveOpens", "Tcp.AttemptFails", "Tcp.EstabResets",
    "Tcp.CurrEstab", "Tcp.RetransSegs", "Tcp.InErrs", "Tcp.OutRsts",
)

# The TCP sysctls the analysis needs to turn a retransmit count into a delay (see docs/kernel-facts.md:
# tcp_syn_linear_timeouts changes the SYN backoff since 6.5). All are per network namespace.
TCP_SYSCTLS: Tuple[str, ...] = (
    "net.ipv4.tcp_syn_linear_timeouts", "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_synack_retries", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_tw_reuse_delay",
    "net.ipv4.ip_local_port_range", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_rto_min_us", "net.ipv4.tcp_rto_max_ms",
    "net.ipv4.tcp_syncookies", "net.ipv4.tcp_abort_on_overflow", "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_delack_min", "net.ipv4.tcp_early_retrans", "net.ipv4.tcp_timestamps",
)

FLUSH_INTERVAL_S = 5.0


def parse_sockstat_tw(data: bytes) -> Optional[int]:
    """The `tw` (TIME_WAIT sockets) field of the `TCP:` line of /proc/net/sockstat."""
    for line in data.decode("ascii", "replace").splitlines():
        if line.startswith("TCP:"):
            fields = line.split()[1:]
            for key, value in zip(fields[0::2], fields[1::2]):
                if key == "tw":
                    return int(value)
    return None


def read_tcp_sysctls(netns_pid: NetnsRef = None) -> Dict[str, str]:
    """The TCP sysctls of a network namespace (`{"net.ipv4.tcp_syn_retries": "6", ...}`).

    `netns_pid`: a pid inside it, an `ip netns` name or ns-file path, or None for this process's
    own. Net sysctls resolve against the *reader's* namespace, so they are read from a thread
    inside it. Sysctls this kernel lacks are left out."""
    return read_sysctls(netns_pid, TCP_SYSCTLS)


def read_counters(netns_pid: NetnsRef = None) -> Dict[str, int]:
    """One snapshot of every TcpExt/Tcp counter and `sockstat.tw` of a namespace."""
    def read() -> Dict[str, int]:
        values: Dict[str, int] = {}
        for name in ("netstat", "snmp"):
            with open(thread_proc_net(name), "rb") as fh:
                values.update(parse_snmp(fh.read(), ("TcpExt", "Tcp")))
        with open(thread_proc_net("sockstat"), "rb") as fh:
            tw = parse_sockstat_tw(fh.read())
        if tw is not None:
            values["sockstat.tw"] = tw
        return values

    return run_in(netns_pid, read)


class CounterSampler:
    """Sample the counters of one network namespace into `<run_dir>/counters.parquet`.

    `netns_pid`: a pid inside the traced namespace, an `ip netns` name or ns-file path, or None
    for this process's namespace. `ports`: listeners whose accept queue is sampled. `names`:
    TcpExt/Tcp counters to keep (None = all). `start()` returns once the namespace is open (and
    raises SpikeTraceError if it cannot be); `stop()` writes the last sample and returns the
    number of samples taken.
    """

    def __init__(self, run_dir: Path, netns_pid: NetnsRef, ports: List[int], hz: float = 20.0,
                 names: Optional[Sequence[str]] = DEFAULT_COUNTERS,
                 flush_interval_s: float = FLUSH_INTERVAL_S):
        if hz <= 0:
            raise ValueError("hz must be positive")
        self.run_dir = Path(run_dir)
        self.netns = netns_pid
        self.ports = sorted(set(int(p) for p in ports))
        self.hz = float(hz)
        self.period_ns = int(1e9 / hz)
        self.names = None if names is None else frozenset(names)
        self.flush_interval_s = flush_interval_s
        self.samples = 0
        self.errors = 0
        self.first_error: Optional[str] = None
        self.latest: Dict[str, int] = {}  # the last sampled value of every name
        self._writer: Optional[TableWriter] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._start_error: Optional[BaseException] = None
        self._fds: List[int] = []
        self._probe: Optional[ListenerProbe] = None
        self._seen_ports: set = set()

    @property
    def rows_written(self) -> int:
        return self._writer.rows_written if self._writer is not None else 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        netns_path(self.netns)  # a missing pid/namespace is reported here, in the caller
        self._writer = TableWriter(self.run_dir, "counters", prefix="sampler")
        self._thread = threading.Thread(target=self._run, name="spiketrace-counters",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            err = self._start_error
            if isinstance(err, SpikeTraceError):
                raise err
            raise SpikeTraceError(f"counter sampler could not start: {err}")

    def stop(self) -> int:
        """Stop sampling, write the final full sample and flush. Idempotent."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.samples - self._samples_base

    def flush(self) -> None:
        """Not thread-safe against the sampler; the sampler flushes itself every few seconds."""
        if self._writer is not None and self._thread is None:
            self._writer.flush()

    # -- the thread ------------------------------------------------------------------------
    def _open(self) -> None:
        with entered(self.netns):
            for name in ("netstat", "snmp", "sockstat"):
                self._fds.append(os.open(thread_proc_net(name), os.O_RDONLY | os.O_CLOEXEC))
            if self.ports:
                self._probe = ListenerProbe(self.ports)

    def _close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _read(self) -> Dict[str, int]:
        values: Dict[str, int] = {}
        netstat, snmp, sockstat = (os.pread(fd, 1 << 16, 0) for fd in self._fds)
        for data in (netstat, snmp):
            values.update(self._parse(data))
        tw = parse_sockstat_tw(sockstat)
        if tw is not None:
            values["sockstat.tw"] = tw
        if self._probe is not None:
            listeners = self._probe.sample()
            self._seen_ports.update(listeners)
            for port in self._seen_ports:
                # a listener that went away keeps its last backlog and shows an empty queue
                queue, backlog = listeners.get(
                    port, (0, self.latest.get(f"listen.{port}.backlog", 0)))
                values[f"listen.{port}.queue"] = queue
                values[f"listen.{port}.backlog"] = backlog
        return values

    def _record(self, t_ns: int, values: Dict[str, int], full: bool) -> None:
        rows = [(k, v) for k, v in values.items() if full or self.latest.get(k) != v]
        if not self.samples:
            self.first = dict(values)
        self.latest.update(values)
        self.samples += 1
        if rows:
            cols = {"t_ns": [t_ns] * len(rows), "name": [k for k, _ in rows],
                    "value": [v for _, v in rows]}
            self._writer.append_columns(cols)
            if self.on_rows is not None:
                self.on_rows(cols)

    def _sample(self, full: bool) -> None:
        t_ns = time.monotonic_ns()
        try:
            values = self._read()
        except Exception as exc:  # keep sampling: one bad read must not end a day-long trace
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(exc).__name__}: {exc}"
            return
        self._record(t_ns, values, full)

    def _run(self) -> None:
        try:
            self._open()
        except BaseException as exc:
            self._start_error = exc
            self._close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._sample(full=True)
            next_t = time.monotonic_ns() + self.period_ns
            last_flush = time.monotonic()
            while not self._stop.wait(max(0, next_t - time.monotonic_ns()) / 1e9):
                self._sample(full=False)
                self._maybe_rotate()
                next_t += self.period_ns
                now = time.monotonic_ns()
                if next_t < now:  # fell behind (a stalled VM): skip, do not burst
                    next_t = now + self.period_ns
                if time.monotonic() - last_flush >= self.flush_interval_s:
                    self._writer.flush()
                    last_flush = time.monotonic()
            self._sample(full=True)
        finally:
            self._close()
            self._writer.flush()

    # ---- long-running traces (spiketrace trace): segments ----
    on_rows = None  # called with each sample's stored rows (columns), in the sampler thread
    first: Dict[str, int] = {}  # the first sample's values (growth during the trace = latest - first)
    _rotate_to = None
    _samples_base = 0
    _ended_samples = 0

    def set_rate(self, hz: float) -> None:
        """Sample `hz` times a second from the next sample on (the trace daemon's --counter-hz)."""
        if not hz > 0:
            raise ValueError("hz must be positive")
        self.hz = float(hz)
        self.period_ns = int(1e9 / hz)

    def keep_going_on_write_errors(self) -> None:
        """A part that cannot be written (a full disk) is dropped and counted, sampling goes on."""
        self._keep_going = True
        if self._writer is not None:
            self._writer.keep_going = True

    _keep_going = False

    @property
    def write_errors(self) -> int:
        return self._writer.write_errors if self._writer is not None else 0

    def rotate(self, run_dir: Path, timeout_s: float = 5.0) -> int:
        """End the current segment and write into `run_dir` from now on: the old one gets a last
        full sample, the new one a first full sample (each segment reads on its own). Returns
        the ended segment's number of samples."""
        if self._thread is None:
            raise SpikeTraceError("the counter sampler is not running")
        done = threading.Event()
        self._rotate_to = (Path(run_dir), done)
        if not done.wait(timeout_s):
            raise SpikeTraceError("the counter sampler did not rotate its output in time")
        return self._ended_samples

    def _maybe_rotate(self) -> None:
        request, self._rotate_to = self._rotate_to, None
        if request is None:
            return
        path, done = request
        try:
            self._sample(full=True)
            self._ended_samples = self.samples - self._samples_base
            self._writer.flush()
            self._writer = TableWriter(path, "counters", prefix="sampler")
            self._writer.keep_going = self._keep_going
            self.run_dir = path
            self._samples_base = self.samples
            self._sample(full=True)
        finally:
            done.set()

    _layouts: Optional[Dict[bytes, List[Tuple[int, str]]]] = None

    def _parse(self, data: bytes) -> Dict[str, int]:
        """The wanted TcpExt/Tcp fields of /proc/net/netstat or snmp, as parse_snmp gives them,
        at a third of its cost (a day-long trace samples 20 times a second): the positions of
        the wanted fields are worked out once per header line."""
        if self._layouts is None:
            self._layouts = {}
        out: Dict[str, int] = {}
        lines = data.split(b"\n")
        for header, values in zip(lines[0::2], lines[1::2]):
            layout = self._layouts.get(header)
            if layout is None:
                section, _, fields = header.decode("ascii", "replace").partition(":")
                layout = [] if section not in ("TcpExt", "Tcp") else [
                    (i, f"{section}.{f}") for i, f in enumerate(fields.split())
                    if self.names is None or f"{section}.{f}" in self.names]
                self._layouts[header] = layout
            if not layout:
                continue
            vals = values.partition(b":")[2].split()
            for i, name in layout:
                try:
                    out[name] = int(vals[i])
                except (IndexError, ValueError):
                    continue
        return out
