"""The metadata state machine: namespace, attributes, chunk table and sessions.

Theory of operation
-------------------
`Namespace.apply(record)` is the only way metadata changes. It is pure and deterministic:
everything it needs (time, session, sequence number, the op) is in the record, and inode
and chunk ids come from counters in the state itself. A live master applies a record and
then journals it; a restarting master (and, later, a follower) applies the journaled
records and reaches the identical state. A unit test checks exactly that.

Every op validates fully before it mutates anything: an op that fails raises `FsError`
and leaves the state untouched, so failed ops are never journaled.

Trash: when the last name of a regular file goes and its trash time is not 0, the file
moves to `trash` (inode -> expiry time and its old path) instead of being freed; it keeps
its chunks (and its goal) until `Undelete` puts it back or `PurgeTrash` frees it. The
master shell decides when an entry has expired (its own clock) and journals `PurgeTrash`
naming the inodes, so replay never depends on a clock.

Snapshots: `Snapshot` copies a file or a tree in one record; copies share chunks
(`Chunk.refs` counts the files pointing at a chunk). Writing a shared chunk
(`WriteChunk`, or `Truncate` cutting inside it) gives the writer a new chunk id, made by
the chunkservers from the old chunk (`DuplicateChunk`), so the other side never changes.

A snapshot of a tree too big for one step is made in steps (`SnapshotBegin`, then
`SnapshotCopy`s, then `SnapshotEnd`; see elkfs/master/longops.py): the copy grows
*detached*, in `building` (top inode -> (destination directory, name)), and gets its
name in the last step, so nobody sees a partial copy; a copy left detached by a restart
or a failover is freed in steps (`DropDetached`) by the next leader.

Side effects on chunkservers (delete a chunk nobody references, cut a chunk's tail, copy
a shared chunk for a truncate) are not performed here: they are queued in `effects` for the master shell, which carries them
out once the record is durable (and, with HA, committed).

Exactly-once: a change carrying (session, seq) stores its result in the session; a retry
of the same (session, seq) returns the stored result without applying again (see
`duplicate_result`).
"""

from __future__ import annotations

import errno
import itertools
from array import array
import stat
from dataclasses import dataclass, field

from .. import access
from ..consensus.fencing import first_version, next_version
from ..proto import messages as m
from ..proto.errors import BAD_SESSION, FsError
from ..proto.layout import BLOCK_SIZE, CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE
from .direntries import DirEntries
from .filelocks import F_UNLCK, LockTable, check_request
from .nodetable import NodeTable
from .nodes import (Chunk, ChunkTable, DirNode, FileNode, Node, SpecialNode, SymlinkNode,
                    shared)
from .records import (CloseSession, DropDetached, DropSessionLocks, ForgetChunkserver,
                      KnowChunkserver, OpenSession, Record, SessionGone, SetGoalMany,
                      SetMaintenance, SetTrashTimeMany, SnapshotBegin, SnapshotCopy,
                      SnapshotEnd)

ROOT = 1
MAX_NAME = 255
MAX_GOAL = 9
DEFAULT_ROOT_GOAL = 2
DEFAULT_TRASHTIME = 86400
MAX_TRASHTIME = (1 << 31) - 1
RESULTS_KEPT = 4096  # per-session results kept for retries

_SPECIAL_TYPES = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


@dataclass
class Session:
    session_id: bytes
    info: str
    opened_ts: int
    open_files: dict[int, int] = field(default_factory=dict)  # inode -> open count
    # Files among them opened for writing (an `Acquire` wanting W, a create): the
    # session writes them without the write permission being checked again.
    writable: set[int] = field(default_factory=set)
    results: dict[int, m.Result | None] = field(default_factory=dict)  # seq -> result
    gone_ns: int = 0  # when its client went away (leader's wall clock); 0: connected


@dataclass
class KnownChunkserver:
    addr: str  # "host:port" of its data port
    maintenance_until_ns: int = 0  # in maintenance until then (leader's wall clock)


@dataclass(frozen=True)
class DeleteChunkEffect:
    chunk_id: int
    version: int


@dataclass(frozen=True)
class DuplicateChunkEffect:
    """Copy-on-write of a shared chunk: make `new_chunk_id` at `new_version` from
    `chunk_id` at `version`; then, if `length` >= 0, cut it to `length` bytes under
    version `cut_version`."""

    chunk_id: int
    version: int
    new_chunk_id: int
    new_version: int
    length: int = -1
    cut_version: int = 0  # the version after the cut (when length >= 0)


@dataclass(frozen=True)
class TruncateChunkEffect:
    chunk_id: int
    version: int
    new_version: int
    length: int


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"bad name {name!r}")
    if len(name) > MAX_NAME:
        raise FsError(errno.ENAMETOOLONG)


class Namespace:
    def __init__(self):
        self.nodes = NodeTable()  # inode -> Node (nodetable.py: no 100 ms growth)
        self.chunks = ChunkTable()
        self.sessions: dict[bytes, Session] = {}
        self.trash: dict[int, tuple[int, bytes]] = {}  # inode -> (expire_ns, path)
        self.chunkservers: dict[bytes, KnownChunkserver] = {}  # every chunkserver, by id
        self.version = 0  # metadata version of the last applied record
        self.last_term = 0  # term of the last applied record (HA; 0 without)
        self.term = 0  # term of the record being applied: new chunk versions are of it
        self.next_inode = ROOT + 1
        self.next_chunk_id = 1
        self.effects: list = []
        self.locks = LockTable()  # file locks (flock, POSIX, OFD) of every session
        # Snapshots being made in steps: the detached copy's top inode -> where it goes.
        self.building: dict[int, tuple[int, bytes]] = {}
        root = DirNode(ROOT, stat.S_IFDIR | 0o755, 0, 0, 0, DEFAULT_ROOT_GOAL,
                       DEFAULT_TRASHTIME, parent=ROOT)
        self.nodes[ROOT] = root

    # ------------------------------------------------------------ reading

    def node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise FsError(errno.ENOENT, f"no inode {inode}")
        return node

    def dir(self, inode: int) -> DirNode:
        node = self.node(inode)
        if not isinstance(node, DirNode):
            raise FsError(errno.ENOTDIR)
        return node

    def file(self, inode: int) -> FileNode:
        node = self.node(inode)
        if isinstance(node, DirNode):
            raise FsError(errno.EISDIR)
        if not isinstance(node, FileNode):
            raise FsError(errno.EINVAL, "not a regular file")
        return node

    @staticmethod
    def attr(node: Node) -> m.Attr:
        xattrs = node.xattrs
        acl = xattrs.get(access.ACCESS, b"") if xattrs else b""
        size = node.size()
        blocks = -1
        if isinstance(node, FileNode) and node.chunks and size > CHUNK_SIZE:
            # Holes take no space: count the chunks that exist (at most their size).
            present = len(node.chunks) - node.chunks.count(0)
            blocks = min(size, present * CHUNK_SIZE) // 512
        elif isinstance(node, FileNode) and not node.chunks:
            blocks = 0
        return m.Attr(node.inode, node.mode, node.uid, node.gid, node.atime, node.mtime,
                      node.ctime, node.nlink, size, node.rdev(), node.goal,
                      node.trashtime, bool(xattrs), acl, blocks)

    def lookup(self, parent: int, name: bytes) -> Node:
        directory = self.dir(parent)
        if len(name) > MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
        if name == b".":
            return directory
        if name == b"..":
            return self.nodes[directory.parent]
        inode = directory.children.get(name)
        if inode is None:
            raise FsError(errno.ENOENT)
        return self.nodes[inode]

    def query(self, op: m.Op) -> m.Result | None:
        """Answer a read-only op from the namespace alone."""
        if isinstance(op, m.Lookup):
            return m.EntryOut(self.attr(self.lookup(op.parent, op.name)))
        if isinstance(op, m.GetAttr):
            return m.AttrOut(self.attr(self.node(op.inode)))
        if isinstance(op, m.ReadDir):
            if op.names_only:
                return self.readdir_names(op.inode, op.offset, op.limit, op.after)
            return self.readdir(op.inode, op.offset, op.limit, op.after)
        if isinstance(op, m.ReadLink):
            node = self.node(op.inode)
            if not isinstance(node, SymlinkNode):
                raise FsError(errno.EINVAL, "not a symlink")
            return m.BytesOut(node.target)
        if isinstance(op, m.GetXattr):
            node = self.node(op.inode)
            if not node.xattrs or op.name not in node.xattrs:
                raise FsError(errno.ENODATA)
            return m.BytesOut(node.xattrs[op.name])
        if isinstance(op, m.ListXattr):
            node = self.node(op.inode)
            return m.NamesOut(list(node.xattrs or ()))
        if isinstance(op, m.DirStats):
            return self.dirstats(op.inode)
        if isinstance(op, m.ListTrash):
            return self.list_trash(op.offset, op.limit)
        raise FsError(errno.ENOSYS, f"{type(op).__name__} is not a namespace query")

    def readdir(self, inode: int, offset: int, limit: int, after: bytes = b"") -> m.DirOut:
        """One page of a listing, in name order (see `direntries`): O(log n + limit)
        when resuming `after` a name, O(n / BLOCK + limit) from an `offset`."""
        children, names, next_offset = self._page(inode, offset, limit, after)
        nodes = self.nodes
        entries = [m.DirEntry(name, self.attr(nodes[children[name]])) for name in names]
        return m.DirOut(entries, next_offset)

    def readdir_names(self, inode: int, offset: int, limit: int,
                      after: bytes = b"") -> m.DirNamesOut:
        """The page `readdir` gives, with only the inode number and mode of each entry."""
        children, names, next_offset = self._page(inode, offset, limit, after)
        inodes = [children[name] for name in names]
        nodes = self.nodes
        return m.DirNamesOut(names, inodes, [nodes[i].mode for i in inodes], next_offset)

    def _page(self, inode: int, offset: int, limit: int,
              after: bytes) -> tuple[DirEntries, list[bytes], int]:
        """The directory's entries, the names of the page, and the next page's `offset`
        (-1: this page is the last)."""
        directory = self.dir(inode)
        limit = max(1, min(limit, 10000))
        if offset < 0:
            raise FsError(errno.EINVAL, "negative offset")
        children = directory.children
        names = children.names_after(after) if after else children.names_from(offset)
        page = list(itertools.islice(names, limit + 1))
        if len(page) <= limit:
            return children, page, -1
        if after:
            offset = 0  # positions are not known when resuming by name; any >= 0 says "more"
        return children, page[:limit], offset + limit

    def list_trash(self, offset: int, limit: int) -> m.TrashOut:
        limit = max(1, min(limit, 10000))
        items = itertools.islice(self.trash.items(), offset, offset + limit)
        entries = [m.TrashEntry(inode, path, expire, self.attr(self.nodes[inode]))
                   for inode, (expire, path) in items]
        done = offset + len(entries) >= len(self.trash)
        return m.TrashOut(entries, -1 if done else offset + len(entries))

    def path_of(self, dir_inode: int, name: bytes = b"") -> bytes:
        """The path of `name` in directory `dir_inode`, from the root, no leading slash."""
        parts = [name] if name else []
        inode = dir_inode
        while inode != ROOT:
            directory = self.nodes[inode]
            parts.append(directory.name)
            inode = directory.parent
        return b"/".join(reversed(parts))

    def dirstats(self, inode: int) -> m.DirStatsOut:
        inodes = dirs = files = chunks = length = size = realsize = 0
        stack = [self.node(inode)]
        while stack:
            node = stack.pop()
            inodes += 1
            if isinstance(node, DirNode):
                dirs += 1
                stack.extend(self.nodes[c] for c in node.children.values())
            elif isinstance(node, FileNode):
                files += 1
                n_chunks = sum(1 for c in node.chunks if c)
                chunks += n_chunks
                length += node.length
                blocks = -(-node.length // BLOCK_SIZE)
                file_size = blocks * BLOCK_SIZE
                size += file_size
                realsize += file_size * node.goal
        return m.DirStatsOut(inodes, dirs, files, chunks, length, size, realsize)

    def chunk_of(self, inode: int, index: int) -> Chunk | None:
        node = self.file(inode)
        if index < len(node.chunks) and node.chunks[index]:
            return self.chunks[node.chunks[index]]
        return None

    def duplicate_result(self, session: bytes, seq: int):
        """(True, result) when (session, seq) was applied already; (False, None) if not."""
        if not seq:
            return False, None
        sess = self.sessions.get(session)
        if sess is not None and seq in sess.results:
            return True, sess.results[seq]
        return False, None

    # ------------------------------------------------------------ changing

    def apply(self, rec: Record) -> m.Result | None:
        """Apply one record. Raises FsError (state unchanged) when the op fails."""
        if rec.version != self.version + 1:
            raise AssertionError(f"record version {rec.version} after {self.version}")
        op = rec.op
        sess = None
        if rec.session and not isinstance(op, OpenSession):
            sess = self.sessions.get(rec.session)
            if sess is None:
                raise FsError(BAD_SESSION, "unknown session")
        handler = self._HANDLERS.get(type(op))
        if handler is None:
            raise FsError(errno.ENOSYS, f"{type(op).__name__} does not change metadata")
        self.term = rec.term
        result = handler(self, op, rec.ts_ns, sess)
        self.version = rec.version
        self.last_term = rec.term
        if sess is not None and rec.seq:
            sess.results[rec.seq] = result
            if len(sess.results) > RESULTS_KEPT:
                del sess.results[next(iter(sess.results))]
        return result

    def _new_node(self, cls, parent: DirNode, name: bytes, mode: int, uid: int, gid: int,
                  ts: int, **extra) -> Node:
        inode = self.next_inode
        self.next_inode += 1
        if cls is DirNode:
            node = DirNode(inode, mode, uid, gid, ts, parent.goal, parent.trashtime,
                           parent=parent.inode, name=name)
            parent.nlink += 1
        else:
            node = cls(inode, mode, uid, gid, ts, parent.goal, parent.trashtime, **extra)
        # New entries inherit the directory's SGID group, as on Linux file systems.
        if parent.mode & stat.S_ISGID:
            node.gid = parent.gid
            if cls is DirNode:
                node.mode = shared(node.mode | stat.S_ISGID)
        self.nodes[inode] = node
        parent.children[name] = inode
        parent.mtime = parent.ctime = ts
        return node

    def _prepare_create(self, parent_inode: int, name: bytes) -> DirNode:
        _check_name(name)
        parent = self.dir(parent_inode)
        if name in parent.children:
            raise FsError(errno.EEXIST)
        return parent

    @staticmethod
    def _create_mode(parent: DirNode, mode: int, umask: int):
        """The new node's mode, and the access ACL it inherits (None: none): the
        directory's default ACL replaces the umask (posix_acl_create)."""
        default = parent.xattrs.get(access.DEFAULT) if parent.xattrs else None
        if not default:
            return mode & ~umask, None
        acl, mode = access.inherit(access.parse(default), mode)
        return mode, acl

    @staticmethod
    def _give_acl(node: Node, parent: DirNode, acl) -> None:
        if acl is not None:
            node.xattrs = {access.ACCESS: access.encode(acl)}
        if isinstance(node, DirNode) and parent.xattrs and access.DEFAULT in parent.xattrs:
            node.xattrs = {**(node.xattrs or {}), access.DEFAULT: parent.xattrs[access.DEFAULT]}

    def _mknod(self, op: m.Mknod, ts, sess):
        fmt = stat.S_IFMT(op.mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, *_SPECIAL_TYPES):
            raise FsError(errno.EINVAL, "mknod of this type")
        parent = self._prepare_create(op.parent, op.name)
        perm, acl = self._create_mode(parent, op.mode & 0o7777, op.umask)
        mode = fmt | perm
        if op.acquire and sess is None:
            raise FsError(BAD_SESSION, "acquire needs a session")
        if fmt == stat.S_IFREG:
            node = self._new_node(FileNode, parent, op.name, mode, op.uid, op.gid, ts)
        else:
            node = self._new_node(SpecialNode, parent, op.name, mode, op.uid, op.gid, ts,
                                  dev=op.rdev)
        self._give_acl(node, parent, acl)
        if op.acquire:
            sess.open_files[node.inode] = sess.open_files.get(node.inode, 0) + 1
            sess.writable.add(node.inode)
        return m.EntryOut(self.attr(node), self.attr(parent))

    def _mkdir(self, op: m.Mkdir, ts, sess):
        parent = self._prepare_create(op.parent, op.name)
        perm, acl = self._create_mode(parent, op.mode & 0o7777, op.umask)
        node = self._new_node(DirNode, parent, op.name, stat.S_IFDIR | perm, op.uid, op.gid,
                              ts)
        self._give_acl(node, parent, acl)
        return m.EntryOut(self.attr(node), self.attr(parent))

    def _symlink(self, op: m.Symlink, ts, sess):
        if not op.target or len(op.target) > 4096:
            raise FsError(errno.ENAMETOOLONG if op.target else errno.ENOENT)
        parent = self._prepare_create(op.parent, op.name)
        node = self._new_node(SymlinkNode, parent, op.name, stat.S_IFLNK | 0o777, op.uid,
                              op.gid, ts, target=op.target)
        return m.EntryOut(self.attr(node), self.attr(parent))

    def _link(self, op: m.Link, ts, sess):
        node = self.node(op.inode)
        if isinstance(node, DirNode):
            raise FsError(errno.EPERM, "hard link to a directory")
        parent = self._prepare_create(op.parent, op.name)
        if node.nlink == 0:
            raise FsError(errno.ENOENT, "file was removed")
        parent.children[op.name] = node.inode
        node.nlink += 1
        node.ctime = ts
        parent.mtime = parent.ctime = ts
        return m.EntryOut(self.attr(node), self.attr(parent))

    def _drop_link(self, node: Node, ts: int, path: bytes) -> None:
        """One name (`path`) of `node` is gone. The last name of a regular file with a
        trash time sends it to the trash; otherwise it is freed unless still open."""
        node.nlink -= 1
        node.ctime = ts
        if node.nlink <= 0 and isinstance(node, FileNode) and node.trashtime > 0:
            self.trash[node.inode] = (ts + node.trashtime * 1_000_000_000, path)
        self._maybe_free(node)

    def _maybe_free(self, node: Node) -> None:
        if node.nlink <= 0 and node.inode not in self.trash and not self._is_open(node.inode):
            self._free(node)

    def _is_open(self, inode: int) -> bool:
        return any(inode in s.open_files for s in self.sessions.values())

    def _free(self, node: Node) -> None:
        del self.nodes[node.inode]
        if isinstance(node, FileNode):
            for chunk_id in node.chunks:
                if chunk_id:
                    self._unref_chunk(chunk_id)

    def _unref_chunk(self, chunk_id: int) -> None:
        chunk = self.chunks[chunk_id]
        chunk.refs -= 1
        if chunk.refs == 0:
            self.effects.append(DeleteChunkEffect(chunk_id, chunk.version))
            del self.chunks[chunk_id]

    def _unlink(self, op: m.Unlink, ts, sess):
        parent = self.dir(op.parent)
        node = self.lookup(op.parent, op.name) if op.name not in (b".", b"..") else None
        if node is None:
            raise FsError(errno.EINVAL)
        if isinstance(node, DirNode):
            raise FsError(errno.EISDIR)
        path = self.path_of(op.parent, op.name)
        del parent.children[op.name]
        parent.mtime = parent.ctime = ts
        self._drop_link(node, ts, path)
        return self._changed(parent, node)

    def _rmdir(self, op: m.Rmdir, ts, sess):
        if op.name == b".":
            raise FsError(errno.EINVAL)
        if op.name == b"..":
            raise FsError(errno.ENOTEMPTY)
        parent = self.dir(op.parent)
        node = self.lookup(op.parent, op.name)
        if not isinstance(node, DirNode):
            raise FsError(errno.ENOTDIR)
        if node.children:
            raise FsError(errno.ENOTEMPTY)
        if node.inode == ROOT:
            raise FsError(errno.EBUSY)
        del parent.children[op.name]
        parent.nlink -= 1
        parent.mtime = parent.ctime = ts
        del self.nodes[node.inode]
        return self._changed(parent)

    def _changed(self, *nodes: Node | None) -> m.ChangedOut:
        """The attributes of the touched nodes that still exist (each once)."""
        seen: set[int] = set()
        attrs = []
        for node in nodes:
            if node is not None and node.inode not in seen and node.inode in self.nodes:
                seen.add(node.inode)
                attrs.append(self.attr(node))
        return m.ChangedOut(attrs)

    def _is_ancestor(self, ancestor: int, inode: int) -> bool:
        """True when `ancestor` is `inode` or a directory above it."""
        while True:
            if inode == ancestor:
                return True
            if inode == ROOT:
                return False
            inode = self.nodes[inode].parent

    def _rename(self, op: m.Rename, ts, sess):
        if op.flags & ~(m.RENAME_NOREPLACE | m.RENAME_EXCHANGE) or op.flags == 3:
            raise FsError(errno.EINVAL, "bad rename flags")
        if op.name in (b".", b"..") or op.new_name in (b".", b".."):
            raise FsError(errno.EINVAL if op.name in (b".", b"..") else errno.EBUSY)
        _check_name(op.new_name)
        src_dir = self.dir(op.parent)
        dst_dir = self.dir(op.new_parent)
        src_inode = src_dir.children.get(op.name)
        if src_inode is None:
            raise FsError(errno.ENOENT)
        src = self.nodes[src_inode]
        dst_inode = dst_dir.children.get(op.new_name)
        dst = self.nodes[dst_inode] if dst_inode is not None else None
        if op.flags & m.RENAME_EXCHANGE:
            if dst is None:
                raise FsError(errno.ENOENT)
            return self._exchange(src_dir, op.name, src, dst_dir, op.new_name, dst, ts)
        if dst is not None and op.flags & m.RENAME_NOREPLACE:
            raise FsError(errno.EEXIST)
        if dst is src:  # two names of one file, or a name onto itself: nothing to do
            return self._changed(src)
        if isinstance(src, DirNode) and self._is_ancestor(src.inode, dst_dir.inode):
            raise FsError(errno.EINVAL, "directory into its own subtree")
        if dst is not None:
            if isinstance(src, DirNode):
                if not isinstance(dst, DirNode):
                    raise FsError(errno.ENOTDIR)
                if dst.children:
                    raise FsError(errno.ENOTEMPTY)
            elif isinstance(dst, DirNode):
                raise FsError(errno.EISDIR)
        # Validated: now change.
        if dst is not None:
            if isinstance(dst, DirNode):
                dst_dir.nlink -= 1
                del self.nodes[dst.inode]
            else:
                self._drop_link(dst, ts, self.path_of(dst_dir.inode, op.new_name))
        del src_dir.children[op.name]
        dst_dir.children[op.new_name] = src.inode
        if isinstance(src, DirNode):
            src.name = op.new_name
            if src_dir is not dst_dir:
                src_dir.nlink -= 1
                dst_dir.nlink += 1
                src.parent = dst_dir.inode
        src.ctime = ts
        src_dir.mtime = src_dir.ctime = ts
        dst_dir.mtime = dst_dir.ctime = ts
        return self._changed(src_dir, dst_dir, src, dst)

    def _exchange(self, src_dir, name, src, dst_dir, new_name, dst, ts):
        for a, b in ((src, dst_dir), (dst, src_dir)):
            if isinstance(a, DirNode) and self._is_ancestor(a.inode, b.inode):
                raise FsError(errno.EINVAL, "directory into its own subtree")
        src_dir.children[name], dst_dir.children[new_name] = dst.inode, src.inode
        if isinstance(src, DirNode):
            src.name = new_name
        if isinstance(dst, DirNode):
            dst.name = name
        if src_dir is not dst_dir:
            for node, new_parent, old_parent in ((src, dst_dir, src_dir), (dst, src_dir, dst_dir)):
                if isinstance(node, DirNode):
                    node.parent = new_parent.inode
                    new_parent.nlink += 1
                    old_parent.nlink -= 1
        src.ctime = dst.ctime = ts
        src_dir.mtime = src_dir.ctime = dst_dir.mtime = dst_dir.ctime = ts
        return self._changed(src_dir, dst_dir, src, dst)

    def _setattr(self, op: m.SetAttr, ts, sess):
        node = self.node(op.inode)
        valid = op.valid
        if valid & m.SET_MODE:
            node.mode = shared(stat.S_IFMT(node.mode) | (op.mode & 0o7777))
            if node.xattrs and access.ACCESS in node.xattrs:  # chmod moves the mask
                node.xattrs[access.ACCESS] = access.encode(
                    access.chmod(access.parse(node.xattrs[access.ACCESS]), node.mode))
        if valid & (m.SET_UID | m.SET_GID):
            changed = ((valid & m.SET_UID and op.uid != node.uid)
                       or (valid & m.SET_GID and op.gid != node.gid))
            if valid & m.SET_UID:
                node.uid = shared(op.uid)
            if valid & m.SET_GID:
                node.gid = shared(op.gid)
            # POSIX: chown of a regular file clears set-user-ID and set-group-ID
            # (set-group-ID only when group execute is set: else it marks mandatory locks).
            if changed and isinstance(node, FileNode) and not valid & m.SET_MODE:
                node.mode &= ~stat.S_ISUID
                if node.mode & stat.S_IXGRP:
                    node.mode &= ~stat.S_ISGID
        if valid & m.SET_ATIME_NOW:
            node.atime = ts
        elif valid & m.SET_ATIME:
            node.atime = op.atime_ns
        if valid & m.SET_MTIME_NOW:
            node.mtime = ts
        elif valid & m.SET_MTIME:
            node.mtime = op.mtime_ns
        node.ctime = op.ctime_ns if valid & m.SET_CTIME else ts
        return m.AttrOut(self.attr(node))

    def _truncate(self, op: m.Truncate, ts, sess):
        node = self.file(op.inode)
        if op.length < 0 or op.length > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG if op.length > 0 else errno.EINVAL)
        if op.length < node.length:
            keep = -(-op.length // CHUNK_SIZE)  # chunks still (partly) inside the file
            for chunk_id in node.chunks[keep:]:
                if chunk_id:
                    self._unref_chunk(chunk_id)
            del node.chunks[keep:]
            tail = op.length % CHUNK_SIZE
            if tail and 0 < keep <= len(node.chunks) and node.chunks[keep - 1]:
                chunk = self.chunks[node.chunks[keep - 1]]
                if chunk.refs > 1:
                    # Shared with a snapshot: cut a private copy (new id), not the shared one.
                    chunk.refs -= 1
                    made = first_version(self.term)
                    new = self.chunks.add(self.next_chunk_id, next_version(made, self.term))
                    self.next_chunk_id += 1
                    node.chunks[keep - 1] = new.chunk_id
                    self.effects.append(DuplicateChunkEffect(chunk.chunk_id, chunk.version,
                                                             new.chunk_id, made, tail,
                                                             new.version))
                else:
                    # The last chunk keeps `tail` bytes: zero the rest on its copies, under
                    # a new version so a copy that missed the cut is stale.
                    old = chunk.version
                    chunk.version = next_version(old, self.term)
                    self.effects.append(TruncateChunkEffect(chunk.chunk_id, old, chunk.version,
                                                            tail))
        node.length = op.length
        node.mtime = node.ctime = ts
        return m.AttrOut(self.attr(node))

    def _setxattr(self, op: m.SetXattr, ts, sess):
        node = self.node(op.inode)
        if not op.name or len(op.name) > 255:
            raise FsError(errno.ERANGE if op.name else errno.EINVAL)
        if len(op.value) > 65536:
            raise FsError(errno.E2BIG)
        present = bool(node.xattrs) and op.name in node.xattrs
        if op.flags & m.XATTR_CREATE and present:
            raise FsError(errno.EEXIST)
        if op.flags & m.XATTR_REPLACE and not present:
            raise FsError(errno.ENODATA)
        if op.name in (access.ACCESS, access.DEFAULT):
            self._set_acl(node, op.name, op.value)
            node.ctime = ts
            return None
        if node.xattrs is None:
            node.xattrs = {}
        node.xattrs[op.name] = op.value
        node.ctime = ts
        return None

    def _set_acl(self, node: Node, name: bytes, value: bytes) -> None:
        """setfacl: an access ACL sets the mode's permission bits (and is not kept when
        the mode says it all); a default ACL only on directories (empty: none)."""
        try:
            entries = access.parse(value)
        except access.AclError as e:
            raise FsError(errno.EINVAL, str(e)) from None
        if name == access.DEFAULT and not isinstance(node, DirNode):
            raise FsError(errno.EACCES, "default ACL on a non-directory")
        if name == access.ACCESS and not entries:
            raise FsError(errno.EINVAL, "empty access ACL")
        keep = bool(entries)
        if name == access.ACCESS:
            node.mode = access.mode_of(entries, node.mode)
            keep = not access.is_minimal(entries)
        if keep:
            if node.xattrs is None:
                node.xattrs = {}
            node.xattrs[name] = access.encode(entries)
        elif node.xattrs and name in node.xattrs:
            del node.xattrs[name]
            if not node.xattrs:
                node.xattrs = None

    def _removexattr(self, op: m.RemoveXattr, ts, sess):
        node = self.node(op.inode)
        if not node.xattrs or op.name not in node.xattrs:
            raise FsError(errno.ENODATA)
        del node.xattrs[op.name]
        if not node.xattrs:
            node.xattrs = None
        node.ctime = ts
        return None

    def _setgoal(self, op: m.SetGoal, ts, sess):
        if not 1 <= op.goal <= MAX_GOAL:
            raise FsError(errno.EINVAL, f"goal must be 1-{MAX_GOAL}")
        stack = [self.node(op.inode)]
        changed = 0
        while stack:
            node = stack.pop()
            if node.goal != op.goal:
                node.goal = op.goal
                node.ctime = ts
                changed += 1
            if op.recursive and isinstance(node, DirNode):
                stack.extend(self.nodes[c] for c in node.children.values())
        return m.AttrOut(self.attr(self.nodes[op.inode]))

    def _settrashtime(self, op: m.SetTrashTime, ts, sess):
        if not 0 <= op.trashtime <= MAX_TRASHTIME:
            raise FsError(errno.EINVAL, f"trash time must be 0-{MAX_TRASHTIME}")
        stack = [self.node(op.inode)]
        while stack:
            node = stack.pop()
            if node.trashtime != op.trashtime:
                node.trashtime = op.trashtime
                node.ctime = ts
            if op.recursive and isinstance(node, DirNode):
                stack.extend(self.nodes[c] for c in node.children.values())
        return m.AttrOut(self.attr(self.nodes[op.inode]))

    def _snapshot(self, op: m.Snapshot, ts, sess):
        src = self.node(op.inode)
        if src.nlink <= 0:
            raise FsError(errno.ENOENT, "source is in the trash")
        parent = self._prepare_create(op.dst_parent, op.dst_name)
        if isinstance(src, DirNode) and self._is_ancestor(src.inode, parent.inode):
            raise FsError(errno.EINVAL, "snapshot of a directory into its own subtree")
        # Validated: copy depth-first. Every name gets its own copy (hard links inside the
        # tree are not kept linked); files share their chunks with the source.
        top = self._copy_node(src, parent, op.dst_name, ts)
        parent.mtime = parent.ctime = ts
        return m.EntryOut(self.attr(top))

    def _copy_node(self, src: Node, parent: DirNode, name: bytes, ts: int) -> Node:
        stack = [(src, parent, name)]
        top = None
        while stack:
            node, into, nm = stack.pop()
            copy = self._copy_one(node, into.inode, ts, nm)
            if isinstance(node, DirNode):
                into.nlink += 1
                stack.extend((self.nodes[c], copy, n)
                             for n, c in reversed(list(node.children.items())))
            into.children[nm] = copy.inode
            if top is None:
                top = copy
        return top

    def _copy_one(self, node: Node, parent_inode: int, ts: int, name: bytes) -> Node:
        """A copy of `node` alone (a directory's copy is empty), not linked anywhere
        (`name`: the one it will get in `parent_inode`)."""
        inode = self.next_inode
        self.next_inode += 1
        if isinstance(node, DirNode):
            copy = DirNode(inode, node.mode, node.uid, node.gid, ts, node.goal,
                           node.trashtime, parent=parent_inode, name=name)
        elif isinstance(node, FileNode):
            copy = FileNode(inode, node.mode, node.uid, node.gid, ts, node.goal,
                            node.trashtime)
            copy.length = node.length
            copy.chunks = array("Q", node.chunks)
            for chunk_id in copy.chunks:
                if chunk_id:
                    self.chunks[chunk_id].refs += 1
        elif isinstance(node, SymlinkNode):
            copy = SymlinkNode(inode, node.mode, node.uid, node.gid, ts, node.goal,
                               node.trashtime, target=node.target)
        else:
            copy = SpecialNode(inode, node.mode, node.uid, node.gid, ts, node.goal,
                               node.trashtime, dev=node.dev)
        copy.atime, copy.mtime = node.atime, node.mtime
        if node.xattrs:
            copy.xattrs = dict(node.xattrs)
        self.nodes[inode] = copy
        return copy

    # -------- long operations, one bounded step per record (see elkfs/master/longops.py)

    def _snapbegin(self, op: SnapshotBegin, ts, sess):
        src = self.node(op.inode)
        if src.nlink <= 0:
            raise FsError(errno.ENOENT, "source is in the trash")
        parent = self._prepare_create(op.dst_parent, op.dst_name)
        if isinstance(src, DirNode) and self._is_ancestor(src.inode, parent.inode):
            raise FsError(errno.EINVAL, "snapshot of a directory into its own subtree")
        top = self._copy_one(src, parent.inode, ts, op.dst_name)
        self.building[top.inode] = (parent.inode, op.dst_name)
        return top.inode

    def _building(self, top: int) -> Node:
        if top not in self.building:
            raise FsError(errno.EINVAL, f"no snapshot in steps with top {top}")
        return self.nodes[top]

    def _snapcopy(self, op: SnapshotCopy, ts, sess):
        """Copies one level of each entry; returns the copies' inodes (0: skipped, the
        source or the place is gone, or the name is taken)."""
        self._building(op.top)
        made = []
        nodes = self.nodes
        for src_inode, into_inode, name in op.entries:
            src = nodes.get(src_inode)
            into = nodes.get(into_inode)
            if (src is None or not isinstance(into, DirNode) or name in into.children
                    or not name or b"/" in name or len(name) > MAX_NAME):
                made.append(0)
                continue
            copy = self._copy_one(src, into_inode, ts, name)
            if isinstance(copy, DirNode):
                into.nlink += 1
            into.children[name] = copy.inode
            made.append(copy.inode)
        return made

    def _snapend(self, op: SnapshotEnd, ts, sess):
        top = self._building(op.top)
        parent_inode, name = self.building[op.top]
        parent = self._prepare_create(parent_inode, name)
        del self.building[op.top]
        parent.children[name] = top.inode
        if isinstance(top, DirNode):
            parent.nlink += 1
            top.parent, top.name = parent.inode, name
        parent.mtime = parent.ctime = ts
        return m.EntryOut(self.attr(top))

    def _dropdetached(self, op: DropDetached, ts, sess):
        """Frees up to `count` entries of the detached tree, deepest first (children
        taken from the end of their directory: O(1) each, the same on every replica);
        the top itself last. Returns how many were freed."""
        top = self._building(op.top)
        freed = 0
        stack = [top]
        while stack and freed < op.count:
            node = stack[-1]
            if isinstance(node, DirNode) and node.children:
                name, child_inode = node.children.popitem()
                child = self.nodes[child_inode]
                if isinstance(child, DirNode) and child.children:
                    node.children[name] = child_inode  # back in its place (the end)
                    stack.append(child)
                    continue
                if isinstance(child, DirNode):
                    node.nlink -= 1
                    del self.nodes[child_inode]
                else:
                    child.nlink -= 1
                    if child.nlink <= 0 and not self._is_open(child_inode):
                        self._free(child)
                freed += 1
                continue
            stack.pop()
            if node is top:
                del self.building[op.top]
                self._free(top)
                freed += 1
        return freed

    def _setgoalmany(self, op: SetGoalMany, ts, sess):
        if not 1 <= op.goal <= MAX_GOAL:
            raise FsError(errno.EINVAL, f"goal must be 1-{MAX_GOAL}")
        self._set_many(op.inodes, "goal", op.goal, ts)

    def _settrashtimemany(self, op: SetTrashTimeMany, ts, sess):
        if not 0 <= op.trashtime <= MAX_TRASHTIME:
            raise FsError(errno.EINVAL, f"trash time must be 0-{MAX_TRASHTIME}")
        self._set_many(op.inodes, "trashtime", op.trashtime, ts)

    def _set_many(self, inodes, field: str, value: int, ts: int) -> None:
        """One step of a recursive setgoal/settrashtime: the nodes still there get it."""
        for inode in inodes:
            node = self.nodes.get(inode)
            if node is not None and getattr(node, field) != value:
                setattr(node, field, value)
                node.ctime = ts

    def _undelete(self, op: m.Undelete, ts, sess):
        entry = self.trash.get(op.inode)
        if entry is None:
            raise FsError(errno.ENOENT, "not in the trash")
        node = self.nodes[op.inode]
        parts = [p for p in entry[1].split(b"/") if p]
        if not parts:
            raise FsError(errno.EINVAL, "trash entry has no path")
        # Validate: walk the existing part of the path; the rest will be made.
        directory = self.nodes[ROOT]
        missing = []
        for i, part in enumerate(parts[:-1]):
            child = directory.children.get(part)
            if child is None:
                missing = parts[i:-1]
                break
            directory = self.nodes[child]
            if not isinstance(directory, DirNode):
                raise FsError(errno.ENOTDIR, f"{part!r} on the way back is not a directory")
        if not missing and parts[-1] in directory.children:
            raise FsError(errno.EEXIST, "a file with that name exists")
        for part in missing:
            directory = self._new_node(DirNode, directory, part, stat.S_IFDIR | 0o755,
                                       node.uid, node.gid, ts)
        del self.trash[op.inode]
        directory.children[parts[-1]] = node.inode
        directory.mtime = directory.ctime = ts
        node.nlink = 1
        node.ctime = ts
        return m.EntryOut(self.attr(node))

    def _purgetrash(self, op: m.PurgeTrash, ts, sess):
        for inode in op.inodes:
            if self.trash.pop(inode, None) is not None:
                self._maybe_free(self.nodes[inode])
        return None

    def _acquire(self, op: m.Acquire, ts, sess):
        self.node(op.inode)
        if sess is None:
            raise FsError(BAD_SESSION, "acquire needs a session")
        sess.open_files[op.inode] = sess.open_files.get(op.inode, 0) + 1
        if op.want & access.W:
            sess.writable.add(op.inode)
        return None

    def _release(self, op: m.Release, ts, sess):
        if sess is None or op.inode not in sess.open_files:
            raise FsError(errno.EBADF, "file not open in this session")
        count = sess.open_files[op.inode] - 1
        if count:
            sess.open_files[op.inode] = count
        else:
            del sess.open_files[op.inode]
            sess.writable.discard(op.inode)
            node = self.nodes.get(op.inode)
            if node is not None:
                self._maybe_free(node)
        return None

    def _release_many(self, op: m.ReleaseMany, ts, sess):
        if sess is None:
            raise FsError(errno.EBADF, "release needs a session")
        for inode in op.inodes:
            if inode in sess.open_files:
                self._release(m.Release(inode), ts, sess)
        return None

    def _writechunk(self, op: m.WriteChunk, ts, sess):
        node = self.file(op.inode)
        if not 0 <= op.index < MAX_CHUNKS:
            raise FsError(errno.EFBIG)
        if len(node.chunks) <= op.index:
            node.chunks.extend([0] * (op.index + 1 - len(node.chunks)))
        chunk_id = node.chunks[op.index]
        if chunk_id and self.chunks[chunk_id].refs > 1:
            # Shared with a snapshot: the writer gets its own copy under a new id (the
            # shell has the chunkservers duplicate the old chunk into it).
            self.chunks[chunk_id].refs -= 1
            chunk = self.chunks.add(self.next_chunk_id, first_version(self.term))
            self.next_chunk_id += 1
            node.chunks[op.index] = chunk.chunk_id
        elif chunk_id:
            chunk = self.chunks[chunk_id]
            chunk.version = next_version(chunk.version, self.term)
        else:
            chunk = self.chunks.add(self.next_chunk_id, first_version(self.term))
            self.next_chunk_id += 1
            node.chunks[op.index] = chunk.chunk_id
        return m.ChunkOut(chunk.chunk_id, chunk.version, node.length, [])

    def _writechunkend(self, op: m.WriteChunkEnd, ts, sess):
        node = self.file(op.inode)
        if op.length > MAX_FILE_SIZE or op.length < 0:
            raise FsError(errno.EFBIG)
        if op.length > node.length:
            node.length = op.length
        node.mtime = node.ctime = ts
        return m.AttrOut(self.attr(node))

    def _opensession(self, op: OpenSession, ts, sess):
        if op.session in self.sessions:
            raise FsError(errno.EEXIST, "session exists")
        self.sessions[op.session] = Session(op.session, op.info, ts)
        return None

    def _knowcs(self, op: KnowChunkserver, ts, sess):
        known = self.chunkservers.get(op.cs_id)
        if known is None:
            self.chunkservers[op.cs_id] = KnownChunkserver(op.addr)
        else:
            known.addr = op.addr
        return None

    def _forgetcs(self, op: ForgetChunkserver, ts, sess):
        if self.chunkservers.pop(op.cs_id, None) is None:
            raise FsError(errno.ENOENT, "no such chunkserver")
        return None

    def _maintenance(self, op: SetMaintenance, ts, sess):
        known = self.chunkservers.get(op.cs_id)
        if known is None:
            raise FsError(errno.ENOENT, "no such chunkserver")
        known.maintenance_until_ns = op.until_ns
        return None

    def _sessiongone(self, op: SessionGone, ts, sess):
        gone = self.sessions.get(op.session)
        if gone is None:
            raise FsError(BAD_SESSION)
        gone.gone_ns = ts if op.gone else 0
        return None

    def _closesession(self, op: CloseSession, ts, sess):
        closing = self.sessions.get(op.session)
        if closing is None:
            raise FsError(BAD_SESSION)
        del self.sessions[op.session]
        self.locks.release_session(op.session)
        for inode in closing.open_files:
            node = self.nodes.get(inode)
            if node is not None:
                self._maybe_free(node)
        return None

    # ------------------------------------------------------------ file locks

    def get_lock(self, session: bytes, op: m.GetLock) -> m.LockOut:
        """F_GETLK as `session` asks it (a query: journals nothing)."""
        self.node(op.inode)
        try:
            check_request(op.kind, op.type, op.start, op.end)
        except ValueError as e:
            raise FsError(errno.EINVAL, str(e)) from None
        lk = self.locks.conflict(op.inode, op.kind, session, op.owner, op.type, op.start,
                                 op.end)
        if lk is None:
            return m.LockOut(F_UNLCK)
        return m.LockOut(lk.type, lk.start, lk.end, lk.pid)

    def _setlock(self, op: m.SetLock, ts, sess):
        if sess is None:
            raise FsError(BAD_SESSION, "locks need a session")
        self.node(op.inode)
        try:
            check_request(op.kind, op.type, op.start, op.end)
        except ValueError as e:
            raise FsError(errno.EINVAL, str(e)) from None
        holder = self.locks.conflict(op.inode, op.kind, sess.session_id, op.owner, op.type,
                                     op.start, op.end)
        if holder is not None:
            raise FsError(errno.EAGAIN, f"held by pid {holder.pid}")
        self.locks.set(op.inode, op.kind, sess.session_id, op.owner, op.pid, op.type,
                       op.start, op.end)
        return m.LockOut(op.type, op.start, op.end, op.pid)

    def _releaselocks(self, op: m.ReleaseLocks, ts, sess):
        if sess is None:
            raise FsError(BAD_SESSION, "locks need a session")
        self.locks.release_owner(op.inode, sess.session_id, op.owner)
        return None

    def _dropsessionlocks(self, op: DropSessionLocks, ts, sess):
        self.locks.release_session(op.session)
        return None

    def _appendreserve(self, op: m.AppendReserve, ts, sess):
        node = self.file(op.inode)
        if op.length < 0 or node.length + op.length > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG if op.length > 0 else errno.EINVAL)
        offset = node.length
        node.length += op.length
        node.mtime = node.ctime = ts
        return m.AppendOut(offset, self.attr(node))

    _HANDLERS = {
        m.Mknod: _mknod, m.Mkdir: _mkdir, m.Symlink: _symlink, m.Link: _link,
        m.Unlink: _unlink, m.Rmdir: _rmdir, m.Rename: _rename, m.SetAttr: _setattr,
        m.Truncate: _truncate, m.SetXattr: _setxattr, m.RemoveXattr: _removexattr,
        m.SetGoal: _setgoal, m.Acquire: _acquire, m.Release: _release,
        m.ReleaseMany: _release_many,
        m.WriteChunk: _writechunk, m.WriteChunkEnd: _writechunkend,
        OpenSession: _opensession, CloseSession: _closesession, SessionGone: _sessiongone,
        KnowChunkserver: _knowcs, ForgetChunkserver: _forgetcs, SetMaintenance: _maintenance,
        m.SetTrashTime: _settrashtime, m.Snapshot: _snapshot, m.Undelete: _undelete,
        m.PurgeTrash: _purgetrash, m.SetLock: _setlock, m.ReleaseLocks: _releaselocks,
        DropSessionLocks: _dropsessionlocks, m.AppendReserve: _appendreserve,
        SnapshotBegin: _snapbegin, SnapshotCopy: _snapcopy, SnapshotEnd: _snapend,
        DropDetached: _dropdetached, SetGoalMany: _setgoalmany,
        SetTrashTimeMany: _settrashtimemany,
    }
