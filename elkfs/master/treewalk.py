"""Walking a subtree a bounded number of nodes at a time (pure: no I/O, no clock).

The master is one event loop: a request that walks a million entries in one go holds
every other client for seconds. Long operations (elkfs/master/longops.py) walk with a
`TreeWalk` instead, taking `next_batch(n)` nodes per step and letting other requests in
between. The tree may change between steps: each directory's entries are taken as a list
when the walk enters it (an entry added later is not visited, one removed meanwhile is
skipped), so a walk never fails on a changing tree and never visits a node twice unless
it was moved behind the walk (setting a goal twice is harmless).
"""

from __future__ import annotations

from ..proto import messages as m
from ..proto.layout import BLOCK_SIZE
from .nodes import DirNode, FileNode, Node


class TreeWalk:
    def __init__(self, nodes: dict[int, Node], top: int):
        self.nodes = nodes
        self._stack = [iter((top,))]  # iterators over lists of child inodes
        self.visited = 0

    @property
    def done(self) -> bool:
        return not self._stack

    def next_batch(self, limit: int) -> list[Node]:
        """Up to `limit` more nodes, depth first; [] once the walk is over."""
        out: list[Node] = []
        stack = self._stack
        nodes = self.nodes
        while stack and len(out) < limit:
            inode = next(stack[-1], None)
            if inode is None:
                stack.pop()
                continue
            node = nodes.get(inode)
            if node is None:
                continue
            out.append(node)
            if isinstance(node, DirNode) and node.children:
                stack.append(iter(list(node.children.values())))
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
