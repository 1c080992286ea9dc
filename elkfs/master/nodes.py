"""In-memory metadata nodes, kept compact.

One slotted object per inode (no per-object `__dict__`): a regular file costs its slots plus
a list of chunk ids; a directory adds a dict of its entries. Extended attributes are `None`
until the first one is set. Times are integers in nanoseconds.
"""

from __future__ import annotations

import stat

from .direntries import DirEntries

S_IFMT = stat.S_IFMT(0o177777)
TYPE_NAMES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket", stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev",
}


class Node:
    __slots__ = ("inode", "mode", "uid", "gid", "atime", "mtime", "ctime", "nlink", "goal",
                 "trashtime", "xattrs")

    def __init__(self, inode: int, mode: int, uid: int, gid: int, ts: int, goal: int,
                 trashtime: int = 86400):
        self.inode = inode
        self.mode = mode  # includes the S_IF* type bits
        self.uid = uid
        self.gid = gid
        self.atime = self.mtime = self.ctime = ts
        self.nlink = 1
        self.goal = goal
        self.trashtime = trashtime  # seconds in the trash once unlinked (files)
        self.xattrs: dict[bytes, bytes] | None = None

    @property
    def is_dir(self) -> bool:
        return False

    def size(self) -> int:
        return 0

    def rdev(self) -> int:
        return 0


class FileNode(Node):
    __slots__ = ("length", "chunks")

    def __init__(self, *args):
        super().__init__(*args)
        self.length = 0
        self.chunks: list[int] = []  # chunk id per 64 MiB index, 0 for a hole

    def size(self) -> int:
        return self.length


class DirNode(Node):
    __slots__ = ("children", "parent")

    def __init__(self, *args, parent: int = 0):
        super().__init__(*args)
        self.nlink = 2
        self.children = DirEntries()  # name -> inode, names also kept in order
        self.parent = parent

    @property
    def is_dir(self) -> bool:
        return True

    def size(self) -> int:
        return len(self.children)


class SymlinkNode(Node):
    __slots__ = ("target",)

    def __init__(self, *args, target: bytes = b""):
        super().__init__(*args)
        self.target = target

    def size(self) -> int:
        return len(self.target)


class SpecialNode(Node):
    """FIFOs, sockets and device nodes: attributes only."""

    __slots__ = ("dev",)

    def __init__(self, *args, dev: int = 0):
        super().__init__(*args)
        self.dev = dev

    def rdev(self) -> int:
        return self.dev


class Chunk:
    __slots__ = ("chunk_id", "version", "refs")

    def __init__(self, chunk_id: int, version: int):
        self.chunk_id = chunk_id
        self.version = version
        self.refs = 1  # files (or snapshot copies) pointing at this chunk
