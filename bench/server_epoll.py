"""The bench server's `epoll` model: one thread, non-blocking sockets, one small state machine
per connection (request 1, request 2, drain until EOF). Same protocol and records as the
blocking model in `bench.server`."""
from __future__ import annotations

import select
import time
from typing import TYPE_CHECKING, Dict, Optional

from bench._proc import DRAIN_ROOM, ERROR, OK, RESET, SHORT, Stop, StopHandler

if TYPE_CHECKING:
    import socket

    from bench._records import RowBuffer
    from common.meta import ServerParams as ServerOptions


class _EpollConn:
    __slots__ = ("sock", "fd", "addr", "phase", "got", "mem", "view", "out", "bytes_in",
                 "t_acc", "times")

    def __init__(self, sock, addr, payload: int, t_acc: int):
        self.sock, self.fd, self.addr = sock, sock.fileno(), addr
        self.phase = 0  # 0: request 1, 1: request 2, 2: drain until EOF
        self.got = 0
        self.mem = bytearray(payload + DRAIN_ROOM)
        self.view = memoryview(self.mem)
        self.out = None  # memoryview still to send, or None
        self.bytes_in = 0
        self.t_acc = t_acc
        self.times = [0, 0, 0, 0, 0]  # t_request1, t_reply1, t_request2, t_reply2, t_eof


def serve_epoll(lsock: socket.socket, opts: ServerOptions, buf: RowBuffer,
                 stop: Optional[StopHandler]) -> None:
    """One thread, non-blocking sockets, edge of each phase driven by epoll readiness."""
    P = opts.payload
    think = opts.think_ms / 1000.0
    mono = time.monotonic_ns
    lsock.setblocking(False)
    lfd = lsock.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns: Dict[int, _EpollConn] = {}
    conn_id = [0]

    def finish(conn: _EpollConn, outcome: str) -> None:
        try:
            ep.unregister(conn.fd)
        except OSError:
            pass
        conns.pop(conn.fd, None)
        conn.sock.close()
        t_close = mono()
        buf.rows.append((conn_id[0], conn.addr[0], conn.addr[1], conn.t_acc, *conn.times, t_close,
                         conn.bytes_in, outcome))
        conn_id[0] += 1
        if len(buf.rows) >= buf.slice_rows:
            if stop is not None:
                with stop.critical():
                    buf.convert()
            else:
                buf.convert()

    def send_reply(conn: _EpollConn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            n = 0
        conn.out = conn.out[n:] if n < len(conn.out) else None
        if conn.out is None:
            conn.times[1 if conn.phase == 0 else 3] = mono()
            conn.phase += 1
            conn.got = 0
            ep.modify(conn.fd, select.EPOLLIN)
        else:
            ep.modify(conn.fd, select.EPOLLOUT)

    def readable(conn: _EpollConn) -> None:
        while True:
            if conn.phase == 2:
                n = conn.sock.recv_into(conn.view)
            else:
                n = conn.sock.recv_into(conn.view[conn.got:P], P - conn.got)
            if n == 0:
                if conn.phase == 2:
                    conn.times[4] = mono()
                    finish(conn, OK)
                else:
                    finish(conn, SHORT)
                return
            conn.bytes_in += n
            if conn.phase == 2:
                continue
            conn.got += n
            if conn.got == P:
                conn.times[0 if conn.phase == 0 else 2] = mono()
                conn.out = conn.view[:P]
                send_reply(conn)
                if conn.out is not None:
                    return

    try:
        _epoll_loop(ep, lsock, lfd, conns, think, P, mono, readable, send_reply, finish)
    except Stop:
        for conn in list(conns.values()):  # stopped in mid-connection: keep what they reached
            finish(conn, ERROR)
        raise
    finally:
        ep.close()


def _epoll_loop(ep, lsock, lfd, conns, think, P, mono, readable, send_reply, finish) -> None:
    while True:
        for fd, mask in ep.poll():
            if fd == lfd:
                while True:
                    if think:
                        time.sleep(think)
                    try:
                        csock, addr = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    csock.setblocking(False)
                    conn = _EpollConn(csock, addr, P, mono())
                    conns[conn.fd] = conn
                    ep.register(conn.fd, select.EPOLLIN)
                continue
            conn = conns.get(fd)
            if conn is None:
                continue
            try:
                if mask & select.EPOLLOUT:
                    send_reply(conn)
                else:
                    readable(conn)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                finish(conn, RESET)
            except OSError:
                finish(conn, ERROR)
