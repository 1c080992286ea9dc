"""inode -> Node, kept in many small dicts instead of one big one.

Why: a dict grows by building a new table and moving every entry into it, in one go. With
1.4 million nodes that takes ~100 ms, with 2.8 million ~200 ms, and it happens inside
whichever change adds the entry that fills the table: a create or one step of a snapshot
that holds every other client for that long (the limit is ~50 ms, docs/security.md). Split
by the low bits of the inode over SHARDS dicts, each grows on its own, at a
SHARDS-th of the cost. But shards that fill evenly would all grow within the same few
thousand inserts, for the same total: so the shards get unequal shares of the inodes,
spread over a factor of two (shard i: ~2^(i/SHARDS), `unevenshards.py`), and each crosses
its next power of two at another moment of every doubling of the table.

The table answers what the namespace asks of a dict (get, [], in, del, len, iteration);
iteration goes shard by shard, which nothing depends on (the checkpoint's order of nodes
does not matter to its reader).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

from .nodes import Node
from .unevenshards import slot_table

SHARDS = 64  # 10M nodes: ~160k per shard, a growth of a few ms
SLOTS = 4096  # inode % SLOTS -> shard


_SHARD_OF = slot_table(SHARDS, SLOTS)
_MASK = SLOTS - 1


class NodeTable:
    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[dict[int, Node]] = [{} for _ in range(SHARDS)]

    def __getitem__(self, inode: int) -> Node:
        return self._shards[_SHARD_OF[inode & _MASK]][inode]

    def get(self, inode: int, default=None):
        return self._shards[_SHARD_OF[inode & _MASK]].get(inode, default)

    def __contains__(self, inode: int) -> bool:
        return inode in self._shards[_SHARD_OF[inode & _MASK]]

    def __setitem__(self, inode: int, node: Node) -> None:
        self._shards[_SHARD_OF[inode & _MASK]][inode] = node

    def fill(self, nodes: list[Node]) -> None:
        """Add many nodes (loading a checkpoint): one loop, no method call per node."""
        shards, shard_of = self._shards, _SHARD_OF
        for node in nodes:
            inode = node.inode
            shards[shard_of[inode & _MASK]][inode] = node

    def __delitem__(self, inode: int) -> None:
        del self._shards[_SHARD_OF[inode & _MASK]][inode]

    def pop(self, inode: int, *default):
        return self._shards[_SHARD_OF[inode & _MASK]].pop(inode, *default)

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(self._shards)

    def keys(self) -> Iterator[int]:
        return iter(self)

    def values(self) -> Iterator[Node]:
        return chain.from_iterable(shard.values() for shard in self._shards)

    def items(self) -> Iterator[tuple[int, Node]]:
        return chain.from_iterable(shard.items() for shard in self._shards)

    def pieces(self, size: int) -> Iterator[list[Node]]:
        """Every node, in lists of at most `size`; each shard is listed when reached, so
        a caller may yield to the event loop between pieces (nodes added or removed
        meanwhile may or may not be seen) without ever listing all of them at once."""
        for shard in self._shards:
            nodes = list(shard.values())
            for start in range(0, len(nodes), size):
                yield nodes[start:start + size]

    def clear(self) -> None:
        for shard in self._shards:
            shard.clear()
