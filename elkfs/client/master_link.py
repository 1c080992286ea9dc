"""The client's link to the master: one session, requests with retries.

Every change carries the session id and a sequence number; if the connection breaks the
link reconnects (with bounded backoff, for at most `retry_s` seconds), resumes the same
session and resends the same (session, seq), which the master answers from its stored
result instead of applying the change twice. A read-only request is simply resent.

Only after `retry_s` without a master does an operation fail (with EIO), so a master
restart is invisible to applications.

With HA the host is a name with one A record per master (or one address): the link
resolves it (`dns_server`, or the system resolver), tries the leader it last heard of
first and then every address, and follows a follower's redirect (`NOT_LEADER` naming the
leader). A request answered `NOT_LEADER` (the master stopped leading) is resent like one
whose connection broke. While requests wait, the link pings the master every
`PING_PERIOD_S`; a master that does not answer within `PING_TIMEOUT_S` (stopped, or cut
off) is given up, asked last for a while (its kernel still accepts connections), and the
requests go to whoever leads now.

A client that keeps directory listings (the mount) registers with `listing_ttl_ms`; the
master then recalls a listing (`InvalidateListings`) before anyone else's change to that
directory is acknowledged, and `on_invalidate(dirs)` is called. After a reconnect the
master no longer knows what we keep, so `on_invalidate(None)`: drop everything.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import itertools
import logging
import os
import time
from typing import Callable

import msgspec

from .. import access
from ..discovery import DiscoveryError, resolve
from ..proto import messages as m
from ..proto import rpc
from ..proto.errors import BAD_SESSION, NOT_LEADER, FsError
from ..proto.password import password_proof, tool_token

log = logging.getLogger("elkfs.client")

# Requests the master may do in steps when the tree is big (elkfs/master/longops.py).
MAY_TAKE_STEPS = (m.Snapshot, m.SetGoal, m.SetTrashTime, m.DirStats)

DEFAULT_MASTER_PORT = 9421
PING_PERIOD_S = 0.5
PING_TIMEOUT_S = 1.5  # a master's event loop answers a ping at once, even under load
REGISTER_TIMEOUT_S = 2.0  # a master that takes longer is taken for gone (stopped)
SILENT_S = 10.0  # a master that stopped answering is asked last for this long

# Who the requests of the current task are made for: a mount sets it, for each system
# call, to the process that made it (anything with uid, gid, root and groups). Unset:
# the link's own `identity`.
caller: contextvars.ContextVar = contextvars.ContextVar("elkfs_caller", default=None)


def own_identity() -> access.Who:
    return access.Who(os.getuid(), os.getgid(), os.getgroups())


def _identity_fields(who) -> dict:
    """What a request says of who makes it: no groups for root (it needs none)."""
    return {"uid": who.uid, "gid": who.gid, "groups": [] if who.root else sorted(who.groups)}


_op_check = msgspec.msgpack.Decoder(m.AnyOp)


def check_op(op: m.Op) -> None:
    """Refuse an op the master would refuse to decode (a number out of its range), here
    and at once: EINVAL, never sent, never retried."""
    try:
        _op_check.decode(m.encode_any(op))
    except (msgspec.ValidationError, OverflowError, TypeError) as e:
        raise FsError(errno.EINVAL, f"{type(op).__name__}: {e}") from None


def parse_hint(text: str) -> tuple[str, int] | None:
    """A redirect's "host:port" (None when the master knows no leader)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host, int(port)


class _Redirect(Exception):
    """The master asked does not lead; `leader` is where it says the leader is."""

    def __init__(self, leader: tuple[str, int] | None):
        super().__init__(f"not the leader (leader: {leader[0]}:{leader[1]})" if leader
                         else "not the leader (no leader known)")
        self.leader = leader


class MasterLink:
    def __init__(self, host: str, port: int = DEFAULT_MASTER_PORT, info: str = "",
                 retry_s: float = 30.0, request_timeout_s: float = 60.0,
                 listing_ttl_ms: int = 0, dns_server: str | None = None,
                 path: str = "/", meta: bool = False, password_digest: bytes | None = None,
                 bind: str | None = None,
                 attach: Callable[[], tuple[bytes, bytes]] | None = None):
        self.host = host
        self.bind = bind  # local address to connect from (the exports see it)
        # What the session mounts (mfsexports.cfg): `path` becomes its root (`root`, the
        # inode the master resolved it to), or with `meta` the meta file system; an
        # export with a password gets the answer to the master's challenge.
        self.path = path
        self.meta = meta
        self.password_digest = password_digest
        # A client tool riding on a mount's session: `attach()` gives (the mount's
        # session, its tool token), read again at every registration (the mount's token
        # changes when it registers again, e.g. after a failover). `tool_token`: this
        # session's own, when it registered with a password (memory only).
        self.attach = attach
        self.tool_token = b""
        self.root = 1
        self.port = port
        self.dns_server = dns_server
        self.leader: tuple[str, int] | None = None  # where the leader was last seen
        self.address: tuple[str, int] | None = None  # the master connected to
        self.silent: dict[tuple[str, int], float] = {}  # address -> when it went quiet
        self._watchdog: asyncio.Task | None = None
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
        self._posts: list[tuple[m.Op, int, dict]] = []  # posted changes not sent yet
        # Posted changes whose poster wants to hear of a refusal: id(op) -> callback. A
        # refusal is answered at once (nothing to journal), so it arrives before the
        # answer to any request sent after it.
        self._on_refused: dict[int, Callable[[int], None]] = {}
        self.identity = own_identity()  # who requests are made for (see `caller`)
        self.on_invalidate: Callable[[list[int] | None], None] | None = None
        # Files changed elsewhere while open here (None: anything, after a reconnect); it
        # may return a future: the master is answered once that is done.
        self.on_invalidate_inodes: Callable[[list[int] | None], object] | None = None
        self.on_progress: Callable[[int], None] | None = None  # entries done by a long op
        self.progress_at = 0.0  # when the master last told how far a long op got
        # Lock waits (`SetLock.wait` id -> event): set by the master's `LockWake`, and all
        # of them at every (re)connection, since a new master knows no waiter.
        self.lock_waits: dict[int, asyncio.Event] = {}
        self._wait_ids = itertools.count(1)

    async def connect(self) -> None:
        await self._ensure_connected(time.monotonic() + self.retry_s)

    async def _ensure_connected(self, deadline: float) -> rpc.Connection:
        if self.conn is not None and self.conn.is_open:
            return self.conn
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect_loop(deadline))
        return await asyncio.shield(self._connecting)

    async def _candidates(self) -> list[tuple[str, int]]:
        """Where to look for the leader: the one last seen first, then every address;
        not a master that went silent lately (its kernel still takes connections that
        nobody answers), unless no other is there."""
        found = [self.leader] if self.leader else []
        try:
            addrs = await resolve(self.host, self.dns_server)
        except DiscoveryError as e:
            if not found:
                raise
            log.warning("%s (trying the last leader %s:%d)", e, *self.leader)
            addrs = []
        now = time.monotonic()
        for addr, since in list(self.silent.items()):
            if now - since > SILENT_S:
                del self.silent[addr]
        ordered = found + [(a, self.port) for a in addrs if (a, self.port) not in found]
        heard = [a for a in ordered if a not in self.silent]
        return heard or ordered  # a silent master only when nobody else is there

    async def _connect_loop(self, deadline: float) -> rpc.Connection:
        delay = 0.05
        last_error: Exception | None = None
        while True:
            if self.on_invalidate is not None:
                self.on_invalidate(None)
            if self.on_invalidate_inodes is not None:
                self.on_invalidate_inodes(None)
            self.wake_lock_waits()
            try:
                candidates = await self._candidates()
            except DiscoveryError as e:
                candidates, last_error = [], e
            while candidates:
                addr = candidates.pop(0)
                try:
                    conn = await self._register(addr)
                except _Redirect as r:
                    if r.leader and r.leader != addr and r.leader not in self.silent:
                        self.leader = r.leader
                        candidates = [r.leader] + [c for c in candidates if c != r.leader]
                    last_error = r
                    continue
                except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                    last_error = e
                    if isinstance(e, asyncio.TimeoutError):
                        self.silent[addr] = time.monotonic()
                    continue
                except FsError as e:
                    if e.status != errno.EAGAIN:
                        raise
                    last_error = e  # attached: the mount has not registered here yet
                    break
                self.conn, self.address, self.leader = conn, addr, addr
                self.silent.pop(addr, None)
                return conn
            if time.monotonic() + delay > deadline:
                if isinstance(last_error, FsError):
                    raise last_error
                raise FsError(errno.EIO, f"no master of {self.host} is leading "
                                         f"({last_error})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)  # a new leader serves any moment: look often

    async def _register(self, addr: tuple[str, int]) -> rpc.Connection:
        """Connect to `addr` and open (or resume) the session there; `_Redirect` when it
        does not lead."""
        conn = await rpc.connect(*addr, self._on_message, name="master", timeout=5.0,
                                 on_close=self._on_close, local_host=self.bind)
        try:
            while True:
                proof, nonce, parent = b"", b"", b""
                if self.attach is not None or self.password_digest is not None:
                    challenge, _ = await conn.call(m.SessionChallenge,
                                                   timeout=REGISTER_TIMEOUT_S)
                    nonce = challenge.nonce
                if self.attach is not None:
                    parent, token = self.attach()
                    proof = password_proof(token, nonce)
                elif self.password_digest is not None:
                    proof = password_proof(self.password_digest, nonce)
                reply, _ = await conn.call(m.RegisterSession, session=self.session,
                                           info=self.info, timeout=REGISTER_TIMEOUT_S,
                                           listing_ttl_ms=self.listing_ttl_ms,
                                           path=self.path, meta=self.meta, proof=proof,
                                           attach=parent)
                if reply.status == NOT_LEADER:
                    raise _Redirect(parse_hint(reply.leader))
                if reply.status == BAD_SESSION and self.session:
                    # The master forgot us (session expired): start a new session.
                    log.warning("session %s expired on the master; opening a new one",
                                self.session.hex())
                    self.session = b""
                    continue
                if reply.status != 0:
                    raise FsError(reply.status, reply.detail or "session registration refused")
                break
        except BaseException:
            conn.close()
            raise
        if self.session and self.conn is not None:
            self.reconnects += 1
        if self.address is not None and addr != self.address:
            log.info("the leader is now %s:%d", *addr)
        self.session = reply.session
        self.root = reply.root
        if self.password_digest is not None and self.attach is None:
            self.tool_token = tool_token(self.password_digest, nonce)
        return conn

    def _on_close(self, conn: rpc.Connection) -> None:
        # Nobody recalls our listings while we are away (a new master knows none of them).
        if self.on_invalidate is not None:
            self.on_invalidate(None)
        if self.on_invalidate_inodes is not None:
            self.on_invalidate_inodes(None)
        self.wake_lock_waits()  # they ask again, of whoever leads next

    def _on_message(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        if isinstance(msg, m.InvalidateListings):
            if self.on_invalidate is not None:
                self.on_invalidate(msg.dirs)
            conn.send(m.Ok(msg.req))
        elif isinstance(msg, m.InvalidateInodes):
            done = None
            if self.on_invalidate_inodes is not None:
                done = self.on_invalidate_inodes(msg.inodes)
            if done is None:
                conn.send(m.Ok(msg.req))
            else:  # answered once the caches are dropped (the kernel's, for a mount)
                done.add_done_callback(lambda _f: conn.send_if_open(m.Ok(msg.req)))
        elif isinstance(msg, m.LockWake):
            for wait in msg.waits:
                event = self.lock_waits.get(wait)
                if event is not None:
                    event.set()
        elif isinstance(msg, m.Progress):
            self.progress_at = time.monotonic()
            if self.on_progress is not None:
                self.on_progress(msg.done)
        else:
            raise rpc.FrameError(f"unexpected {type(msg).__name__} from the master")

    def wake_lock_waits(self) -> None:
        for event in self.lock_waits.values():
            event.set()

    def new_lock_wait(self) -> tuple[int, asyncio.Event]:
        """A wait id for a blocking `SetLock`, registered before the request leaves (a
        `LockWake` may overtake the "queued" answer)."""
        wait = next(self._wait_ids)
        event = self.lock_waits[wait] = asyncio.Event()
        return wait, event

    def post(self, op: m.Op, on_refused: Callable[[int], None] | None = None) -> None:
        """Send a change nobody waits for, in order with everything sent after it. It is
        retried like any change if the connection breaks before the answer. It leaves at
        the end of this event-loop step (`send_posted`): after the caller's own answer
        (the mount's reply to the kernel), but before any request made after it."""
        check_op(op)
        self._posts.append((op, next(self._seq), self.who()))
        if on_refused is not None:
            self._on_refused[id(op)] = on_refused
        if len(self._posts) == 1:
            asyncio.get_running_loop().call_soon(self.send_posted)

    def send_posted(self) -> None:
        """Send the posted changes not sent yet, in order."""
        posts, self._posts = self._posts, []
        if posts:
            self._watch()
        for op, seq, who in posts:
            conn = self.conn
            if conn is not None and conn.is_open:
                try:
                    fut = conn.start_call(m.MetaRequest(conn.next_req(), self.session, seq, op,
                                                        **who))
                except rpc.ConnectionClosed:
                    pass
                else:
                    self._unanswered.add(fut)
                    fut.add_done_callback(
                        lambda f, op=op, seq=seq, who=who: self._posted(f, op, seq, who))
                    continue
            self._spawn(self._request(op, seq, who))

    def who(self) -> dict:
        """The identity fields of a request made now (the task's caller, or ours)."""
        return _identity_fields(caller.get() or self.identity)

    def _posted(self, fut: asyncio.Future, op: m.Op, seq: int, who: dict) -> None:
        self._unanswered.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        reply = fut.result()[0] if exc is None else None
        if isinstance(exc, (rpc.ConnectionClosed, OSError)) or \
                (isinstance(reply, m.Error) and reply.status == NOT_LEADER):
            self._spawn(self._request(op, seq, who))  # same seq: applied at most once
            return
        if isinstance(reply, m.Error):
            on_refused = self._on_refused.pop(id(op), None)
            if on_refused is not None:
                on_refused(reply.status)
            else:
                log.warning("%s refused: %s", type(op).__name__, reply.detail)
        self._on_refused.pop(id(op), None)

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
        check_op(op)
        return await self._request(op, 0 if op.READ_ONLY else next(self._seq), self.who())

    async def _request(self, op: m.Op, seq: int, who: dict) -> m.Result | None:
        deadline = time.monotonic() + self.retry_s
        while True:
            conn = await self._ensure_connected(deadline)
            if self._posts:
                self.send_posted()  # changes posted before this one go first
            self._watch()
            try:
                if type(op) in MAY_TAKE_STEPS:
                    return await self._long_call(conn, op, seq, who)
                reply, _ = await conn.call(m.MetaRequest, session=self.session, seq=seq, op=op,
                                           timeout=self.request_timeout_s, **who)
                return reply.result
            except (rpc.ConnectionClosed, OSError, asyncio.TimeoutError, FsError) as e:
                if isinstance(e, FsError):
                    if e.status != NOT_LEADER:
                        raise
                    self.leader = parse_hint(e.detail)
                if type(op) in MAY_TAKE_STEPS:  # the retry window counts from its progress
                    deadline = max(deadline, self.progress_at + self.retry_s)
                if time.monotonic() > deadline:
                    raise FsError(errno.EIO, f"master unreachable: {e}") from None
                log.info("master connection lost (%s); retrying %s", e, type(op).__name__)
                if conn is self.conn:
                    conn.close()
                    self.conn = None

    async def _long_call(self, conn: rpc.Connection, op: m.Op, seq: int,
                         who: dict) -> m.Result | None:
        """A request the master may do in steps (a big tree): it may take longer than
        `request_timeout_s`, as long as `Progress` keeps coming at least that often."""
        msg = m.MetaRequest(conn.next_req(), self.session, seq, op, **who)
        fut = conn.start_call(msg)
        self.progress_at = time.monotonic()
        try:
            while not fut.done():
                await asyncio.wait((fut,), timeout=self.request_timeout_s)
                if not fut.done() and \
                        time.monotonic() - self.progress_at > self.request_timeout_s:
                    raise asyncio.TimeoutError()
        finally:
            conn.forget_call(msg.req)
        reply, _ = fut.result()
        if isinstance(reply, m.Error):
            raise FsError(reply.status, reply.detail)
        return reply.result

    def _watch(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.ensure_future(self._watch_master())

    async def _watch_master(self) -> None:
        """While anything waits for the master, make sure it still answers: a master
        that is stopped or cut off keeps the connection open and answers nothing."""
        while True:
            await asyncio.sleep(PING_PERIOD_S)
            conn = self.conn
            if conn is None or not conn.is_open:
                return
            if not conn.waiting and not self._unanswered:
                return
            try:
                await conn.call(m.Ping, timeout=PING_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.warning("master %s:%d does not answer; looking for the leader",
                            *(self.address or (self.host, self.port)))
                if self.address is not None:
                    self.silent[self.address] = time.monotonic()
                if conn is self.conn:
                    self.conn = None
                conn.close()
                return
            except (rpc.ConnectionClosed, OSError, FsError):
                return

    async def close(self, end_session: bool = True) -> None:
        """Close the link; with `end_session` the master closes the session now (best
        effort: a master that does not answer in a second keeps it for its sustain
        time)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        conn = self.conn
        if end_session and conn is not None and conn.is_open and self.session:
            self.send_posted()
            try:
                await conn.call(m.MetaRequest, session=self.session, seq=next(self._seq),
                                op=m.EndSession(), timeout=1.0,
                                **_identity_fields(self.identity))
            except (FsError, rpc.ConnectionClosed, OSError, asyncio.TimeoutError):
                pass
        if self.conn is not None:
            self.conn.close()
            self.conn = None
