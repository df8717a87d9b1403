"""The tables of a run directory: columns and Arrow types (docs/run-directory.md documents
every column; tests/unit/test_rundir.py checks the two agree)."""
from __future__ import annotations

from typing import Dict

import pyarrow as pa

_i64, _i32, _str = pa.int64(), pa.int32(), pa.string()

# Table name -> schema. docs/run-directory.md documents every column; tests check they agree.
SCHEMAS: Dict[str, pa.Schema] = {
    "transactions": pa.schema([
        ("id", _i64), ("worker", _i32), ("pid", _i32),
        ("local_addr", _str), ("local_port", _i32), ("remote_addr", _str), ("remote_port", _i32),
        ("t_start", _i64), ("t_connected", _i64), ("t_reply1", _i64), ("t_reply2", _i64),
        ("t_end", _i64), ("connect_attempts", _i32), ("last_errno", _i32), ("outcome", _str),
    ]),
    "server": pa.schema([
        ("conn_id", _i64), ("worker", _i32), ("pid", _i32),
        ("peer_addr", _str), ("peer_port", _i32), ("local_port", _i32),
        ("t_accept", _i64), ("t_request1", _i64), ("t_reply1", _i64), ("t_request2", _i64),
        ("t_reply2", _i64), ("t_eof", _i64), ("t_close", _i64), ("bytes_in", _i64),
        ("outcome", _str),
    ]),
    "events": pa.schema([
        ("t_ns", _i64), ("kind", _str), ("pid", _i32), ("comm", _str), ("netns", pa.uint32()),
        ("saddr", _str), ("sport", _i32), ("daddr", _str), ("dport", _i32),
        ("state", _i32), ("new_state", _i32), ("reason", _i32), ("value", _i64), ("value2", _i64),
    ]),
    "connections": pa.schema([
        ("netns", pa.uint32()), ("role", _str), ("pid", _i32), ("comm", _str),
        ("saddr", _str), ("sport", _i32), ("daddr", _str), ("dport", _i32),
        ("t_open", _i64), ("t_established", _i64), ("t_first_data", _i64), ("t_close", _i64),
        ("t_first_read", _i64), ("t_first_write", _i64), ("hold_ns", _i64), ("hold_end", _i64),
        ("hold_tid", _i32), ("hold_ran_ns", _i64), ("hold_wait_ns", _i64), ("tid", _i32),
        ("syn_retrans", _i32), ("retrans", _i32), ("resets", _i32), ("flags", _i32),
    ]),
    "histograms": pa.schema([
        ("t_ns", _i64), ("name", _str), ("log2_bucket", _i32), ("count", _i64),
    ]),
    "counters": pa.schema([("t_ns", _i64), ("name", _str), ("value", _i64)]),
    "ground_truth": pa.schema([
        ("t_ns", _i64), ("kind", _str), ("saddr", _str), ("sport", _i32),
        ("daddr", _str), ("dport", _i32), ("detail", _str),
    ]),
    # analysis output: one row per slow transaction (docs/reports.md)
    "explanations": pa.schema([
        ("txn_id", _i64), ("worker", _i32), ("pid", _i32), ("local_port", _i32),
        ("t_start", _i64), ("latency_ns", _i64), ("outcome", _str),
        ("cause", _str), ("cause_detail", _str), ("causes", _str),
        ("syn_retransmit_ns", _i64), ("synack_retransmit_ns", _i64), ("data_retransmit_ns", _i64),
        ("port_exhaustion_ns", _i64), ("reset_ns", _i64), ("runq_delay_ns", _i64),
        ("accept_queue_wait_ns", _i64), ("server_processing_ns", _i64), ("client_blocked_ns", _i64),
        ("delayed_ack_ns", _i64),
        ("explained_ns", _i64), ("rest_ns", _i64), ("inferred", pa.bool_()),
        ("sentence", _str), ("evidence_events", pa.list_(_i64)), ("server_conn", _i64),
        ("source", _str), ("match", _str), ("match_distance_ns", _i64),
    ]),
}

TABLE_NAMES = tuple(SCHEMAS)
