"""A framed, multiplexed connection: the one transport shell of every ElkFS port.

`Connection` is an asyncio `BufferedProtocol`: the kernel copies received bytes straight
into our buffers (no intermediate `bytes` objects). Small frames are parsed out of one
reusable receive buffer; a frame whose body is large (chunk data) gets a buffer of its own,
sized from the header *after* the length was checked, and the socket fills it directly,
so bulk data is copied once between the kernel and the handler.

Requests and replies are matched by `req`. Incoming replies resolve the future of the
request they answer; every other message goes to the `handler` callback, which runs
synchronously in the event loop (handlers that must wait start a task of their own). That
keeps per-connection ordering for handlers that need it and costs nothing for those that
do not.

A peer that sends garbage (bad length, unknown type, schema-invalid meta) gets its one
connection closed with a log line; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
from typing import Callable

import msgspec

from . import messages as m
from .errors import FsError, PROTOCOL
from .frames import HEADER_SIZE, FrameError, pack_header, parse_header

log = logging.getLogger("elkfs.rpc")

RECV_BUFFER = 1 << 20
BIG_FRAME = 128 << 10  # bodies larger than this get a buffer of their own
SMALL_READ = 64 << 10  # bytes read into the shared buffer at a time

REPLY_TYPES = frozenset(
    cls.TYPE for cls in (m.Ok, m.Error, m.SessionReply, m.MetaReply, m.ReadData,
                         m.WriteStatus, m.ChunkInfoReply, m.CsRegistered, m.Challenge,
                         m.AuthChallenge)
)

Handler = Callable[["Connection", m.Msg, memoryview | None], None]


class ConnectionClosed(ConnectionError):
    pass


class Connection(asyncio.BufferedProtocol):
    def __init__(self, handler: Handler | None = None, name: str = "",
                 on_close: Callable[["Connection"], None] | None = None):
        self.handler = handler
        self.name = name
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.closed = asyncio.get_event_loop().create_future()
        self.context: object = None  # what the server knows of this peer
        # Cluster authentication (handshake.py): whether the peer proved AUTH_CODE (or
        # none is needed), and the nonces of a handshake under way.
        self.authenticated = False
        self.auth_nonces: tuple[bytes, bytes] | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._req_ids = itertools.count(1)
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._big: bytearray | None = None
        self._big_pos = 0
        self._big_header: tuple[int, int, int] = (0, 0, 0)
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer[:2]) if peer else None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc):
        err = ConnectionClosed(f"connection to {self.peer} closed")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_exception(err)
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            self.on_close(self)

    def pause_writing(self):
        self._write_paused = True

    def resume_writing(self):
        self._write_paused = False
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    def get_buffer(self, sizehint):
        if self._big is not None:
            return memoryview(self._big)[self._big_pos:]
        if len(self._buf) - self._end < SMALL_READ:  # compact: partial frame to the front
            remaining = self._end - self._start
            self._buf[:remaining] = self._view[self._start:self._end]
            self._start, self._end = 0, remaining
        # Small reads: the start of a large frame lands here and is copied into the
        # frame's own buffer, so keep that part small.
        return self._view[self._end:self._end + SMALL_READ]

    def buffer_updated(self, nbytes):
        try:
            if self._big is not None:
                self._big_pos += nbytes
                if self._big_pos == len(self._big):
                    body, self._big = self._big, None
                    msg_type, meta_len, _ = self._big_header
                    self._deliver(msg_type, memoryview(body), meta_len)
                return
            self._end += nbytes
            self._parse()
        except (FrameError, msgspec.ValidationError, msgspec.DecodeError) as e:
            self.protocol_error(e)

    def eof_received(self):
        return False

    # ------------------------------------------------------------ parsing

    def _parse(self):
        view = self._view
        while self.transport is not None and not self.transport.is_closing():
            avail = self._end - self._start
            if avail < HEADER_SIZE:
                break
            msg_type, _flags, meta_len, data_len = parse_header(
                view[self._start:self._start + HEADER_SIZE])
            if msg_type not in m.DECODERS:
                raise FrameError(f"unknown message type {msg_type}")
            total = meta_len + data_len
            if avail - HEADER_SIZE >= total:
                body_start = self._start + HEADER_SIZE
                self._start = body_start + total
                if data_len:
                    # Copy a small body out of the shared receive buffer.
                    body = memoryview(bytes(view[body_start:body_start + total]))
                else:
                    body = view[body_start:body_start + total]
                self._deliver(msg_type, body, meta_len)
                continue
            if total > BIG_FRAME:
                have = avail - HEADER_SIZE
                self._big = bytearray(total)
                self._big[:have] = view[self._start + HEADER_SIZE:self._end]
                self._big_pos = have
                self._big_header = (msg_type, meta_len, data_len)
                self._start = self._end = 0
            break
        if self._start == self._end:
            self._start = self._end = 0

    def _deliver(self, msg_type: int, body: memoryview, meta_len: int):
        try:
            msg = m.DECODERS[msg_type].decode(body[:meta_len])
        except msgspec.ValidationError as e:
            if msg_type in REPLY_TYPES or not self._refuse(msg_type, body[:meta_len], e):
                raise
            return
        data = body[meta_len:] if len(body) > meta_len else None
        if msg_type in REPLY_TYPES:
            fut = self._pending.pop(msg.req, None)
            if fut is not None and not fut.done():
                fut.set_result((msg, data))
            return
        if self.handler is None:
            raise FrameError(f"unexpected message {type(msg).__name__}")
        try:
            self.handler(self, msg, data)
        except (FrameError, msgspec.ValidationError):
            raise
        except Exception:  # a bug in a handler: say so loudly, drop only this peer
            log.exception("handler failed on %s from %s", type(msg).__name__, self.peer)
            self.close()

    def _refuse(self, msg_type: int, meta: memoryview, exc: msgspec.ValidationError) -> bool:
        """A request that is well formed but breaks its schema (a number out of range, a
        field missing) is answered EINVAL, and the connection goes on: the sender gets
        a clear error and does not retry. False when it has no request id to answer."""
        cls = m.MESSAGES[msg_type]
        if not cls.__struct_fields__ or cls.__struct_fields__[0] != "req":
            return False
        try:
            raw = msgspec.msgpack.decode(meta)
        except msgspec.DecodeError:
            return False
        if not isinstance(raw, list) or not raw or type(raw[0]) is not int or raw[0] < 0:
            return False
        log.warning("refused %s from %s (%s): %s", cls.__name__, self.peer, self.name, exc)
        self.send(m.Error(raw[0], errno.EINVAL, f"invalid {cls.__name__}: {exc}"))
        return True

    def protocol_error(self, exc: Exception):
        log.warning("closing connection from %s (%s): bad input: %s", self.peer, self.name, exc)
        self.close()

    # ------------------------------------------------------------ sending

    def send(self, msg: m.Msg, data=None):
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed(f"connection to {self.peer} closed")
        meta = m.encode(msg)
        if data is not None and len(data):
            self.transport.writelines((pack_header(msg.TYPE, len(meta), len(data)) + meta, data))
        else:
            self.transport.write(pack_header(msg.TYPE, len(meta), 0) + meta)

    def send_if_open(self, msg: m.Msg) -> None:
        """Send unless the connection is gone (an answer nobody waits for any more)."""
        if self.transport is not None and not self.transport.is_closing():
            self.send(msg)

    def next_req(self) -> int:
        return next(self._req_ids)

    def start_call(self, msg: m.Msg, data=None) -> asyncio.Future:
        """Send a request (its `req` must come from `next_req`) and return the future of
        its reply: `(reply, data)`."""
        fut = asyncio.get_event_loop().create_future()
        self._pending[msg.req] = fut
        try:
            self.send(msg, data)
        except ConnectionClosed:
            del self._pending[msg.req]
            raise
        return fut

    async def call(self, cls: type[m.Msg], data=None, timeout: float | None = None, **fields):
        """Send `cls(req=..., **fields)` and wait for the reply. Raises FsError on an
        `Error` reply."""
        msg = cls(self.next_req(), **fields)
        fut = self.start_call(msg, data)
        try:
            reply, rdata = await wait_reply(fut, timeout)
        finally:
            self._pending.pop(msg.req, None)
        if isinstance(reply, m.Error):
            raise FsError(reply.status, reply.detail)
        return reply, rdata

    async def drain(self):
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed(f"connection to {self.peer} closed")
        if self._write_paused:
            fut = asyncio.get_event_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    def reply_error(self, req: int, exc: BaseException):
        if isinstance(exc, FsError):
            self.send(m.Error(req, exc.status, exc.detail))
        else:
            self.send(m.Error(req, PROTOCOL, str(exc)))

    @property
    def waiting(self) -> bool:
        """Whether a request sent here still waits for its reply."""
        return bool(self._pending)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self):
        if self.transport is not None:
            self.transport.close()


async def wait_reply(fut: asyncio.Future, timeout: float | None):
    """The reply `(msg, data)` of a `start_call` future; TimeoutError after `timeout`. A
    timer on the future itself: cheaper than asyncio.wait_for, which makes a future and
    callbacks of its own and costs a loop iteration even for a reply already there."""
    if fut.done():
        return fut.result()
    timer = fut.get_loop().call_later(timeout, _expire, fut) if timeout is not None else None
    try:
        return await fut
    finally:
        if timer is not None:
            timer.cancel()


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


async def connect(host: str, port: int, handler: Handler | None = None, name: str = "",
                  timeout: float = 5.0, on_close=None, local_host: str | None = None
                  ) -> Connection:
    """Connect to host:port; from `local_host` when given (a daemon that listens on one
    address connects from it too, so per-address firewall rules and peers' view of it
    match)."""
    loop = asyncio.get_event_loop()
    local = (local_host, 0) if local_host else None
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: Connection(handler, name, on_close), host, port,
                               local_addr=local),
        timeout)
    return conn


async def serve(host: str, port: int, handler: Handler, name: str, on_close=None,
                on_connect=None):
    """Listen on host:port; each accepted connection is a `Connection` with `handler`."""
    loop = asyncio.get_event_loop()

    def factory():
        conn = Connection(handler, name, on_close)
        if on_connect is not None:
            on_connect(conn)
        return conn

    return await loop.create_server(factory, host, port, reuse_address=True, backlog=1024)
