"""Which chunkservers said a write session on a copy ended well (`CsWriteDone`).

A write session's data goes from the client down a chain of chunkservers, and the client
hears only from the head. So that the master never takes the client's (or the head's)
word for which copies hold the data, every chunkserver of the chain tells the masters
itself, before it answers upstream, that its session on (chunk, version) stored all it
was sent. At the writer's `WriteChunkEnd` the copies that said so count; a copy that did
not is counted bad (the replication loop replaces it), and a session no copy confirmed
fails (EIO to the writer).

A version is written by one session (each `WriteChunk` raises it), so (chunk id,
version) names the session. Pure; reports are kept `keep_s` seconds (every master hears
them, and only the leader consumes them).
"""

from __future__ import annotations

from collections import deque


class WriteReports:
    def __init__(self, keep_s: float = 120.0):
        self.keep_s = keep_s
        self.done: dict[tuple[int, int], set[bytes]] = {}
        self._order: deque[tuple[float, tuple[int, int]]] = deque()

    def add(self, now: float, chunk_id: int, version: int, cs_id: bytes) -> None:
        key = (chunk_id, version)
        reporters = self.done.get(key)
        if reporters is None:
            reporters = self.done[key] = set()
            self._order.append((now, key))
        reporters.add(cs_id)
        self.prune(now)

    def reporters(self, chunk_id: int, version: int) -> set[bytes]:
        return self.done.get((chunk_id, version), set())

    def forget(self, chunk_id: int, version: int) -> None:
        self.done.pop((chunk_id, version), None)

    def prune(self, now: float) -> None:
        order = self._order
        while order and order[0][0] < now - self.keep_s:
            _, key = order.popleft()
            self.done.pop(key, None)
