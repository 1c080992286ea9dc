"""A framed, multiplexed connection: the one transport shell of every ElkFS port.

`Connection` is an asyncio `BufferedProtocol`: the kernel copies received bytes straight
into our buffers (no intermediate `bytes` objects). Small frames are parsed out of one
receive buffer shared by every connection of the thread (the event loop runs one
callback at a time, and nothing points into it once a callback returns); only the part
of a frame that has arrived but is not whole stays with its connection. An idle
connection therefore holds no buffer at all: its memory is a few Python objects.

A frame whose body is large (chunk data) gets a buffer of its own that the socket fills
directly, so bulk data is copied once between the kernel and the handler. That buffer
grows with what has arrived (from `BIG_FIRST`, by `BIG_GROWTH` each time it is full),
never to the length a header announces before the bytes are there: a peer that announces the largest frame and sends
nothing costs a header, not 12 MiB.

Connections accepted by `serve` obey `ConnectionLimits` (see `Listener`): so many per
source address, a deadline for each frame once its first byte arrived (a sender of one
byte a second is dropped), a deadline for connections nobody registered, TCP keepalive
for half-open ones, and no reading while the peer does not read our replies.

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
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import msgspec

from . import messages as m
from .errors import FsError, PROTOCOL
from .. import ratelog
from .frames import HEADER_SIZE, FrameError, pack_header, parse_header

log = logging.getLogger("elkfs.rpc")
limit_log = ratelog.RateLimitedLog(log)  # one line per kind and peer address a while

BIG_FRAME = 128 << 10  # bodies larger than this get a buffer of their own
BIG_FIRST = 64 << 10  # the first size of that buffer; it grows as bytes arrive
BIG_GROWTH = 4  # by this factor each time it is full: few reallocations for 8 MiB
SMALL_READ = 64 << 10  # bytes read into the shared buffer at a time
WRITE_HIGH_WATER = 16 << 20  # replies queued beyond this (two of the largest): stop
# reading requests from that peer until it has read them

REPLY_TYPES = frozenset(
    cls.TYPE for cls in (m.Ok, m.Error, m.SessionReply, m.MetaReply, m.ReadData,
                         m.WriteStatus, m.ChunkInfoReply, m.CsRegistered, m.Challenge,
                         m.AuthChallenge)
)

Handler = Callable[["Connection", m.Msg, memoryview | None], None]


class ConnectionClosed(ConnectionError):
    pass


_thread_local = threading.local()


def _shared_buffer() -> memoryview:
    """The receive buffer of this thread's event loop (one loop per thread)."""
    view = getattr(_thread_local, "recv_view", None)
    if view is None:
        view = _thread_local.recv_view = memoryview(bytearray(SMALL_READ))
    return view


class Connection(asyncio.BufferedProtocol):
    def __init__(self, handler: Handler | None = None, name: str = "",
                 on_close: Callable[["Connection"], None] | None = None,
                 listener: "Listener | None" = None):
        self.handler = handler
        self.listener = listener
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
        self._shared = _shared_buffer()
        self._held = bytearray()  # the start of a small frame that is not whole yet
        self._big: bytearray | None = None  # the body of a large frame, growing
        self._big_pos = 0  # bytes of it received
        self._big_header: tuple[int, int, int] = (0, 0, 0)  # type, meta_len, total
        self._into_big = False  # whether the last get_buffer gave out `_big`
        self.frame_started_at: float | None = None  # first byte of an unfinished frame
        self.last_frame_at = time.monotonic()  # the last whole frame (or the connect)
        self._write_paused = False
        self._reading_paused = False
        self._drain_waiters: list[asyncio.Future] = []

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer[:2]) if peer else None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.listener is not None:
            self.listener.admit(self, sock)

    def connection_lost(self, exc):
        if self.listener is not None:
            self.listener.forget(self)
        self._held = bytearray()
        self._big = None  # given back now, not when the last reference to us goes
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
        if self._reading_paused and self.transport is not None \
                and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()

    def get_buffer(self, sizehint):
        big = self._big
        if big is not None:
            if self._big_pos == len(big):  # full: grow it by what has arrived
                total = self._big_header[2]
                big += bytes(min(total, BIG_GROWTH * len(big)) - len(big))
            self._into_big = True
            return memoryview(big)[self._big_pos:]
        self._into_big = False
        return self._shared

    def buffer_updated(self, nbytes):
        try:
            if self._into_big:
                self._into_big = False
                self._big_pos += nbytes
                if self._big_pos == self._big_header[2]:
                    self._finish_big()
                return
            self._consume(self._shared[:nbytes])
            if self.listener is not None and self.is_open \
                    and self.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                # A peer that does not read our replies sends no more requests until
                # it has read most of them: what we queue for it stays bounded.
                self._reading_paused = True
                self.transport.pause_reading()
        except (FrameError, *m.DECODE_ERRORS) as e:
            self.protocol_error(e)

    def eof_received(self):
        return False

    # ------------------------------------------------------------ parsing

    def _consume(self, data: memoryview) -> None:
        """Parse the bytes that just arrived in the shared buffer: first finish the frame
        begun earlier, then deliver whole frames straight from `data`, then keep the
        start of the last one if it is not whole."""
        pos, end = 0, len(data)
        if self._held:
            pos = self._continue_held(data)
            if pos < 0:
                return
        elif self._big is not None:
            pos = self._fill_big(data)
        while pos < end and self.is_open:
            if end - pos < HEADER_SIZE:
                self._hold(data[pos:end])
                return
            msg_type, _flags, meta_len, data_len = parse_header(data[pos:pos + HEADER_SIZE])
            if msg_type not in m.DECODERS:
                raise FrameError(f"unknown message type {msg_type}")
            total = meta_len + data_len
            body_start = pos + HEADER_SIZE
            if end - body_start >= total:
                pos = body_start + total
                if data_len:
                    # Copy a small body out of the shared receive buffer.
                    body = memoryview(bytes(data[body_start:pos]))
                else:
                    body = data[body_start:pos]
                self._delivered()
                self._deliver(msg_type, body, meta_len)
                continue
            if total > BIG_FRAME:
                self._start_big(msg_type, meta_len, total)
                self._fill_big(data[body_start:end])
            else:
                self._hold(data[pos:end])
            return
        if self._big is None and not self._held:
            self.frame_started_at = None

    def _hold(self, part: memoryview) -> None:
        self._held = bytearray(part)
        if self.frame_started_at is None:
            self.frame_started_at = time.monotonic()

    def _continue_held(self, data: memoryview) -> int:
        """Add to the held start of a frame; deliver it once whole. Returns where the
        next frame starts in `data` (-1: all of `data` went to an unfinished frame)."""
        held = self._held
        pos = 0
        if len(held) < HEADER_SIZE:
            pos = min(HEADER_SIZE - len(held), len(data))
            held += data[:pos]
            if len(held) < HEADER_SIZE:
                return -1
        msg_type, _flags, meta_len, data_len = parse_header(held[:HEADER_SIZE])
        if msg_type not in m.DECODERS:
            raise FrameError(f"unknown message type {msg_type}")
        total = meta_len + data_len
        if total > BIG_FRAME:  # its header came in pieces: the body goes to its own buffer
            have = bytes(held[HEADER_SIZE:])
            self._held = bytearray()
            self._start_big(msg_type, meta_len, total)
            self._fill_big(memoryview(have))
            return pos + self._fill_big(data[pos:])
        take = min(HEADER_SIZE + total - len(held), len(data) - pos)
        held += data[pos:pos + take]
        pos += take
        if len(held) < HEADER_SIZE + total:
            return -1
        self._held = bytearray()  # the delivered body may be kept: never reuse it
        self._delivered()
        self._deliver(msg_type, memoryview(held)[HEADER_SIZE:], meta_len)
        return pos

    def _start_big(self, msg_type: int, meta_len: int, total: int) -> None:
        self._big = bytearray(min(total, BIG_FIRST))
        self._big_pos = 0
        self._big_header = (msg_type, meta_len, total)
        if self.frame_started_at is None:
            self.frame_started_at = time.monotonic()

    def _fill_big(self, data: memoryview) -> int:
        """Copy what arrived in the shared buffer into the large frame's body (growing
        it); deliver it once whole. Returns how many bytes of `data` it took."""
        big = self._big
        total = self._big_header[2]
        take = min(total - self._big_pos, len(data))
        if self._big_pos + take > len(big):
            big += bytes(min(total, max(BIG_GROWTH * len(big), self._big_pos + take))
                         - len(big))
        big[self._big_pos:self._big_pos + take] = data[:take]
        self._big_pos += take
        if self._big_pos == total:
            self._finish_big()
        return take

    def _finish_big(self) -> None:
        body, self._big = self._big, None
        msg_type, meta_len, _ = self._big_header
        self._delivered()
        self._deliver(msg_type, memoryview(body), meta_len)

    def _delivered(self) -> None:
        self.last_frame_at = time.monotonic()
        self.frame_started_at = None

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
        except m.DECODE_ERRORS:
            return False
        if not isinstance(raw, list) or not raw or type(raw[0]) is not int or raw[0] < 0:
            return False
        log.warning("refused %s from %s (%s): %s", cls.__name__, self.peer, self.name, exc)
        self.send(m.Error(raw[0], errno.EINVAL, f"invalid {cls.__name__}: {exc}"))
        return True

    def protocol_error(self, exc: Exception):
        address = self.peer[0] if self.peer else ""
        limit_log.warning(("bad input", self.name, address),
                          "closing connection from %s (%s): bad input: %s", self.peer,
                          self.name, exc)
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

    def forget_call(self, req: int) -> None:
        """Stop waiting for the reply to `req` (a late reply is dropped)."""
        self._pending.pop(req, None)

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


REUSE_IDLE_S = 30.0  # well under every port's idle timeout (IDLE_CONNECTION_TIMEOUT)


def reusable(conn: Connection) -> bool:
    """Whether a pooled connection may carry another request: open, and not silent for
    so long that the other side may be closing it as idle right now."""
    return conn.is_open and time.monotonic() - conn.last_frame_at < REUSE_IDLE_S


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


@dataclass
class ConnectionLimits:
    """What one listening port allows each accepted connection (0: no limit)."""

    per_address: int = 0  # open connections from one source address
    idle_s: float = 0.0  # a connection `keep` does not keep, with no frame for this
    # long, is closed (TCP keepalive finds the half-open ones among those kept)
    frame_s: float = 30.0  # a frame must be whole this long after its first byte
    keepalive_s: int = 30  # TCP keepalive: first probe after this much silence
    keep: Callable[["Connection"], bool] | None = None  # default: registered ones
    # (the port's handler gave the connection a `context`)
    what: str = "a frame"  # what `frame_s` bounds, for the log line


SWEEP_PERIOD_S = 1.0
TRIM_AFTER_CLOSES = 256  # connections closed before memory is handed back to the OS
TRIM_PERIOD_S = 60.0  # at most this often


class Listener:
    """The connections of one listening port: the cap per source address and the
    deadlines, checked by one sweep a second (not a timer per connection)."""

    def __init__(self, name: str, limits: ConnectionLimits):
        self.name = name
        self.limits = limits
        self.conns: set[Connection] = set()
        self.by_address: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0
        self._closed_since_trim = 0
        self._trimmed_at = 0.0
        self._sweeper: asyncio.TimerHandle | None = None
        self.server: asyncio.AbstractServer | None = None

    def admit(self, conn: Connection, sock) -> None:
        address = conn.peer[0] if conn.peer else ""
        cap = self.limits.per_address
        if cap and self.by_address[address] >= cap:
            self.refused += 1
            limit_log.warning(("cap", self.name, address),
                              "refusing a %s connection from %s: it has %d open "
                              "(the limit per address)", self.name, address, cap)
            conn.listener = None  # never counted
            conn.transport.abort()
            return
        self.conns.add(conn)
        self.by_address[address] += 1
        if sock is not None and self.limits.keepalive_s:
            _keepalive(sock, self.limits.keepalive_s)
        if self._sweeper is None:
            self._sweeper = asyncio.get_event_loop().call_later(SWEEP_PERIOD_S, self.sweep)

    def forget(self, conn: Connection) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            address = conn.peer[0] if conn.peer else ""
            self.by_address[address] -= 1
            if self.by_address[address] <= 0:
                del self.by_address[address]
            self._closed_since_trim += 1

    def sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        limits = self.limits
        keep = limits.keep or _registered
        for conn in list(self.conns):
            started = conn.frame_started_at
            if started is not None and limits.frame_s and now - started > limits.frame_s:
                reason = f"{limits.what} not whole after {limits.frame_s:g}s"
            elif (limits.idle_s and now - conn.last_frame_at > limits.idle_s
                  and not keep(conn)):
                reason = f"idle for {limits.idle_s:g}s"
            else:
                continue
            self.timed_out += 1
            address = conn.peer[0] if conn.peer else ""
            limit_log.info(("timeout", self.name, address),
                           "closing %s connection from %s: %s", self.name, address, reason)
            conn.transport.abort()
            self.forget(conn)
        if self._closed_since_trim >= TRIM_AFTER_CLOSES and now - self._trimmed_at >= TRIM_PERIOD_S:
            self._closed_since_trim = 0
            self._trimmed_at = now
            _give_back_memory()
        if self.conns:
            self._sweeper = asyncio.get_event_loop().call_later(SWEEP_PERIOD_S, self.sweep)

    @property
    def sockets(self):
        return self.server.sockets

    def close(self) -> None:
        """Stop listening (open connections stay, still held to the limits)."""
        self.server.close()


def _give_back_memory() -> None:
    """Many connections closed: return the heap's free pages to the OS (glibc keeps them
    otherwise, and the daemon's RSS would stay at its peak)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _registered(conn: Connection) -> bool:
    return conn.context is not None


def _keepalive(sock, idle_s: int) -> None:
    """Probe a silent peer after `idle_s`, then every idle_s/3, and give up after 3
    unanswered probes: a half-open connection is gone within about 2 x idle_s."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle_s // 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


async def serve(host: str, port: int, handler: Handler, name: str, on_close=None,
                on_connect=None, limits: ConnectionLimits | None = None):
    """Listen on host:port; each accepted connection is a `Connection` with `handler`,
    held to `limits`. Returns the `Listener` (`close()` stops listening)."""
    loop = asyncio.get_event_loop()
    listener = Listener(name, limits or ConnectionLimits())

    def factory():
        conn = Connection(handler, name, on_close, listener)
        if on_connect is not None:
            on_connect(conn)
        return conn

    listener.server = await loop.create_server(factory, host, port, reuse_address=True,
                                               backlog=1024)
    return listener
