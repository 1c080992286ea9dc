"""Data transfer between a client and chunkservers.

Reads: a range of one chunk is read from one copy in pieces of `READ_PIECE` bytes, all
requested at once on one connection (pipelined), so a large read keeps the link busy. A
copy that fails (down, CRC error, wrong version) is skipped and the next copy is tried.
Reads are of whole 64 KiB blocks, which come with the CRCs the chunkserver keeps for them,
and the client checks every block itself (end to end: a block damaged on the disk, in the
chunkserver or on the way is caught here); a copy failing twice is reported
(`on_bad`) and the next copy read.

Every request carries the chunk token the master gave with the location; a token the
chunkservers refuse (expired, or for an older version) ends the attempt at once
(`TokenRefused`), and the caller asks the master for a fresh location and token.

Writes: a `ChunkWriter` holds one write session with the first chunkserver of the chain
(which forwards to the others). Data goes out in frames of at most `WRITE_PIECE` bytes
with up to `WINDOW` bytes unacknowledged, so the chain streams at full speed. Every byte
written in the session is kept until the session ends well, so a failed chain can be
replayed in full on a new chain.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from ..proto import messages as m
from ..proto import rpc
from ..proto.checksum import first_bad_block
from ..proto.errors import (BAD_TOKEN, CRC_ERROR, NO_CHUNK, TOKEN_EXPIRED, WRONG_VERSION,
                            FsError)
from ..proto.layout import BLOCK_SIZE, CHUNK_SIZE

log = logging.getLogger("elkfs.client")

READ_PIECE = 1 << 20
WRITE_PIECE = 1 << 20
WINDOW = 16 << 20
CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 60.0
STALE_LOCATION = (WRONG_VERSION, NO_CHUNK)  # what a copy says to an out-of-date reader
FAN_OUT_MAX = 64 << 10  # a WriteOnce up to this size goes to every copy at once
# The client checks the CRC of every block it reads (the chunkserver then does not).
# False: the chunkserver checks them as before end-to-end checks existed; only
# bench/throughput.py --auth off sets it, to measure what the checks cost.
END_TO_END_CRC = True


class ConnectionPool:
    """Idle connections to chunkservers, reused for reads."""

    def __init__(self, per_server: int = 4):
        self.per_server = per_server
        self.idle: dict[m.Addr, list[rpc.Connection]] = {}

    async def get(self, addr: m.Addr) -> rpc.Connection:
        conns = self.idle.get(addr)
        while conns:
            conn = conns.pop()
            if rpc.reusable(conn):
                return conn
            conn.close()
        return await rpc.connect(addr[0], addr[1], name="chunkserver", timeout=CONNECT_TIMEOUT)

    def put(self, addr: m.Addr, conn: rpc.Connection) -> None:
        if not conn.is_open:
            return
        conns = self.idle.setdefault(addr, [])
        if len(conns) < self.per_server:
            conns.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


TOKEN_REFUSALS = (TOKEN_EXPIRED, BAD_TOKEN)


async def read_from(pool: ConnectionPool, addr: m.Addr, chunk_id: int, version: int,
                    offset: int, size: int, out: memoryview, token: bytes = b"") -> None:
    """Read `size` bytes at `offset` of a chunk from one chunkserver into `out`, every
    block checked against its CRC (FsError CRC_ERROR if one fails)."""
    check = END_TO_END_CRC
    if check:  # whole blocks: each is checked against its CRC
        start = offset - offset % BLOCK_SIZE
        end = min(CHUNK_SIZE, -(-(offset + size) // BLOCK_SIZE) * BLOCK_SIZE)
    else:
        start, end = offset, offset + size
    aligned = start == offset and end == offset + size
    into = out if aligned else memoryview(bytearray(end - start))
    conn = await pool.get(addr)
    ok = False
    try:
        futures = []
        pos = start
        while pos < end:
            piece = min(READ_PIECE, end - pos)
            msg = m.ReadReq(conn.next_req(), chunk_id, version, pos, piece, token, check)
            futures.append((pos - start, piece, conn.start_call(msg)))
            pos += piece
        refused: FsError | None = None
        for pos, piece, fut in futures:
            reply, data = await rpc.wait_reply(fut, IO_TIMEOUT)
            if refused is not None:
                continue  # only emptying the connection of the answers still due
            if isinstance(reply, m.Error) or reply.status != 0:
                # An answer, not a broken connection: it stays usable once the answers
                # still due are read (a stale version after a write is common).
                detail = reply.detail if isinstance(reply, m.Error) \
                    else f"read from {addr[0]}:{addr[1]}"
                refused = FsError(reply.status, detail)
                continue
            got = len(data) if data is not None else 0
            if got != piece:
                raise FsError(errno.EIO, f"short read from {addr[0]}:{addr[1]}: {got} of {piece}")
            bad = first_bad_block(data, reply.crcs) if check else None
            if bad is not None:
                block = (start + pos) // BLOCK_SIZE + bad
                raise FsError(CRC_ERROR, f"block {block} from {addr[0]}:{addr[1]} fails "
                                         f"its CRC")
            into[pos:pos + piece] = data
        if not aligned:
            out[:] = into[offset - start:offset - start + size]
        ok = True
        if refused is not None:
            raise refused
    finally:
        if ok:
            pool.put(addr, conn)
        else:
            conn.close()


async def read_chunk(pool: ConnectionPool, locations: list[m.Addr], chunk_id: int,
                     version: int, offset: int, size: int, out: memoryview,
                     token: bytes = b"", on_bad=None) -> None:
    """Read from the first copy that works; raise the last error if none does. A copy
    whose block fails its CRC is read once more (it may have raced a write) before
    `on_bad(addr)` is told; a refused token is raised at once (every copy would refuse
    it: the caller gets a fresh one). When every copy says the version (or the chunk)
    is not theirs, the error says so (`STALE_LOCATION`): the caller's idea of the chunk
    is out of date, and asking the master again at once is the cure (the chunk moved on,
    say by a write of this client), not waiting."""
    last: Exception | None = None
    stale = bool(locations)
    for addr in locations:
        for attempt in (1, 2):
            try:
                await read_from(pool, addr, chunk_id, version, offset, size, out, token)
                return
            except FsError as e:
                if e.status in TOKEN_REFUSALS:
                    raise
                last = e
                if e.status == CRC_ERROR and attempt == 1:
                    continue
                if e.status == CRC_ERROR and on_bad is not None:
                    on_bad(addr)
            except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                last = e
            log.info("read of chunk %016X from %s:%d failed: %s", chunk_id, addr[0],
                     addr[1], last)
            stale = stale and isinstance(last, FsError) and last.status in STALE_LOCATION
            break
    if stale:
        raise last
    raise FsError(errno.EIO, f"no copy of chunk {chunk_id:016X} could be read: {last}")


class ChunkWriter:
    """One write session on a chain of chunkservers.

    The session runs on a pooled connection to the head of the chain (a chunkserver
    takes any number of sessions one after another on one connection) and is pipelined:
    `WriteInit`, the data and `WriteEnd` go out without waiting for each other (the
    chunkserver holds data that arrives before its chain is ready); `finish` waits for
    every answer, so it returns only once the whole chain acknowledged everything.
    `write_once` instead sends a whole small session as one message (`WriteOnce`): down
    the chain, or, up to FAN_OUT_MAX bytes, to every copy at once (one hop of waiting
    instead of one per copy; the extra bytes sent are few)."""

    def __init__(self, chain: list[m.Addr], chunk_id: int, version: int,
                 pool: ConnectionPool | None = None, create: bool = False,
                 token: bytes = b""):
        self.chain = chain
        self.chunk_id = chunk_id
        self.version = version
        self.token = token  # the write token every chunkserver of the chain checks
        self.create = create  # a new chunk: each chunkserver makes it first
        self.pool = pool
        self.conn: rpc.Connection | None = None
        self.init_fut: asyncio.Future | None = None
        self.end_fut: asyncio.Future | None = None
        self.inflight: list[tuple[int, asyncio.Future]] = []
        self.inflight_bytes = 0
        self.error: Exception | None = None

    @property
    def opened(self) -> bool:
        return self.conn is not None

    async def open(self) -> None:
        self.conn = await self._connect()
        self.init_fut = self.conn.start_call(m.WriteInit(
            self.conn.next_req(), chunk_id=self.chunk_id, version=self.version,
            chain=list(self.chain[1:]), create=self.create, token=self.token))

    async def _connect(self) -> rpc.Connection:
        return await self._connect_to(self.chain[0])

    async def write_once(self, offset: int, data: bytes, sync: bool) -> None:
        """The whole session in one message (`WriteOnce`), for data that fits one frame:
        returns once every copy has it."""
        if len(self.chain) > 1 and len(data) <= FAN_OUT_MAX:
            await self._fan_out(offset, data, sync)
            return
        ok = False
        try:
            self.conn = await self._connect()
            fut = self.conn.start_call(m.WriteOnce(
                self.conn.next_req(), self.chunk_id, self.version, list(self.chain[1:]),
                offset, self.create, sync, self.token), data)
            reply, _ = await rpc.wait_reply(fut, IO_TIMEOUT)
            if isinstance(reply, m.Error):
                raise FsError(reply.status, reply.detail)
            ok = True
        finally:
            if ok and self.pool is not None:
                self.pool.put(self.chain[0], self.conn)
                self.conn = None
            self.close()

    async def _fan_out(self, offset: int, data: bytes, sync: bool) -> None:
        """`WriteOnce` with no chain to each copy, all sent before any answer is awaited.
        Any copy failing fails the session, as a failing hop of a chain does."""
        calls: list[tuple[m.Addr, rpc.Connection, asyncio.Future]] = []
        error: FsError | None = None
        try:
            for addr in self.chain:
                try:
                    conn = await self._connect_to(addr)
                    calls.append((addr, conn, conn.start_call(m.WriteOnce(
                        conn.next_req(), self.chunk_id, self.version, [], offset,
                        self.create, sync, self.token), data)))
                except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                    error = error or _copy_failed(addr, errno.EIO, str(e) or type(e).__name__)
            for addr, conn, fut in calls:
                try:
                    reply, _ = await rpc.wait_reply(fut, IO_TIMEOUT)
                except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                    conn.close()
                    error = error or _copy_failed(addr, errno.EIO, str(e) or type(e).__name__)
                    continue
                if isinstance(reply, m.Error):
                    error = error or _copy_failed(addr, reply.status, reply.detail)
                if self.pool is not None:
                    self.pool.put(addr, conn)  # answered: no session left on it
                else:
                    conn.close()
        except BaseException:  # cancelled: no connection may keep an unanswered session
            for _, conn, fut in calls:
                if not fut.done():
                    fut.cancel()
                    conn.close()
            raise
        if error is not None:
            raise error

    async def _connect_to(self, addr: m.Addr) -> rpc.Connection:
        if self.pool is not None:
            return await self.pool.get(addr)
        return await rpc.connect(addr[0], addr[1], name="chunkserver", timeout=CONNECT_TIMEOUT)

    async def _settle_init(self) -> None:
        fut, self.init_fut = self.init_fut, None
        if fut is None:
            return
        reply, _ = await rpc.wait_reply(fut, IO_TIMEOUT)
        if isinstance(reply, m.Error):
            raise FsError(reply.status, reply.detail)

    async def write(self, offset: int, data) -> None:
        """Queue `data` at `offset` (within the chunk); waits only when the window is full."""
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            piece = view[pos:pos + WRITE_PIECE]
            while self.inflight_bytes + len(piece) > WINDOW and self.inflight:
                await self._settle_oldest()
            msg = m.WriteData(self.conn.next_req(), offset + pos)
            self.inflight.append((len(piece), self.conn.start_call(msg, piece)))
            self.inflight_bytes += len(piece)
            pos += len(piece)

    async def _settle_oldest(self) -> None:
        await self._settle_init()
        size, fut = self.inflight.pop(0)
        self.inflight_bytes -= size
        reply, _ = await rpc.wait_reply(fut, IO_TIMEOUT)
        if isinstance(reply, m.Error):
            raise FsError(reply.status, reply.detail)
        if reply.status != 0:
            raise FsError(reply.status, "chunkserver write failed")

    async def finish(self, sync: bool) -> None:
        """End the session; returns once every write and the end are acknowledged by the
        whole chain (the chunkserver answers WriteEnd only after the session's writes)."""
        ok = False
        try:
            if self.conn is None:  # nothing was written: an empty session
                await self.open()
            end = self.end_fut = self.conn.start_call(m.WriteEnd(self.conn.next_req(),
                                                                 sync=sync))
            await self._settle_init()
            while self.inflight:
                await self._settle_oldest()
            self.end_fut = None
            reply, _ = await rpc.wait_reply(end, IO_TIMEOUT)
            if isinstance(reply, m.Error):
                raise FsError(reply.status, reply.detail)
            ok = True
        finally:
            if ok and self.pool is not None and self.conn is not None:
                self.pool.put(self.chain[0], self.conn)
                self.conn = None
            self.close()

    def close(self) -> None:
        for fut in (self.init_fut, self.end_fut):
            if fut is not None:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()
        self.init_fut = self.end_fut = None
        for _, fut in self.inflight:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # mark retrieved
        self.inflight.clear()
        self.inflight_bytes = 0
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _copy_failed(addr: m.Addr, status: int, detail: str) -> FsError:
    return FsError(status, f"{addr[0]}:{addr[1]}: {detail or status}")
