"""The simulation's toy application: registers, per-key lists and chunk-version bumps.

Simple on purpose, but it goes through the real journal replication, the real
:class:`~elkfs.consensus.sessions.ReplicatedState` de-duplication and the real
:class:`~elkfs.consensus.fencing.VersionAllocator`.  Each ``append`` adds the unique op id
``session:seq`` so a double application is visible in the state itself.
"""
from __future__ import annotations

import msgspec

from elkfs.consensus.fencing import VersionAllocator

_enc = msgspec.msgpack.Encoder()


def op(*args) -> bytes:
    return _enc.encode(list(args))


class ToyStore:
    def __init__(self) -> None:
        self.regs: dict[str, str] = {}
        self.lists: dict[str, list[str]] = {}
        self.chunks: dict[int, tuple[int, int]] = {}
        self.alloc = VersionAllocator()

    def apply(self, body: bytes, term: int, version: int) -> bytes:
        o = msgspec.msgpack.decode(body)
        if o[0] == "set":
            old = self.regs.get(o[1], "")
            self.regs[o[1]] = o[2]
            return _enc.encode(old)
        if o[0] == "append":
            lst = self.lists.setdefault(o[1], [])
            lst.append(o[2])
            return _enc.encode(len(lst))
        if o[0] == "bump":
            v = self.alloc.bump(term)
            self.chunks[o[1]] = v
            return _enc.encode(list(v))
        return _enc.encode(None)

    def read(self, query: bytes) -> bytes:
        o = msgspec.msgpack.decode(query)
        if o[0] == "get":
            return _enc.encode(self.regs.get(o[1], ""))
        return _enc.encode(self.lists.get(o[1], []))

    def snapshot(self) -> bytes:
        return _enc.encode([self.regs, self.lists, list(self.chunks.items()), self.alloc.counter])

    def restore(self, data: bytes) -> None:
        regs, lists, chunks, counter = msgspec.msgpack.decode(data)
        self.regs, self.lists = regs, lists
        self.chunks = {c: tuple(v) for c, v in chunks}
        self.alloc = VersionAllocator(counter)
