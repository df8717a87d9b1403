"""The server reads the *whole* request however it is cut (the original read once and could
mis-frame), records broken connections with their outcome, and goes on serving."""
from __future__ import annotations

import socket
import struct
import time

import pandas as pd
import pytest

from bench.client import request_bytes
from bench.server import ServerOptions, start_server_process

P = 3000
MODELS = ["blocking", "threaded", "epoll"]


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # every piece its own segment
    return s


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _send_in_pieces(s: socket.socket, data: bytes, cuts, gap_s: float) -> None:
    start = 0
    for cut in list(cuts) + [len(data)]:
        s.sendall(data[start:cut])
        start = cut
        time.sleep(gap_s)


def _server_table(tmp_path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "server.parquet").sort_values("t_accept").reset_index(drop=True)


@pytest.mark.parametrize("model", MODELS)
def test_request_arriving_in_pieces_is_read_whole(tmp_path, model):
    req = request_bytes(P)
    with start_server_process(ServerOptions(port=0, model=model), tmp_path) as server:
        with _connect(server.port) as s:
            _send_in_pieces(s, req, [1, 1000, 2999], gap_s=0.03)
            assert _recv_exactly(s, P) == req
            _send_in_pieces(s, req, [1500], gap_s=0.03)
            assert _recv_exactly(s, P) == req
            peer_port = s.getsockname()[1]
        time.sleep(0.2)  # let the server read our EOF and close before it is stopped
        server.stop()
    row = _server_table(tmp_path).iloc[0]
    assert row["outcome"] == "ok" and row["bytes_in"] == 2 * P and row["peer_port"] == peer_port
    # the first echo waited for the last piece: 4 pieces, 3 gaps of 30 ms before it
    assert row["t_request1"] - row["t_accept"] >= 80e6
    assert row["t_request2"] - row["t_reply1"] >= 25e6


@pytest.mark.parametrize("model", MODELS)
def test_broken_connections_are_recorded_and_serving_goes_on(tmp_path, model):
    req = request_bytes(P)
    with start_server_process(ServerOptions(port=0, model=model), tmp_path) as server:
        with _connect(server.port) as s:  # half a request, then EOF
            s.sendall(req[:1000])
            s.shutdown(socket.SHUT_WR)
            try:  # no echo of a partial request: EOF, or the RST of SO_LINGER {1, 0}
                assert _recv_exactly(s, P) == b""
            except ConnectionResetError:
                pass
        time.sleep(0.05)
        s = _connect(server.port)  # a reset in the middle of the request
        s.sendall(req[:1000])
        time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        time.sleep(0.05)
        with _connect(server.port) as s:  # and a good one after both
            for _ in range(2):
                s.sendall(req)
                assert _recv_exactly(s, P) == req
        time.sleep(0.2)
        server.stop()
    table = _server_table(tmp_path)
    assert list(table["outcome"]) == ["short_request", "reset", "ok"]
    assert list(table["bytes_in"]) == [1000, 1000, 2 * P]
    assert table.loc[0, "t_request1"] == 0 and table.loc[0, "t_close"] > 0
