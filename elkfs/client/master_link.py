"""The client's link to the master: one session, requests with retries.

Every change carries the session id and a sequence number; if the connection breaks the
link reconnects (with bounded backoff, for at most `retry_s` seconds), resumes the same
session and resends the same (session, seq), which the master answers from its stored
result instead of applying the change twice. A read-only request is simply resent.

Only after `retry_s` without a master does an operation fail (with EIO), so a master
restart is invisible to applications.

A client that keeps directory listings (the mount) registers with `listing_ttl_ms`; the
master then recalls a listing (`InvalidateListings`) before anyone else's change to that
directory is acknowledged, and `on_invalidate(dirs)` is called. After a reconnect the
master no longer knows what we keep, so `on_invalidate(None)`: drop everything.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import time
from typing import Callable

from ..proto import messages as m
from ..proto import rpc
from ..proto.errors import BAD_SESSION, FsError

log = logging.getLogger("elkfs.client")

DEFAULT_MASTER_PORT = 9421


class MasterLink:
    def __init__(self, host: str, port: int = DEFAULT_MASTER_PORT, info: str = "",
                 retry_s: float = 30.0, request_timeout_s: float = 60.0,
                 listing_ttl_ms: int = 0):
        self.host = host
        self.port = port
        self.info = info
        self.retry_s = retry_s
        self.request_timeout_s = request_timeout_s
        self.session = b""
        self.conn: rpc.Connection | None = None
        self._seq = itertools.count(1)
        self._connecting: asyncio.Task | None = None
        self.reconnects = 0
        self.listing_ttl_ms = listing_ttl_ms
        self._tasks: set[asyncio.Task] = set()  # retries of posted changes
        self._unanswered: set[asyncio.Future] = set()  # posted changes not answered yet
        self._posts: list[tuple[m.Op, int]] = []  # posted changes not sent yet
        self.on_invalidate: Callable[[list[int] | None], None] | None = None

    async def connect(self) -> None:
        await self._ensure_connected(time.monotonic() + self.retry_s)

    async def _ensure_connected(self, deadline: float) -> rpc.Connection:
        if self.conn is not None and self.conn.is_open:
            return self.conn
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect_loop(deadline))
        return await asyncio.shield(self._connecting)

    async def _connect_loop(self, deadline: float) -> rpc.Connection:
        delay = 0.05
        last_error: Exception | None = None
        while True:
            try:
                if self.on_invalidate is not None:
                    self.on_invalidate(None)
                conn = await rpc.connect(self.host, self.port, self._on_message, name="master",
                                         timeout=5.0, on_close=self._on_close)
                reply, _ = await conn.call(m.RegisterSession, session=self.session,
                                           info=self.info, timeout=self.request_timeout_s,
                                           listing_ttl_ms=self.listing_ttl_ms)
                if reply.status == BAD_SESSION and self.session:
                    # The master forgot us (session expired): start a new session.
                    log.warning("session %s expired on the master; opening a new one",
                                self.session.hex())
                    self.session = b""
                    conn.close()
                    continue
                if reply.status != 0:
                    conn.close()
                    raise FsError(reply.status, "session registration refused")
                if self.session and self.conn is not None:
                    self.reconnects += 1
                self.session = reply.session
                self.conn = conn
                return conn
            except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                last_error = e
            if time.monotonic() + delay > deadline:
                raise FsError(errno.EIO, f"master {self.host}:{self.port} unreachable: {last_error}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _on_close(self, conn: rpc.Connection) -> None:
        # Nobody recalls our listings while we are away (a new master knows none of them).
        if self.on_invalidate is not None:
            self.on_invalidate(None)

    def _on_message(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        if not isinstance(msg, m.InvalidateListings):
            raise rpc.FrameError(f"unexpected {type(msg).__name__} from the master")
        if self.on_invalidate is not None:
            self.on_invalidate(msg.dirs)
        conn.send(m.Ok(msg.req))

    def post(self, op: m.Op) -> None:
        """Send a change nobody waits for, in order with everything sent after it. It is
        retried like any change if the connection breaks before the answer. It leaves at
        the end of this event-loop step (`send_posted`): after the caller's own answer
        (the mount's reply to the kernel), but before any request made after it."""
        self._posts.append((op, next(self._seq)))
        if len(self._posts) == 1:
            asyncio.get_running_loop().call_soon(self.send_posted)

    def send_posted(self) -> None:
        """Send the posted changes not sent yet, in order."""
        posts, self._posts = self._posts, []
        for op, seq in posts:
            conn = self.conn
            if conn is not None and conn.is_open:
                try:
                    fut = conn.start_call(m.MetaRequest(conn.next_req(), self.session, seq, op))
                except rpc.ConnectionClosed:
                    pass
                else:
                    self._unanswered.add(fut)
                    fut.add_done_callback(lambda f, op=op, seq=seq: self._posted(f, op, seq))
                    continue
            self._spawn(self._request(op, seq))

    def _posted(self, fut: asyncio.Future, op: m.Op, seq: int) -> None:
        self._unanswered.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, (rpc.ConnectionClosed, OSError)):
            self._spawn(self._request(op, seq))  # same seq: applied at most once
        elif exc is None and isinstance(fut.result()[0], m.Error):
            log.warning("%s refused: %s", type(op).__name__, fut.result()[0].detail)

    async def drain_posted(self, timeout: float) -> None:
        """Wait (at most `timeout`) until every posted change was answered."""
        self.send_posted()
        pending = [*self._unanswered, *self._tasks]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background request failed: %s", task.exception())

    async def request(self, op: m.Op) -> m.Result | None:
        return await self._request(op, 0 if op.READ_ONLY else next(self._seq))

    async def _request(self, op: m.Op, seq: int) -> m.Result | None:
        deadline = time.monotonic() + self.retry_s
        while True:
            conn = await self._ensure_connected(deadline)
            if self._posts:
                self.send_posted()  # changes posted before this one go first
            try:
                reply, _ = await conn.call(m.MetaRequest, session=self.session, seq=seq, op=op,
                                           timeout=self.request_timeout_s)
                return reply.result
            except (rpc.ConnectionClosed, OSError, asyncio.TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise FsError(errno.EIO, f"master unreachable: {e}") from None
                log.info("master connection lost (%s); retrying %s", e, type(op).__name__)
                if conn is self.conn:
                    conn.close()
                    self.conn = None

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
