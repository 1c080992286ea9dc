"""In-memory metadata nodes, kept compact.

One slotted object per inode (no per-object `__dict__`): a regular file costs its slots plus
an array of chunk ids; a directory adds its entries (`direntries`). The chunk table is
arrays (`ChunkTable`). Extended attributes are `None`
until the first one is set. Times are integers in nanoseconds.
"""

from __future__ import annotations

import stat
from array import array
from operator import mul

from .direntries import DirEntries

S_IFMT = stat.S_IFMT(0o177777)
TYPE_NAMES = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket", stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev",
}

SHARED_MAX = 1 << 16
_shared: dict[int, int] = {}


def shared(value: int) -> int:
    """One int object for each of the few values that attributes repeat (modes, uids,
    gids, goals, trash times): Python makes a new 32-byte object for each int above 256
    it decodes or computes, so a million files owned by uid 1000 would hold a million
    copies of 1000. The table stops growing at SHARED_MAX values."""
    got = _shared.get(value)
    if got is None:
        if len(_shared) < SHARED_MAX:
            _shared[value] = value
        return value
    return got


class Node:
    __slots__ = ("inode", "mode", "uid", "gid", "atime", "mtime", "ctime", "nlink", "goal",
                 "trashtime", "xattrs")

    def __init__(self, inode: int, mode: int, uid: int, gid: int, ts: int, goal: int,
                 trashtime: int = 86400):
        self.inode = inode
        self.mode = shared(mode)  # includes the S_IF* type bits
        self.uid = shared(uid)
        self.gid = shared(gid)
        self.atime = self.mtime = self.ctime = ts
        self.nlink = 1
        self.goal = goal
        self.trashtime = shared(trashtime)  # seconds in the trash once unlinked (files)
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
        self.chunks = array("Q")  # chunk id per 64 MiB index, 0 for a hole

    def size(self) -> int:
        return self.length


class DirNode(Node):
    __slots__ = ("children", "parent", "name")

    def __init__(self, *args, parent: int = 0, name: bytes = b""):
        super().__init__(*args)
        self.nlink = 2
        self.children = DirEntries()  # name -> inode, names also kept in order
        self.parent = parent
        self.name = name  # its name in `parent` (a directory has one): paths in O(depth)

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
    """One row of the `ChunkTable`, as an object: made on access, it holds no data of its
    own (reads and writes go to the table's arrays)."""

    __slots__ = ("chunk_id", "_page", "_i")

    def __init__(self, chunk_id: int, page: "_ChunkPage", i: int):
        self.chunk_id = chunk_id
        self._page = page
        self._i = i

    @property
    def version(self) -> int:
        return self._page.versions[self._i]

    @version.setter
    def version(self, value: int) -> None:
        self._page.versions[self._i] = value

    @property
    def refs(self) -> int:
        """Files (or snapshot copies) pointing at this chunk."""
        return self._page.refs[self._i]

    @refs.setter
    def refs(self, value: int) -> None:
        self._page.refs[self._i] = value


class _ChunkPage:
    __slots__ = ("versions", "refs", "live")

    def __init__(self):
        self.versions = array("Q", bytes(8 * CHUNK_PAGE))  # 0: no such chunk
        self.refs = array("I", bytes(4 * CHUNK_PAGE))
        self.live = 0


CHUNK_PAGE = 4096


class ChunkTable:
    """chunk id -> version and reference count, 12 bytes a chunk.

    Chunk ids are handed out in sequence, so the table is a dict of pages of CHUNK_PAGE
    consecutive ids, each two arrays; a page goes when its last chunk does. (A dict of
    one object per chunk cost about 170 bytes a chunk.) A live chunk's version is never
    0 (see `consensus.fencing.first_version`), so 0 marks a free row.
    """

    def __init__(self):
        self._pages: dict[int, _ChunkPage] = {}
        self._count = 0

    def add(self, chunk_id: int, version: int, refs: int = 1) -> Chunk:
        if not version or not refs:
            raise ValueError("a chunk has a version and a reference")
        page_no, i = divmod(chunk_id, CHUNK_PAGE)
        page = self._pages.get(page_no)
        if page is None:
            page = self._pages[page_no] = _ChunkPage()
        if page.versions[i]:
            raise KeyError(f"chunk {chunk_id} exists")
        page.versions[i] = version
        page.refs[i] = refs
        page.live += 1
        self._count += 1
        return Chunk(chunk_id, page, i)

    def fill(self, rows) -> None:
        """Add many (chunk id, version, refs) rows, as `add` does each (loading a
        checkpoint): without a row object for each, the page looked up once per run of
        ids in one page."""
        pages = self._pages
        page_no = -1
        page = None
        added = 0
        try:
            for chunk_id, version, refs in rows:
                if not version or not refs:
                    raise ValueError("a chunk has a version and a reference")
                if chunk_id // CHUNK_PAGE != page_no:
                    page_no = chunk_id // CHUNK_PAGE
                    page = pages.get(page_no)
                    if page is None:
                        page = pages[page_no] = _ChunkPage()
                i = chunk_id % CHUNK_PAGE
                if page.versions[i]:
                    raise KeyError(f"chunk {chunk_id} exists")
                page.versions[i] = version
                page.refs[i] = refs
                page.live += 1
                added += 1
        finally:
            self._count += added

    def pages(self):
        """(first chunk id, versions, refs) of each page, the arrays themselves (for a
        checkpoint: written as they are, no object per chunk); the table must not change
        meanwhile."""
        for page_no, page in self._pages.items():
            yield page_no * CHUNK_PAGE, page.versions, page.refs

    def load_page(self, first: int, versions: array, refs: array) -> None:
        """Take a page as `pages` gave it (loading a checkpoint). Raises ValueError for
        a page that is not one: misplaced, of the wrong size, a chunk without a
        version or a reference, or one already loaded."""
        page_no, offset = divmod(first, CHUNK_PAGE)
        if offset or len(versions) != CHUNK_PAGE or len(refs) != CHUNK_PAGE:
            raise ValueError(f"chunk page at {first}: not a page")
        if page_no in self._pages:
            raise ValueError(f"chunk page at {first}: loaded twice")
        free = versions.count(0)
        # A row is free (version 0) exactly when it has no reference: as many zeros in
        # each, and in their products (zero where either is) no more.
        if free == CHUNK_PAGE or refs.count(0) != free or (
                free and list(map(mul, versions, refs)).count(0) != free):
            raise ValueError(f"chunk page at {first}: versions and references disagree")
        page = _ChunkPage.__new__(_ChunkPage)
        page.versions, page.refs, page.live = versions, refs, CHUNK_PAGE - free
        self._pages[page_no] = page
        self._count += page.live

    def get(self, chunk_id: int, default=None) -> Chunk | None:
        page_no, i = divmod(chunk_id, CHUNK_PAGE)
        page = self._pages.get(page_no)
        if page is None or not page.versions[i]:
            return default
        return Chunk(chunk_id, page, i)

    def __getitem__(self, chunk_id: int) -> Chunk:
        chunk = self.get(chunk_id)
        if chunk is None:
            raise KeyError(chunk_id)
        return chunk

    def __contains__(self, chunk_id: int) -> bool:
        return self.get(chunk_id) is not None

    def __delitem__(self, chunk_id: int) -> None:
        page_no, i = divmod(chunk_id, CHUNK_PAGE)
        page = self._pages.get(page_no)
        if page is None or not page.versions[i]:
            raise KeyError(chunk_id)
        page.versions[i] = 0
        page.refs[i] = 0
        page.live -= 1
        self._count -= 1
        if not page.live:
            del self._pages[page_no]

    def __len__(self) -> int:
        return self._count

    def items(self):
        """(chunk id, Chunk) of every chunk; the table must not change meanwhile."""
        for page_no, page in list(self._pages.items()):
            base = page_no * CHUNK_PAGE
            versions = page.versions
            for i in range(CHUNK_PAGE):
                if versions[i]:
                    yield base + i, Chunk(base + i, page, i)

    def values(self):
        return (chunk for _, chunk in self.items())

    def __iter__(self):
        return (chunk_id for chunk_id, _ in self.items())
