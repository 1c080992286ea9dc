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

A huge directory: a dict grows by building a table twice as big and moving every entry
into it, in one go (at 699,050 names ~50-130 ms, inside whichever create or snapshot step
adds the name; the limit is ~50 ms, docs/security.md). So a directory's dict takes at
most SPREAD_AT names, as many as a table of 2^17 slots holds (its last growth, at 43,690
names, a few ms); the name after that turns it into the spread form (`_Spread`, the same
object, its class switched): the names it held stay where they are, frozen (changed or
removed, never added to, so never growing), and names added from then on go to SHARDS
dicts by a CRC of the name (the same on every replica), with unequal shares
(`unevenshards.py`) so that each grows at its own moment (a few ms at a million names,
15-40 ms at ten million). Nothing is moved when it spreads; once below SHRINK_AT names it is
gathered back into one dict (a quarter of SPREAD_AT: a gather of a few ms, and no back
and forth at the boundary). The shards sit in the object's own dict under the key None
(no name is None; it takes the table's last free place) so that a small directory, the
common case, keeps the size it had and its lookups stay the dict's own C methods.
Iteration goes frozen names first, then shard by shard: nothing replicated depends on
that order (`popitem` and the pages go by name; the one-record snapshot that copies in
dict order takes trees of at most 2,000 entries), which matters because a directory of
between SHRINK_AT and SPREAD_AT names may be spread on one replica and one dict on
another that loaded it from a checkpoint.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from itertools import chain, islice, repeat
from zlib import crc32

from .unevenshards import slot_table

BLOCK = 512  # names per block after a split; a block splits at twice this
SPREAD_AT = 2**17 * 2 // 3 - 1  # 87,380: with its shards' key, a full dict of 2^17 slots
SHRINK_AT = SPREAD_AT // 4  # a spread directory below this is gathered into one dict
SHARDS = 64  # 10M names: ~220k in the biggest shard, a growth of ~15-40 ms
SLOTS = 4096  # crc32(name) % SLOTS -> shard

_SHARD_OF = slot_table(SHARDS, SLOTS)
_MASK = SLOTS - 1
_SHARDS_KEY = None  # a spread directory's shards, in its own dict (no name is None)
_own_get, _own_item = dict.get, dict.__getitem__  # the object's own dict, past overrides


class DirEntries(dict):
    """name -> inode. Use `d[name] = inode`, `del d[name]` and `popitem()` to change it
    (the other dict mutators are not overridden and would leave the order behind). Past
    SPREAD_AT names the object becomes a `_Spread`, below SHRINK_AT one again."""

    __slots__ = ("_blocks", "_maxes")

    def __init__(self, items=()):
        """`items`: (name, inode) pairs, each name once (a checkpoint's directory)."""
        super().__init__()
        items = iter(items)
        super().update(islice(items, SPREAD_AT))
        more = next(items, None)
        if more is not None:  # a huge directory: the rest in shards, as if added
            self._spread()
            shards = self._shards()
            for name, inode in chain((more,), items):
                shards[_SHARD_OF[crc32(name) & _MASK]][name] = inode
        names = sorted(self)
        self._blocks: list[list[bytes]] = [names[i:i + BLOCK]
                                           for i in range(0, len(names), BLOCK)]
        self._maxes: list[bytes] = [block[-1] for block in self._blocks]

    def __setitem__(self, name: bytes, inode: int) -> None:
        if name not in self:
            if len(self) >= SPREAD_AT:  # a new name would make the dict grow: spread
                self._spread()
                self[name] = inode  # (into a shard)
                return
            self._insert(name)
        super().__setitem__(name, inode)

    def _spread(self) -> None:
        """Become the spread form: the names held so far stay, frozen; new ones go to
        shards. O(SHARDS): nothing is moved."""
        dict.__setitem__(self, _SHARDS_KEY, [{} for _ in range(SHARDS)])
        self.__class__ = _Spread

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

    def inodes_of(self, names: list[bytes]) -> list[int]:
        """The inodes of `names` (each one present), in one call: a walk takes a
        directory's names in order and then their inodes, a list at a time."""
        return list(map(_own_item, repeat(self), names))

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
        assert len(self) == len(flat) == len(set(self))
        if type(self) is DirEntries:
            assert _SHARDS_KEY not in dict.keys(self) and len(self) <= SPREAD_AT


class _Spread(DirEntries):
    """A huge directory's entries: the frozen names in the object's own dict, the names
    added since in shards (the module's docstring). Answers what DirEntries answers,
    with a Python method call per lookup (~0.3 us more): for huge directories only."""

    __slots__ = ()

    def _shard(self, name: bytes) -> dict[bytes, int]:
        return dict.__getitem__(self, _SHARDS_KEY)[_SHARD_OF[crc32(name) & _MASK]]

    def _shards(self) -> list[dict[bytes, int]]:
        return dict.__getitem__(self, _SHARDS_KEY)

    def get(self, name: bytes, default=None):
        inode = _own_get(self, name)
        if inode is None:  # (the shard inline: these are the hot path)
            return _own_item(self, _SHARDS_KEY)[_SHARD_OF[crc32(name) & _MASK]].get(
                name, default)
        return inode

    def __getitem__(self, name: bytes) -> int:
        inode = _own_get(self, name)
        if inode is None:
            return _own_item(self, _SHARDS_KEY)[_SHARD_OF[crc32(name) & _MASK]][name]
        return inode

    def inodes_of(self, names: list[bytes]) -> list[int]:
        shards = _own_item(self, _SHARDS_KEY)
        return [shards[_SHARD_OF[crc32(name) & _MASK]][name] if inode is None else inode
                for name, inode in zip(names, map(_own_get, repeat(self), names))]

    def __contains__(self, name: bytes) -> bool:
        return dict.__contains__(self, name) or name in self._shard(name)

    def __setitem__(self, name: bytes, inode: int) -> None:
        if dict.__contains__(self, name):
            dict.__setitem__(self, name, inode)  # a frozen name: changed in place
            return
        shard = self._shard(name)
        if name not in shard:
            self._insert(name)
        shard[name] = inode

    def __delitem__(self, name: bytes) -> None:
        self._pop(name)

    def popitem(self) -> tuple[bytes, int]:
        """Remove and return the entry with the greatest name (as DirEntries does)."""
        if not self._maxes:
            raise KeyError("popitem(): no entries")
        name = self._maxes[-1]
        return name, self._pop(name)

    def _pop(self, name: bytes) -> int:
        if dict.__contains__(self, name):
            inode = dict.pop(self, name)
            if dict.__len__(self) == 1:  # the last frozen name: free the old table
                shards = self._shards()
                dict.clear(self)
                dict.__setitem__(self, _SHARDS_KEY, shards)
        else:
            inode = self._shard(name).pop(name)
        self._remove(name)
        if len(self) < SHRINK_AT:
            self._gather()
        return inode

    def _gather(self) -> None:
        """Back to one dict (O(SHRINK_AT)), so that a directory that was huge once does
        not keep its shards, and its lookups, for ever."""
        shards = dict.pop(self, _SHARDS_KEY)
        for shard in shards:
            dict.update(self, shard)
        self.__class__ = DirEntries

    def clear(self) -> None:
        dict.clear(self)
        self._blocks, self._maxes = [], []
        self.__class__ = DirEntries

    def __len__(self) -> int:
        return dict.__len__(self) - 1 + sum(map(len, self._shards()))

    # Iteration stays in C (a walk lists a million inodes in one go, ~10 ms): the shards'
    # key is the last of the dict's keys (nothing is added to the dict after it), so the
    # frozen entries are all but the dict's last.

    def _frozen(self, view) -> Iterator:
        return islice(view, dict.__len__(self) - 1)

    def __iter__(self) -> Iterator[bytes]:
        return chain(self._frozen(dict.keys(self)), *self._shards())

    def keys(self) -> Iterator[bytes]:
        return iter(self)

    def items(self) -> Iterator[tuple[bytes, int]]:
        return chain(self._frozen(dict.items(self)),
                     *(shard.items() for shard in self._shards()))

    def values(self) -> Iterator[int]:
        return chain(self._frozen(dict.values(self)),
                     *(shard.values() for shard in self._shards()))

    def __eq__(self, other) -> bool:
        return dict(self.items()) == other

    def __ne__(self, other) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DirEntries({dict(self.items())!r})"

    def check(self) -> None:
        super().check()
        assert list(dict.keys(self))[-1] is _SHARDS_KEY, "the shards' key is not the last"
        frozen = set(self._frozen(dict.keys(self)))
        for i, shard in enumerate(self._shards()):
            assert all(_SHARD_OF[crc32(n) & _MASK] == i for n in shard), "name in wrong shard"
            assert not frozen & shard.keys(), "a name both frozen and in a shard"
        assert len(self) >= SHRINK_AT

    def _unkept(self, *args, **kwargs):
        raise TypeError("a directory's entries change by [], del and popitem() only")

    setdefault = update = pop = copy = __or__ = __ror__ = __ior__ = __reversed__ = _unkept
