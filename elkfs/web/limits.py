"""The web port held to the same limits as the binary ports (`rpc.ConnectionLimits`).

aiohttp alone lets any client hold a connection for an hour before its first request
(its keep-alive timer), trickle a request's headers or body a byte at a time while it
lasts, and open as many connections as it likes. Here each accepted connection is a
`LimitedConnection` in front of aiohttp's own protocol, kept by a `WebListener`: the
`rpc.Listener` that already watches the binary ports, with the same sweep:

- over `per_address` open connections from one source address, the next one is closed
  at once, before aiohttp makes a request handler for it;
- a request must be whole (its headers, and its body, which `WebListener.middleware`
  reads before the handler runs) within `frame_s` of its first byte: a sender of one
  byte a second is dropped;
- a connection with no request under way is closed after `idle_s`.

The listener counts what it refused and timed out (`/metrics`), logs it at most once
per address and kind a while, and hands memory back after many connections closed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from aiohttp import web

from ..proto import rpc

# What one request may carry (the only body is Step Down's small JSON); aiohttp answers
# a request over them 400 / 413 / 431 and nothing reaches a handler.
MAX_BODY = 16 << 10
MAX_LINE = 8190  # the request line, with its URL
MAX_FIELD = 8190  # one header
MAX_HEADERS = 32  # a browser sends ~15


class LimitedConnection(asyncio.Protocol):
    """Stands in for aiohttp's protocol of one connection: admits it (or closes it)
    and notes when a request begins and ends, for the listener's sweep; everything
    else goes to aiohttp's handler, made only once the connection is admitted."""

    def __init__(self, listener: "WebListener", make_handler: Callable[[], asyncio.Protocol]):
        self.listener: WebListener | None = listener
        self.make_handler = make_handler
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.handling = False  # a handler runs for this connection's request
        self.frame_started_at: float | None = None  # first byte of a request under way
        self.last_frame_at = time.monotonic()  # the end of the last request (or the connect)

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = tuple(peer[:2]) if peer else None
        listener = self.listener
        listener.admit(self, transport.get_extra_info("socket"))
        if self.listener is None:  # refused: already closed
            return
        listener.by_transport[transport] = self
        self.inner = self.make_handler()
        self.inner.connection_made(transport)

    def connection_lost(self, exc):
        if self.listener is not None:
            self.listener.forget(self)
            self.listener.by_transport.pop(self.transport, None)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data):
        if self.frame_started_at is None and not self.handling:
            self.frame_started_at = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else False

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()

    def request_whole(self) -> None:
        self.frame_started_at = None
        self.handling = True

    def request_done(self) -> None:
        self.handling = False
        self.frame_started_at = None
        self.last_frame_at = time.monotonic()


def connection_limits(cfg) -> rpc.ConnectionLimits:
    """The web port's limits from the master's config (HTTP_*). Idle means: no request
    under way (a browser's keep-alive connection between two requests)."""
    return rpc.ConnectionLimits(per_address=cfg.HTTP_MAX_CONNECTIONS_PER_ADDRESS,
                                idle_s=cfg.HTTP_IDLE_TIMEOUT, frame_s=cfg.HTTP_REQUEST_TIMEOUT,
                                keep=_handling, what="a request")


def _handling(conn: LimitedConnection) -> bool:
    return conn.handling


class WebListener(rpc.Listener):
    """The web port's connections, and which of them a request arrived on."""

    def __init__(self, limits: rpc.ConnectionLimits):
        super().__init__("web", limits)
        self.by_transport: dict[asyncio.BaseTransport, LimitedConnection] = {}

    async def serve(self, runner: web.AppRunner, host: str | None, port: int) -> None:
        """Listen on host:port for `runner`'s application (instead of aiohttp's
        TCPSite), each connection held to the limits."""
        make_handler = runner.server
        self.server = await asyncio.get_running_loop().create_server(
            lambda: LimitedConnection(self, make_handler), host, port,
            reuse_address=True, backlog=128)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """Reads a request's body (at most MAX_BODY) before its handler runs, still
        under the request's deadline; from then until the handler returns the
        connection is not idle, whatever the handler waits for."""
        conn = self.by_transport.get(request.transport)
        try:
            if request.body_exists:
                await request.read()
            if conn is not None:
                conn.request_whole()
            return await handler(request)
        finally:
            if conn is not None:
                conn.request_done()
