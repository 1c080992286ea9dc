"""Unequal shares of a key space, for tables in shards that must not all grow at once.

Why: a Python dict grows by building a table twice as big and moving every entry into
it, in one go; a table of a million entries takes ~100 ms to do so, and the master holds
every client meanwhile (the limit is ~50 ms, docs/security.md). Split over many dicts,
each grows on its own, at a fraction of the cost, but shards that fill evenly would all
cross their next power of two within the same few thousand inserts, for the same total.
So shard i gets ~2^(i/shards) of the key space (shares spread over a factor of two) and
each crosses its next power of two at another moment of every doubling.

Used by the node table (inode -> node, `nodetable.py`) and by the entries of a huge
directory (name -> inode, `direntries.py`).
"""

from __future__ import annotations


def slot_table(shards: int, slots: int) -> bytes:
    """The shard of each of `slots` slots (a power of two; a key's slot is some bits of
    it), shard i getting ~2^(i/shards) of the slots. Interleaved, so that a run of
    consecutive slots (consecutive inodes) touches many shards."""
    assert shards <= 256 and slots & (slots - 1) == 0
    weights = [2 ** (i / shards) for i in range(shards)]
    total = sum(weights)
    table = bytearray()
    for shard, w in enumerate(weights):
        table += bytes([shard]) * max(1, round(slots * w / total))
    table = table[:slots] + bytes([shards - 1]) * max(0, slots - len(table))
    stride = (slots * 2) // 3 | 1  # odd: a permutation of the slots
    return bytes(table[(i * stride) % slots] for i in range(slots))
