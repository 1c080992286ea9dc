"""What the mount keeps for open files: per inode (`InodeState`), per handle (`Handle`),
and each handle's `Reader` (cached chunk locations, sequential read-ahead)."""

from __future__ import annotations

import asyncio

from ..client.client import CHUNK_SIZE, Client, File

RA_BLOCK = 2 << 20  # read-ahead unit


class InodeState:
    """What the mount knows about an open inode."""

    __slots__ = ("inode", "opens", "writer", "size", "gen", "writes", "pending", "granted")

    def __init__(self, inode: int):
        self.inode = inode
        self.opens = 0
        self.writer: File | None = None
        self.size = -1  # local size while writes are not committed; -1: ask the master
        self.gen = 0  # bumped on every local change of the data
        self.writes = 0
        self.pending = 0  # opens in progress (counted in `opens` until they complete)
        self.granted = 0  # the access the master granted the open file (perms.R | W | X)


class Handle:
    __slots__ = ("inode", "flags", "reader", "owners", "uid")

    def __init__(self, inode: int, flags: int, reader: "Reader", uid: int = 0):
        self.inode = inode
        self.uid = uid  # who opened it (writes by others than root clear set-ID bits)
        self.flags = flags
        self.reader = reader
        self.owners: set[int] = set()  # lock owners that locked through this open file


class Reader:
    """Reads of one open handle: cached chunk locations and sequential read-ahead."""

    def __init__(self, client: Client, state: InodeState, ra_blocks: int):
        self.file = File(client, state.inode)
        self.state = state
        self.gen = state.gen
        self.length = -1
        self.next_off = -1
        self.streak = 0
        self.ra_blocks = ra_blocks
        self.blocks: dict[int, asyncio.Task] = {}

    def seed(self, chunk) -> None:
        """What the open learnt of the first chunk (`Acquire` with ACQUIRE_CHUNK): as
        good as a first read's own `ReadChunk`, and dropped with it by a recall."""
        self.file._locations[0] = chunk
        self.length = chunk.file_length

    def invalidate(self) -> None:
        self.file._locations.clear()
        self.length = -1
        self.drop_blocks()

    def drop_blocks(self) -> None:
        self.blocks.clear()

    async def _length(self, index: int, refresh: bool) -> int:
        chunk = await self.file._chunk_for_read(index, refresh)
        self.length = chunk.file_length
        return self.length

    def _block(self, b: int) -> asyncio.Task:
        t = self.blocks.get(b)
        if t is None:
            start = b * RA_BLOCK
            size = max(0, min(RA_BLOCK, self.length - start))
            t = asyncio.ensure_future(self.file.read_range(start, size))
            t.add_done_callback(_retrieve)
            self.blocks[b] = t
        return t

    async def read(self, offset: int, size: int) -> bytes:
        if self.gen != self.state.gen:
            self.gen = self.state.gen
            self.invalidate()
        if self.length < 0 or offset + size > self.length:
            await self._length(offset // CHUNK_SIZE, refresh=True)
        if offset >= self.length or size <= 0:
            return b""
        size = min(size, self.length - offset)
        # The kernel's read-ahead sends several requests at once, not always in order:
        # "sequential" means near where the previous reads ended.
        near = self.next_off - 2 * RA_BLOCK <= offset <= self.next_off + 2 * RA_BLOCK
        if near:
            self.next_off = max(self.next_off, offset + size)
            self.streak += 1
        else:
            self.next_off = offset + size
            self.streak = 0
        if self.ra_blocks == 0 or (self.streak < 2 and size < RA_BLOCK // 2):
            return bytes(await self.file.read_range(offset, size))
        first, last = offset // RA_BLOCK, (offset + size - 1) // RA_BLOCK
        ahead = min(self.ra_blocks, 1 + self.streak // 2)
        end_block = (self.length - 1) // RA_BLOCK
        for b in [b for b in self.blocks if b < first - 1 or b > last + self.ra_blocks + 2]:
            self.blocks.pop(b)  # not cancelled: a concurrent read may still wait for it
        for b in range(first, min(last + ahead, end_block) + 1):
            self._block(b)
        parts = []
        for b in range(first, last + 1):
            data = await self._block(b)
            lo = max(offset, b * RA_BLOCK) - b * RA_BLOCK
            hi = min(offset + size, b * RA_BLOCK + len(data)) - b * RA_BLOCK
            parts.append(memoryview(data)[lo:hi])
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)



def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
