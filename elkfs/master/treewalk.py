"""Walking a subtree a bounded number of nodes at a time (pure: no I/O, no clock).

The master is one event loop: a request that walks a million entries in one go holds
every other client for seconds. Long operations (elkfs/master/longops.py) walk with a
`TreeWalk` instead, taking `next_batch(n)` nodes per step and letting other requests in
between. The tree may change between steps: a directory's entries are taken by name, a
step's worth at a time after the last name taken (as a snapshot's copy takes them,
`DirEntries.names_after`), never as a list of the whole directory (a million inodes
listed in one go is a stall of its own, the longer for a huge directory's spread
entries). So an entry that stays is visited once; one added or removed meanwhile may or
may not be, one removed is never visited once gone; a walk never fails on a changing
tree and never visits a node twice unless it was moved or renamed to where the walk
has yet to go (setting a goal twice is harmless).
"""

from __future__ import annotations

from itertools import islice

from ..proto import messages as m
from ..proto.layout import BLOCK_SIZE
from .nodes import DirNode, FileNode, Node


NAMES_AT_ONCE = 256  # names (and inodes) taken from a directory at once; those after a
# subdirectory are taken again once it is walked, so this bounds what that costs


class TreeWalk:
    def __init__(self, nodes: dict[int, Node], top: int):
        self.nodes = nodes
        self._top: int | None = top  # not visited yet
        self._cursors: list[list] = []  # [directory, last name taken]: the deepest last
        self.visited = 0

    @property
    def done(self) -> bool:
        return self._top is None and not self._cursors

    def next_batch(self, limit: float) -> list[Node]:
        """Up to `limit` more nodes (math.inf: all), depth first, each directory's
        entries in name order; [] once the walk is over."""
        out: list[Node] = []
        nodes, cursors = self.nodes, self._cursors
        if self._top is not None and limit > 0:
            top, self._top = nodes.get(self._top), None
            if top is not None:
                out.append(top)
                if isinstance(top, DirNode):
                    cursors.append([top, b""])
        while cursors and len(out) < limit:
            cursor = cursors[-1]
            directory, after = cursor
            children = directory.children
            want = min(limit - len(out), NAMES_AT_ONCE)
            names = list(islice(children.names_after(after), int(want)))
            deeper = None
            for name, inode in zip(names, children.inodes_of(names)):
                cursor[1] = name
                node = nodes.get(inode)
                if node is None:
                    continue
                out.append(node)
                if isinstance(node, DirNode) and node.children:
                    deeper = node  # depth first: its entries before the next name's
                    break
            if deeper is not None:
                cursors.append([deeper, b""])
            elif len(names) < want:
                cursors.pop()  # no names left after the last one taken
        self.visited += len(out)
        return out


def bigger_than(nodes: dict[int, Node], top: int, limit: int) -> bool:
    """Whether the subtree at `top` has more than `limit` nodes; costs O(limit) at most
    (a directory's size is known without looking at its entries)."""
    count = 1
    stack = [top]
    while stack:
        node = nodes.get(stack.pop())
        if not isinstance(node, DirNode):
            continue
        count += len(node.children)
        if count > limit:
            return True
        stack.extend(c for c in node.children.values() if isinstance(nodes.get(c), DirNode))
    return False


class DirTotals:
    """The sums of `mfsdirinfo`, added up a batch of nodes at a time."""

    def __init__(self):
        self.inodes = self.dirs = self.files = self.chunks = 0
        self.length = self.size = self.realsize = 0

    def add(self, batch: list[Node]) -> None:
        for node in batch:
            self.inodes += 1
            if isinstance(node, DirNode):
                self.dirs += 1
            elif isinstance(node, FileNode):
                self.files += 1
                self.chunks += sum(1 for c in node.chunks if c)
                self.length += node.length
                file_size = -(-node.length // BLOCK_SIZE) * BLOCK_SIZE
                self.size += file_size
                self.realsize += file_size * node.goal

    def result(self) -> m.DirStatsOut:
        return m.DirStatsOut(self.inodes, self.dirs, self.files, self.chunks, self.length,
                             self.size, self.realsize)
