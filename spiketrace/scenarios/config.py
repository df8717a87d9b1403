"""Scenarios injected by configuration alone (sysctls, bench options): their ground truth is
the configuration, or is read back from the run's own tables at teardown."""
from __future__ import annotations

import errno
import time

from spiketrace.scenarios.base import Injection, gt_row, read_transactions


class NagleDelayedAck(Injection):
    """Client writes each request in two parts without TCP_NODELAY: Nagle holds the second
    part until the first is ACKed, and the server delays that ACK (>= 40 ms)."""

    def install(self) -> None:
        self.t_install = time.monotonic_ns()

    def collect(self):
        c = self.scenario.client_overrides
        return [gt_row(self.t_install, "delayed_ack",
                       f"split_writes={int(bool(c.get('split_writes')))} "
                       f"nodelay={int(bool(c.get('nodelay')))} (every transaction)",
                       daddr=self.scenario.server_overrides.get("host", "127.0.0.1"),
                       dport=self.port)]


class PortExhaustion(Injection):
    """Ground truth from the run's transactions: every transaction whose connect() had to be
    retried after EADDRNOTAVAIL. Call teardown after the clients have flushed their tables."""

    def collect(self):
        tx = read_transactions(self.run_dir, ["t_start", "local_addr", "local_port", "remote_addr",
                                              "remote_port", "connect_attempts", "last_errno"])
        if tx is None:
            self.notes.append("port-exhaustion: no transactions table, so no ground truth")
            return []
        hit = tx[(tx["connect_attempts"] > 1) & (tx["last_errno"] == errno.EADDRNOTAVAIL)]
        self.params["transactions_exhausted"] = int(len(hit))
        return [gt_row(r.t_start, "port_exhaustion",
                       f"EADDRNOTAVAIL x{int(r.connect_attempts) - 1}",
                       r.local_addr or "", int(r.local_port or 0), r.remote_addr or "",
                       int(r.remote_port or 0))
                for r in hit.itertuples(index=False)]
