"""Precision and recall of the attribution against a scenario's ground_truth.parquet.

A ground-truth row names a cause a scenario injected (`kind`, a cause name or one of the
scenario spellings below) for the transaction whose client port is `sport` and whose
[t_start, end] holds `t_ns`; `sport` 0 means "every transaction" and then marks every spike.
For each cause, over the spikes (only a slow transaction can be explained, and an injection
that did not slow its transaction, e.g. a CPU hog burst it slipped past, is no miss):
truth = spikes marked with it, predicted = spikes whose causes (primary or others) include it;
precision = |both| / |predicted|, recall = |both| / |truth|. `injected` counts every marked
transaction, slow or not.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

from analysis.context import ALL_CAUSES
from analysis.join import asof_interval

GROUND_TRUTH_KINDS = {
    "syn_drop": "syn_retransmit", "listen_overflow": "syn_retransmit", "legacy_rto": "syn_retransmit",
    "synack_drop": "synack_retransmit", "ack_drop": "synack_retransmit",
    "data_drop": "data_retransmit", "data_loss": "data_retransmit",
    "accept_wait": "accept_queue_wait", "slow_accept": "accept_queue_wait",
    "port_exhaustion": "port_exhaustion", "eaddrnotavail": "port_exhaustion",
    "refused": "reset", "connection_refused": "reset", "rst": "reset",
    "cpu_contention": "runq_delay", "runq": "runq_delay",
    "nagle_delack": "delayed_ack", "delack": "delayed_ack", "nagle": "delayed_ack",
}


def cause_of(kind: str) -> Optional[str]:
    kind = str(kind)
    if kind in ALL_CAUSES:
        return kind
    return GROUND_TRUTH_KINDS.get(kind.replace("-", "_").lower())


def evaluate(truth: pd.DataFrame, txn: pd.DataFrame, server_ports: np.ndarray, spikes: np.ndarray,
             spike_causes: List[str], slack_ns: int) -> Tuple[Optional[pd.DataFrame], List[str]]:
    """The accuracy table (None without ground truth) and warnings about rows it could not use."""
    if truth is None or truth.empty:
        return None, []
    warnings = []
    causes = truth["kind"].astype(str).map(cause_of)
    unknown = sorted(set(truth["kind"].astype(str)[causes.isna()]))
    if unknown:
        warnings.append(f"ground truth kinds not scored (no matching cause): {', '.join(unknown)}")
    truth = truth.assign(cause=causes)[causes.notna()]
    sport = truth["sport"].to_numpy(dtype=np.int64)
    dport = truth["dport"].to_numpy(dtype=np.int64)
    client_port = np.where(np.isin(sport, server_ports) & ~np.isin(dport, server_ports), dport, sport)
    marked = {}  # cause -> set of transaction indices
    everyone_causes = set()  # causes injected into every transaction (sport 0)
    everyone = client_port == 0
    hit = asof_interval(np.where(everyone, -1, client_port), truth["t_ns"].to_numpy(),
                        txn["local_port"].to_numpy(dtype=np.int64), txn["t_start"].to_numpy() - slack_ns,
                        txn["end"].to_numpy() + slack_ns)
    unmatched = int(((hit < 0) & ~everyone).sum())
    if unmatched:
        warnings.append(f"{unmatched:,} ground-truth rows matched no transaction (by client port and time)")
    for cause, ti, all_ in zip(truth["cause"], hit, everyone):
        bucket = marked.setdefault(cause, set())
        if all_:
            everyone_causes.add(cause)
            bucket.update(spikes.tolist())
        elif ti >= 0:
            bucket.add(int(ti))
    predicted = {}
    for ti, names in zip(spikes.tolist(), spike_causes):
        for name in names.split(","):
            predicted.setdefault(name, set()).add(ti)
    rows = []
    slow = set(spikes.tolist())
    for cause in ALL_CAUSES:
        if cause not in marked:
            continue
        t, p = marked[cause] & slow, predicted.get(cause, set())
        tp = len(t & p)
        injected = len(txn) if cause in everyone_causes else len(marked[cause])
        rows.append({"cause": cause, "injected": injected, "truth": len(t), "predicted": len(p), "tp": tp,
                     "fp": len(p - t), "fn": len(t - p),
                     "precision": tp / len(p) if p else None, "recall": tp / len(t) if t else None})
    return pd.DataFrame(rows), warnings
