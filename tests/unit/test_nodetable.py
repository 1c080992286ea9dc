"""elkfs/master/nodetable.py: a dict of inode -> node, in shards that grow one at a time."""

from __future__ import annotations

import random
import sys

from elkfs.master.nodetable import SHARDS, NodeTable


def test_answers_as_a_dict_does():
    r = random.Random(7)
    table, model = NodeTable(), {}
    for _ in range(20000):
        inode = r.randrange(1, 5000)
        what = r.random()
        if what < 0.5:
            table[inode] = model[inode] = object()
        elif what < 0.8:
            assert table.pop(inode, None) is model.pop(inode, None)
        else:
            assert (inode in table) == (inode in model)
            assert table.get(inode) is model.get(inode)
    assert len(table) == len(model)
    assert sorted(table) == sorted(model) == sorted(table.keys())
    assert sorted(table.items(), key=lambda kv: kv[0]) == sorted(model.items())
    assert {id(v) for v in table.values()} == {id(v) for v in model.values()}
    some = next(iter(model))
    assert table[some] is model[some]
    del table[some]
    assert some not in table
    pieces = list(table.pieces(100))
    assert all(len(p) <= 100 for p in pieces)
    assert sorted(id(n) for p in pieces for n in p) == sorted(id(v) for v in table.values())
    table.clear()
    assert len(table) == 0 and list(table) == []


def test_shards_grow_at_different_moments():
    """Inodes come in sequence: were the shards filled evenly, all of them would copy
    themselves into a bigger table within the same thousand inserts (as long as one dict
    of the whole). Count the shards that grew within each thousand (64 when even)."""
    table = NodeTable()
    sizes = [sys.getsizeof(s) for s in table._shards]
    most = 0
    for start in range(1, 400_000, 1000):
        for inode in range(start, start + 1000):
            table[inode] = None
        now = [sys.getsizeof(s) for s in table._shards]
        if start > 50_000:  # (small shards grow often, and cheaply)
            most = max(most, sum(a != b for a, b in zip(sizes, now)))
        sizes = now
    assert most <= SHARDS // 8, f"{most} of {SHARDS} shards grew within one thousand inserts"
