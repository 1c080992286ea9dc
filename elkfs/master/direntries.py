"""A directory's entries: a dict of name -> inode that also keeps its names in order.

Why: a listing of a huge directory is served in pages, and a page must start where the
previous one ended even when entries come and go in between. Positions shift under
changes, names do not, so a page resumes *after a name*: the names are kept sorted (by
bytes) and a page is "the next `limit` names greater than the last one seen". An entry
that stays in the directory for the whole listing is returned exactly once; one added or
removed meanwhile may or may not be, which is what POSIX allows for readdir.

How: the dict answers lookups as before (O(1)); beside it the names sit in sorted blocks
of at most `2 * BLOCK` names, with the last name of each block in `maxes` (the layout of
a B-tree's leaves, one level deep), so adding or removing a name costs a bisection of
`maxes` and a short move inside one block: O(log n + BLOCK). The blocks hold the same
bytes objects as the dict's keys, one pointer (8 bytes) more per entry. A directory gets
its blocks only with its first entry.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator

BLOCK = 512  # names per block after a split; a block splits at twice this


class DirEntries(dict):
    """name -> inode. Use `d[name] = inode`, `del d[name]` and `popitem()` to change it
    (the other dict mutators are not overridden and would leave the order behind)."""

    __slots__ = ("_blocks", "_maxes")

    def __init__(self, items=()):
        super().__init__()
        super().update(items)
        names = sorted(self)
        self._blocks: list[list[bytes]] = [names[i:i + BLOCK]
                                           for i in range(0, len(names), BLOCK)]
        self._maxes: list[bytes] = [block[-1] for block in self._blocks]

    def __setitem__(self, name: bytes, inode: int) -> None:
        if name not in self:
            self._insert(name)
        super().__setitem__(name, inode)

    def __delitem__(self, name: bytes) -> None:
        super().__delitem__(name)
        self._remove(name)

    def popitem(self) -> tuple[bytes, int]:
        """Remove and return the entry with the greatest name: the same one on every
        replica, whatever order the entries were added in (a checkpoint reloads them
        sorted)."""
        if not self._maxes:
            raise KeyError("popitem(): no entries")
        name = self._maxes[-1]
        inode = super().pop(name)
        self._remove(name)
        return name, inode

    def clear(self) -> None:
        super().clear()
        self._blocks, self._maxes = [], []

    def _insert(self, name: bytes) -> None:
        maxes = self._maxes
        if not maxes:
            self._blocks.append([name])
            maxes.append(name)
            return
        i = bisect_left(maxes, name)
        if i == len(maxes):  # after every name: the last block grows
            i -= 1
            self._blocks[i].append(name)
            maxes[i] = name
        else:
            insort(self._blocks[i], name)
        block = self._blocks[i]
        if len(block) > 2 * BLOCK:
            self._blocks[i:i + 1] = [block[:BLOCK], block[BLOCK:]]
            maxes[i:i + 1] = [block[BLOCK - 1], block[-1]]

    def _remove(self, name: bytes) -> None:
        maxes = self._maxes
        i = bisect_left(maxes, name)
        block = self._blocks[i]
        del block[bisect_left(block, name)]
        if not block:
            del self._blocks[i], maxes[i]
        elif maxes[i] == name:
            maxes[i] = block[-1]

    def names_after(self, after: bytes) -> Iterator[bytes]:
        """The names greater than `after` (b"": all), in order."""
        maxes = self._maxes
        i = bisect_right(maxes, after) if after else 0
        if i == len(maxes):
            return
        blocks = self._blocks
        yield from blocks[i][bisect_right(blocks[i], after) if after else 0:]
        for j in range(i + 1, len(blocks)):
            yield from blocks[j]

    def names_from(self, skip: int) -> Iterator[bytes]:
        """The names after the first `skip` ones, in order (O(n / BLOCK) to find them)."""
        blocks = self._blocks
        for i, block in enumerate(blocks):
            if skip < len(block):
                yield from block[skip:]
                for j in range(i + 1, len(blocks)):
                    yield from blocks[j]
                return
            skip -= len(block)

    def check(self) -> None:
        """Raise AssertionError if the order does not match the dict (for tests)."""
        flat = [n for block in self._blocks for n in block]
        assert flat == sorted(self), "names out of order or not those of the dict"
        assert self._maxes == [b[-1] for b in self._blocks] and all(self._blocks)
