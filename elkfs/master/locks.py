"""Chunk write locks: one writer per chunk at a time, others wait in arrival order.

A lock is taken by `WriteChunk` and released by `WriteChunkEnd` (or when the writer's
connection closes), so two clients writing the same chunk are serialised at the master,
as in MooseFS. A waiter gives up after `wait_s` with CHUNK_LOCKED; the client retries.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..proto.errors import CHUNK_LOCKED, FsError

Key = tuple[int, int]  # (inode, chunk index)


class ChunkLocks:
    def __init__(self, wait_s: float = 30.0):
        self.wait_s = wait_s
        self.holders: dict[Key, object] = {}
        self.waiters: dict[Key, deque[asyncio.Future]] = {}

    def try_acquire(self, key: Key, owner: object) -> bool:
        """Take the lock if it is free; never waits."""
        if key in self.holders:
            return False
        self.holders[key] = owner
        return True

    async def acquire(self, key: Key, owner: object) -> None:
        if self.try_acquire(key, owner):
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(key, deque()).append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.wait_s)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():  # handed over just as we timed out
                self.release(key)
            else:
                fut.cancel()
            raise FsError(CHUNK_LOCKED, "chunk is being written by another client") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(key)
            else:
                fut.cancel()
            raise
        self.holders[key] = owner

    def release(self, key: Key) -> None:
        self.holders.pop(key, None)
        queue = self.waiters.get(key)
        while queue:
            fut = queue.popleft()
            if not fut.done():
                self.holders[key] = None  # reserved for the woken waiter
                fut.set_result(None)
                break
        if queue is not None and not queue:
            del self.waiters[key]

    def hand_over(self, key: Key, owner: object) -> None:
        """The held lock now belongs to `owner` (kept past its first owner's end)."""
        if key in self.holders:
            self.holders[key] = owner

    def release_owner(self, owner: object) -> None:
        for key in [k for k, o in self.holders.items() if o is owner]:
            self.release(key)

    def held_by(self, key: Key) -> object:
        return self.holders.get(key)
