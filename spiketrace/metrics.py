"""`spiketrace trace --metrics ADDR:PORT`: the daemon's state in Prometheus text format, served
by the official client library (prometheus_client).

One custom collector reads the daemon at scrape time (no second bookkeeping): what the tracer
counted in the kernel, what the live explanations found, what the counter sampler read, the
maps' fill, the recording's health, and prometheus_client's own process collector for the
daemon's CPU and memory (`process_cpu_seconds_total`, `process_resident_memory_bytes`).

Names follow the Prometheus conventions: the `spiketrace_` prefix, base units (seconds,
bytes), `_total` for counters, no per-connection label; every label set is bounded (causes,
event kinds, loss kinds, probes, the traced ports). docs/trace.md lists every metric.
"""
from __future__ import annotations

import collections
import errno
import os
import time
from typing import Dict, Iterable, Optional, Tuple

from common.errors import SpikeTraceError

CAUSE_LABELS = ("syn_retransmit", "synack_retransmit", "data_retransmit", "port_exhaustion", "reset",
                "runq_delay", "accept_queue_wait", "delayed_ack", "unexplained")


def parse_address(text: str) -> Tuple[str, int]:
    """`127.0.0.1:9464`, `:9464` (every address), `[::1]:9464` -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpikeTraceError(f"--metrics {text}: expected ADDRESS:PORT, e.g. 127.0.0.1:9464 or :9464")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MetricsServer:
    """The HTTP endpoint (`/metrics`); bound at once, so a port in use fails before tracing."""

    def __init__(self, address: str, daemon):
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector

        self.address = address
        host, port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(DaemonCollector(daemon))
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            why = ("address already in use (another spiketrace or exporter? choose another port)"
                   if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc))
            raise SpikeTraceError(f"--metrics {address}: cannot listen: {why}") from None
        self.port = self.httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class DaemonCollector:
    """Reads a running `spiketrace.daemon.Daemon` (see the module docstring)."""

    def __init__(self, daemon):
        self.d = daemon

    def collect(self) -> Iterable:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        from spiketrace import __version__

        d = self.d
        yield InfoMetricFamily("spiketrace_build", "spiketrace version", value={"version": __version__})

        c = CounterMetricFamily("spiketrace_spikes", "Slow connections explained live, by primary cause",
                                labels=["cause"])
        for cause in sorted(set(CAUSE_LABELS) | set(d.spikes_by_cause)):
            c.add_metric([cause], d.spikes_by_cause.get(cause, 0))
        yield c
        yield CounterMetricFamily("spiketrace_spikes_open", "Slow connections reported while still open "
                                  "(each is counted again in spiketrace_spikes_total when it closes)",
                                  value=d.spikes_open)
        kinds = dict(d.events_by_kind)
        c = CounterMetricFamily("spiketrace_retransmits", "Retransmits the tracer recorded", labels=["type"])
        c.add_metric(["syn"], d.syn_retransmits)
        c.add_metric(["data"], kinds.get("retransmit", 0) - d.syn_retransmits)
        c.add_metric(["synack"], kinds.get("synack_retransmit", 0))
        yield c
        c = CounterMetricFamily("spiketrace_events", "Kernel events recorded, by kind", labels=["kind"])
        for kind, n in sorted(kinds.items()):
            c.add_metric([kind], n)
        yield c
        yield from self._tracer(CounterMetricFamily, GaugeMetricFamily)
        yield from self._counters(CounterMetricFamily, GaugeMetricFamily)
        yield from self._health(CounterMetricFamily, GaugeMetricFamily)

    def _tracer(self, Counter, Gauge):
        d = self.d
        stats = d.tracer_totals()
        if stats is not None:
            yield Counter("spiketrace_connections", "TCP connections the kernel tracked to their close",
                          value=stats.connections_counted)
            yield Counter("spiketrace_connections_recorded", "Connections recorded in detail (slow or anomalous)",
                          value=stats.connections_sent)
            c = Counter("spiketrace_lost_events", "Evidence lost, by kind (see meta.json counts.lost_*)",
                        labels=["kind"])
            c.add_metric(["all"], stats.lost_events)
            for kind, n in sorted(stats.lost_by_kind.items()):
                c.add_metric([kind], n)
            yield c
        g = Gauge("spiketrace_probe_up", "1 if the evidence is probed (its backend attached), else 0",
                  labels=["evidence", "backend"])
        for evidence, backend in sorted((d.meta.probes if d.meta else {}).items()):
            g.add_metric([evidence, backend], 0 if backend in ("unavailable", "skipped") else 1)
        yield g
        prog = program_stats(d)
        if prog:
            runs = Counter("spiketrace_bpf_runs", "BPF program runs (while BPF statistics are on)",
                           labels=["program"])
            secs = Counter("spiketrace_bpf_run_seconds", "CPU time in BPF programs (while BPF statistics are on)",
                           labels=["program"])
            for fn, (ns, n) in sorted(prog.items()):
                runs.add_metric([fn], n)
                secs.add_metric([fn], ns / 1e9)
            yield runs
            yield secs
        used = Gauge("spiketrace_map_slots_used", "Slots in use in the tracer's BPF maps", labels=["map"])
        size = Gauge("spiketrace_map_slots", "Capacity of the tracer's BPF maps", labels=["map"])
        for name, (n, cap) in sorted(d.map_fill.items()):
            used.add_metric([name], n)
            size.add_metric([name], cap)
        yield used
        yield size
        t = Counter("spiketrace_thread_cpu_seconds", "CPU time of the daemon's threads (main loop and live "
                    "analysis, tracer consumer, counter sampler, metrics server, other)", labels=["thread"])
        for name, secs in sorted(thread_cpu(d).items()):
            t.add_metric([name], secs)
        yield t
        yield Counter("spiketrace_pids_expired", "Learned processes forgotten after they exited",
                      value=d.pids_expired)

    def _counters(self, Counter, Gauge):
        sampler = self.d.sampler
        if sampler is None:
            return
        latest, first = dict(sampler.latest), dict(sampler.first)
        for name, metric, what in (("TcpExt.ListenOverflows", "spiketrace_listen_overflows",
                                    "SYNs or final ACKs that met a full accept queue, during the trace"),
                                   ("TcpExt.ListenDrops", "spiketrace_listen_drops",
                                    "Handshake packets listeners dropped, during the trace"),
                                   ("TcpExt.TCPSynRetrans", "spiketrace_kernel_syn_retransmits",
                                    "SYN and SYN-ACK retransmits the traced namespace counted, during the trace"),
                                   ("Tcp.RetransSegs", "spiketrace_kernel_retransmitted_segments",
                                    "Segments the traced namespace retransmitted, during the trace")):
            if name in latest:
                yield Counter(metric, what, value=max(latest[name] - first.get(name, latest[name]), 0))
        if "sockstat.tw" in latest:
            yield Gauge("spiketrace_time_wait_sockets", "TIME_WAIT sockets in the traced namespace",
                        value=latest["sockstat.tw"])
        q = Gauge("spiketrace_accept_queue_length", "Connections waiting in the listener's accept queue",
                  labels=["port"])
        b = Gauge("spiketrace_accept_queue_backlog", "The listener's backlog (the queue holds backlog + 1)",
                  labels=["port"])
        for key, value in sorted(latest.items()):
            if key.startswith("listen.") and key.endswith(".queue"):
                q.add_metric([key.split(".")[1]], value)
            elif key.startswith("listen.") and key.endswith(".backlog"):
                b.add_metric([key.split(".")[1]], value)
        yield q
        yield b

    def _health(self, Counter, Gauge):
        d = self.d
        h = d.write_health()
        yield Counter("spiketrace_write_errors", "Table parts that could not be written (e.g. a full disk)",
                      value=h["errors"])
        yield Counter("spiketrace_rows_dropped", "Rows dropped because their part could not be written",
                      value=h["rows_dropped"])
        yield Gauge("spiketrace_recording_ok", "1 while the last write succeeded, else 0",
                    value=1 if h.get("ok", not h["last_error"]) else 0)
        yield Gauge("spiketrace_recording_bytes", "Disk used by the recording (every segment)",
                    value=disk_bytes(d))
        seg = d.segments
        if seg is not None:
            yield Gauge("spiketrace_recording_segments", "Recording segments on disk", value=seg.count())
            yield Counter("spiketrace_segments_pruned", "Old segments removed (--max-size, --max-age)",
                          value=seg.pruned)
        ex = d.explainer
        if ex is not None:
            yield Counter("spiketrace_live_analyses", "Live analyses run", value=ex.analyses)
            yield Counter("spiketrace_live_analysis_seconds", "Time spent in live analyses", value=ex.analysis_s)
            yield Counter("spiketrace_live_analysis_errors", "Live analyses that failed", value=ex.errors)
            yield Counter("spiketrace_live_shed", "Slow connections not explained live (too many at "
                          "once; recorded, explained by `spiketrace report`)", value=ex.shed)


def scrape(url: str, timeout: float = 5.0) -> dict:
    """Parse a /metrics page into {(name, frozenset(labels.items())): value} (for tests and
    benchmarks; uses prometheus_client's own parser)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> Optional[float]:
    return samples.get((name, frozenset(labels.items())))


# ---- readings of the daemon that only the metrics need ----
def thread_cpu(d) -> Dict[str, float]:
    """CPU seconds of this process's threads by role (where the daemon's time goes)."""
    roles = {os.getpid(): "main"}
    for role, thread in (("tracer", getattr(d.rec.tracer, "_thread", None) if d.rec else None),
                         ("counters", getattr(d.sampler, "_thread", None)),
                         ("metrics", getattr(d.metrics_server, "thread", None))):
        if thread is not None and thread.native_id:
            roles[thread.native_id] = role
    out: Dict[str, float] = collections.defaultdict(float)
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[roles.get(int(tid), "other")] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def disk_bytes(d) -> int:
    from spiketrace.segments import dir_bytes

    if d.segments is not None:
        return d.segments.total_bytes()
    if d.rec is None:
        return 0
    if time.monotonic() - d._disk[1] >= 5:
        d._disk = (dir_bytes(d.rec.path), time.monotonic())
    return d._disk[0]


def program_stats(d):
    from tracer.upkeep import program_stats

    tracer = d.rec.tracer if d.rec is not None else None
    return program_stats(tracer) if tracer is not None and d._stats_fd is not None else {}
