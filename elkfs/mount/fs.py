"""The FUSE file system: pyfuse3 `Operations` over the ElkFS client library.

Theory of operation
-------------------
Kernel inode numbers are the master's inode numbers (the mounted subfolder's inode shows
as 1), so no table maps them and `forget` has nothing to do.

Metadata: every change is one request to the master (`Client.op`). The kernel caches
entries and attributes for `entry_timeout`/`attr_timeout` seconds (MooseFS defaults: 1 s),
which is what makes stat-heavy work fast; the master stays the authority.

Open files: the mount keeps one `InodeState` per open inode, shared by all its handles:
the writer (`client.File`, which streams writes into one chunk at a time in large pieces)
and the local view of the size while written data is not yet committed. The master is
told about opens (`Acquire`, so an unlinked open file stays readable) and closes
(`Release`) without waiting for the answer: both ride the one ordered master connection,
so they cost the application no round trip.

Reads: a handle reads through a `Reader`: chunk locations are asked once per chunk per
open, sequential reads are detected and served from read-ahead blocks fetched in the
background, random reads go straight to a chunkserver.

Page cache: with `mfswritecache` the kernel buffers writes (write-back cache) and sends
them in 1 MiB requests. With `mfscachemode=AUTO` (default) an open keeps the kernel's
cached pages when the file's (mtime, size) is what it was when the pages were cached, as
MooseFS does.

Durability: `flush` (every close) and `fsync` return once the data is acknowledged by the
whole chunkserver chain and the master has journaled the new length (`WriteChunkEnd`);
`fsync` also has every chunk written since the last fsync synced to disk.

Errors: master errors are errno values and pass through; a master or chunkserver that is
unreachable is retried (with backoff) for `mfsioretries` seconds, then EIO.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import os
import stat

import pyfuse3

from ..client.client import CHUNK_SIZE, Client, File
from ..proto import messages as m
from ..proto.errors import NO_SERVERS, FsError
from .options import MountOptions

log = logging.getLogger("elkfs.mount")

ROOT = pyfuse3.ROOT_INODE
MASTERINFO_NAME = b".masterinfo"
MASTERINFO_INODE = 0x7FFFFFFFFFFFFFF0
BLKSIZE = 1 << 16
RA_BLOCK = 2 << 20
KNOWN_MAX = 200_000


def _errno(e: FsError) -> int:
    if e.status == NO_SERVERS:
        return errno.ENOSPC
    return e.errno


class InodeState:
    """What the mount knows about an open inode."""

    __slots__ = ("inode", "opens", "writer", "size", "gen", "writes")

    def __init__(self, inode: int):
        self.inode = inode
        self.opens = 0
        self.writer: File | None = None
        self.size = -1  # local size while writes are not committed; -1: ask the master
        self.gen = 0  # bumped on every local change of the data
        self.writes = 0


class Handle:
    __slots__ = ("inode", "flags", "reader")

    def __init__(self, inode: int, flags: int, reader: "Reader"):
        self.inode = inode
        self.flags = flags
        self.reader = reader


class Reader:
    """Reads of one open handle: cached chunk locations and sequential read-ahead."""

    def __init__(self, client: Client, state: InodeState, ra_blocks: int):
        self.file = File(client, state.inode)
        self.state = state
        self.gen = state.gen
        self.length = -1
        self.next_off = -1
        self.streak = 0
        self.ra_blocks = ra_blocks
        self.blocks: dict[int, asyncio.Task] = {}

    def invalidate(self) -> None:
        self.file._locations.clear()
        self.length = -1
        self.drop_blocks()

    def drop_blocks(self) -> None:
        self.blocks.clear()

    async def _length(self, index: int, refresh: bool) -> int:
        chunk = await self.file._chunk_for_read(index, refresh)
        self.length = chunk.file_length
        return self.length

    def _block(self, b: int) -> asyncio.Task:
        t = self.blocks.get(b)
        if t is None:
            start = b * RA_BLOCK
            size = max(0, min(RA_BLOCK, self.length - start))
            t = asyncio.ensure_future(self.file.read_range(start, size))
            t.add_done_callback(_retrieve)
            self.blocks[b] = t
        return t

    async def read(self, offset: int, size: int) -> bytes:
        if self.gen != self.state.gen:
            self.gen = self.state.gen
            self.invalidate()
        if self.length < 0 or offset + size > self.length:
            await self._length(offset // CHUNK_SIZE, refresh=True)
        if offset >= self.length or size <= 0:
            return b""
        size = min(size, self.length - offset)
        # The kernel's read-ahead sends several requests at once, not always in order:
        # "sequential" means near where the previous reads ended.
        near = self.next_off - 2 * RA_BLOCK <= offset <= self.next_off + 2 * RA_BLOCK
        if near:
            self.next_off = max(self.next_off, offset + size)
            self.streak += 1
        else:
            self.next_off = offset + size
            self.streak = 0
        if self.ra_blocks == 0 or (self.streak < 2 and size < RA_BLOCK // 2):
            return bytes(await self.file.read_range(offset, size))
        first, last = offset // RA_BLOCK, (offset + size - 1) // RA_BLOCK
        ahead = min(self.ra_blocks, 1 + self.streak // 2)
        end_block = (self.length - 1) // RA_BLOCK
        for b in [b for b in self.blocks if b < first - 1 or b > last + self.ra_blocks + 2]:
            self.blocks.pop(b)  # not cancelled: a concurrent read may still wait for it
        for b in range(first, min(last + ahead, end_block) + 1):
            self._block(b)
        parts = []
        for b in range(first, last + 1):
            data = await self._block(b)
            lo = max(offset, b * RA_BLOCK) - b * RA_BLOCK
            hi = min(offset + size, b * RA_BLOCK + len(data)) - b * RA_BLOCK
            parts.append(memoryview(data)[lo:hi])
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _always_reply(fn):
    """pyfuse3 answers a request only when its handler returns or raises FUSEError: turn
    every other failure into EIO (logged), so no system call ever waits forever."""

    @functools.wraps(fn)
    async def handler(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as e:
            raise pyfuse3.FUSEError(_errno(e)) from None
        except asyncio.CancelledError:
            log.warning("%s: cancelled", fn.__name__)
            raise pyfuse3.FUSEError(errno.EINTR) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


class ElkOperations(pyfuse3.Operations):
    supports_dot_lookup = True

    def __init__(self, client: Client, opts: MountOptions, root_inode: int = 1):
        super().__init__()
        self.client = client
        self.opts = opts
        self.enable_writeback_cache = opts.write_cache
        self.root = root_inode
        self.states: dict[int, InodeState] = {}
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, list] = {}
        self.next_fh = 1
        self.known: dict[int, tuple[int, int]] = {}  # inode -> (mtime, size) last seen
        self.cached: dict[int, tuple[int, int]] = {}  # inode -> (mtime, size) of cached pages
        self.ra_blocks = max(0, opts.readahead_mib * (1 << 20) // RA_BLOCK)
        self.background: set[asyncio.Task] = set()
        self.masterinfo = json.dumps({
            "host": client.link.host, "port": client.link.port, "subfolder": opts.subfolder,
            "root_inode": root_inode, "mountpoint": os.path.abspath(opts.mountpoint),
            "pid": os.getpid(),
        }).encode() + b"\n"

    # ------------------------------------------------------------ helpers

    def _m(self, inode: int) -> int:
        return self.root if inode == ROOT else inode

    def _k(self, inode: int) -> int:
        return ROOT if inode == self.root else inode

    async def _op(self, op: m.Op):
        try:
            return await self.client.op(op)
        except FsError as e:
            raise pyfuse3.FUSEError(_errno(e)) from None

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background request failed: %s", task.exception())

    def _fire(self, op: m.Op) -> None:
        """Send an op whose answer nobody waits for (it still goes out in order)."""
        self._spawn(self.client.op(op))

    def _entry(self, attr: m.Attr, entry_timeout: float | None = None) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        inode = attr.inode
        size = attr.size
        st = self.states.get(inode)
        if st is not None and st.size > size:
            size = st.size
        e.st_ino = self._k(inode)
        e.generation = 0
        e.entry_timeout = self.opts.entry_timeout if entry_timeout is None else entry_timeout
        e.attr_timeout = self.opts.attr_timeout
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) // 512
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        if stat.S_ISREG(attr.mode):
            if len(self.known) > KNOWN_MAX:
                self.known.clear()
            self.known[inode] = (attr.mtime_ns, attr.size)
        return e

    def _masterinfo_entry(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = MASTERINFO_INODE
        e.entry_timeout = e.attr_timeout = 3600
        e.st_mode = stat.S_IFREG | 0o444
        e.st_nlink = 1
        e.st_size = len(self.masterinfo)
        e.st_blksize = BLKSIZE
        return e

    def _state(self, inode: int) -> InodeState:
        st = self.states.get(inode)
        if st is None:
            st = self.states[inode] = InodeState(inode)
        return st

    # ------------------------------------------------------------ lookups and attributes

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._m(parent_inode)
        if parent == self.root and name == MASTERINFO_NAME:
            return self._masterinfo_entry()
        try:
            out = await self.client.op(m.Lookup(parent, name))
        except FsError as e:
            if e.status == errno.ENOENT and self.opts.neg_entry_timeout > 0:
                neg = pyfuse3.EntryAttributes()
                neg.st_ino = 0
                neg.entry_timeout = self.opts.neg_entry_timeout
                return neg
            raise pyfuse3.FUSEError(_errno(e)) from None
        return self._entry(out.attr)

    async def getattr(self, inode, ctx=None):
        if inode == MASTERINFO_INODE:
            return self._masterinfo_entry()
        return self._entry((await self._op(m.GetAttr(self._m(inode)))).attr)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode == MASTERINFO_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        ino = self._m(inode)
        out = None
        if fields.update_size:
            st = self.states.get(ino)
            if st is not None and st.writer is not None:
                await self._flush_writer(st)
            out = await self._op(m.Truncate(ino, attr.st_size))
            if st is not None:
                st.size = -1
                st.gen += 1
        valid = 0
        if fields.update_mode:
            valid |= m.SET_MODE
        if fields.update_uid:
            valid |= m.SET_UID
        if fields.update_gid:
            valid |= m.SET_GID
        if fields.update_atime:
            valid |= m.SET_ATIME
        if fields.update_mtime:
            valid |= m.SET_MTIME
        if fields.update_ctime:
            valid |= m.SET_CTIME
        if valid or out is None:
            out = await self._op(m.SetAttr(ino, valid, attr.st_mode, attr.st_uid, attr.st_gid,
                                           attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns))
        return self._entry(out.attr)

    async def readlink(self, inode, ctx):
        return (await self._op(m.ReadLink(self._m(inode)))).value

    async def access(self, inode, mode, ctx):
        return  # default_permissions: the kernel checks

    async def statfs(self, ctx):
        out = await self._op(m.StatFs())
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = BLKSIZE
        s.f_blocks = out.total_bytes // BLKSIZE
        s.f_bfree = out.avail_bytes // BLKSIZE
        s.f_bavail = out.avail_bytes // BLKSIZE
        s.f_files = out.inodes + (1 << 31)
        s.f_ffree = 1 << 31
        s.f_favail = 1 << 31
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------ namespace changes

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        mode = (mode & ~ctx.umask & 0o7777) | stat.S_IFMT(mode)
        out = await self._op(m.Mknod(self._m(parent_inode), name, mode, ctx.uid, ctx.gid, rdev))
        return self._entry(out.attr)

    async def mkdir(self, parent_inode, name, mode, ctx):
        out = await self._op(m.Mkdir(self._m(parent_inode), name, mode & ~ctx.umask & 0o7777,
                                     ctx.uid, ctx.gid))
        return self._entry(out.attr)

    async def symlink(self, parent_inode, name, target, ctx):
        out = await self._op(m.Symlink(self._m(parent_inode), name, target, ctx.uid, ctx.gid))
        return self._entry(out.attr)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        if inode == MASTERINFO_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        out = await self._op(m.Link(self._m(inode), self._m(new_parent_inode), new_name))
        return self._entry(out.attr)

    async def unlink(self, parent_inode, name, ctx):
        parent = self._m(parent_inode)
        if parent == self.root and name == MASTERINFO_NAME:
            raise pyfuse3.FUSEError(errno.EPERM)
        await self._op(m.Unlink(parent, name))

    async def rmdir(self, parent_inode, name, ctx):
        await self._op(m.Rmdir(self._m(parent_inode), name))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._op(m.Rename(self._m(parent_inode_old), name_old, self._m(parent_inode_new),
                                name_new, flags))

    # ------------------------------------------------------------ extended attributes

    async def getxattr(self, inode, name, ctx):
        if inode == MASTERINFO_INODE:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return (await self._op(m.GetXattr(self._m(inode), name))).value

    async def listxattr(self, inode, ctx):
        if inode == MASTERINFO_INODE:
            return []
        return (await self._op(m.ListXattr(self._m(inode)))).names

    async def setxattr(self, inode, name, value, ctx):
        if inode == MASTERINFO_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        await self._op(m.SetXattr(self._m(inode), name, value))

    async def removexattr(self, inode, name, ctx):
        if inode == MASTERINFO_INODE:
            raise pyfuse3.FUSEError(errno.EPERM)
        await self._op(m.RemoveXattr(self._m(inode), name))

    # ------------------------------------------------------------ directories

    async def opendir(self, inode, ctx):
        fh = self.next_fh
        self.next_fh += 1
        self.dirs[fh] = [self._m(inode), [], 0]  # inode, entries loaded, next master offset
        return fh

    async def readdir(self, fh, start_id, token):
        d = self.dirs[fh]
        inode, entries = d[0], d[1]
        i = start_id
        while True:
            if i >= len(entries):
                if d[2] < 0:
                    return
                out = await self._op(m.ReadDir(inode, d[2], 1000))
                entries.extend(out.entries)
                d[2] = out.next_offset
                if i >= len(entries):
                    return
            ent = entries[i]
            if not pyfuse3.readdir_reply(token, ent.name, self._entry(ent.attr), i + 1):
                return
            i += 1

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        return

    # ------------------------------------------------------------ files

    def _new_handle(self, inode: int, flags: int) -> tuple[int, bool]:
        st = self._state(inode)
        st.opens += 1
        if st.opens == 1:
            self._fire(m.Acquire(inode))
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(inode, flags, Reader(self.client, st, self.ra_blocks))
        if self.opts.cache_mode == "YES":
            keep = True
        elif self.opts.cache_mode == "AUTO":
            sig = self.cached.get(inode)
            keep = sig is not None and sig == self.known.get(inode)
        else:
            keep = False
        return fh, keep

    def _file_info(self, fh: int, keep: bool) -> pyfuse3.FileInfo:
        fi = pyfuse3.FileInfo(fh=fh)
        fi.keep_cache = keep
        fi.direct_io = self.opts.cache_mode == "DIRECT"
        return fi

    async def open(self, inode, flags, ctx):
        if inode == MASTERINFO_INODE:
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise pyfuse3.FUSEError(errno.EACCES)
            fi = pyfuse3.FileInfo(fh=0)
            fi.direct_io = True
            return fi
        ino = self._m(inode)
        if flags & os.O_TRUNC:
            # libfuse asks the kernel for atomic O_TRUNC: the truncation is ours to do.
            st = self.states.get(ino)
            if st is not None and st.writer is not None:
                await self._flush_writer(st)
            self._entry((await self._op(m.Truncate(ino, 0))).attr)
            if st is not None:
                st.size = -1
                st.gen += 1
        fh, keep = self._new_handle(ino, flags)
        return self._file_info(fh, keep and not flags & os.O_TRUNC)

    async def create(self, parent_inode, name, mode, flags, ctx):
        mode = stat.S_IFREG | (mode & ~ctx.umask & 0o7777)
        out = await self._op(m.Mknod(self._m(parent_inode), name, mode, ctx.uid, ctx.gid))
        entry = self._entry(out.attr)
        fh, _ = self._new_handle(out.attr.inode, flags)
        return self._file_info(fh, True), entry

    async def read(self, fh, off, size):
        if fh == 0:
            return self.masterinfo[off:off + size]
        h = self.handles[fh]
        st = self.states[h.inode]
        if st.writer is not None and st.writer.dirty:
            await self._flush_writer(st)
        try:
            return await h.reader.read(off, size)
        except FsError as e:
            raise pyfuse3.FUSEError(_errno(e)) from None

    async def write(self, fh, off, buf):
        h = self.handles[fh]
        st = self.states[h.inode]
        if st.writer is None:
            st.writer = File(self.client, h.inode)
        try:
            await st.writer.write(off, buf)
        except FsError as e:
            raise pyfuse3.FUSEError(_errno(e)) from None
        end = off + len(buf)
        if end > st.size:
            if st.size < 0:
                st.size = max(end, self.known.get(h.inode, (0, 0))[1])
            else:
                st.size = end
        st.gen += 1
        st.writes += 1
        return len(buf)

    async def _flush_writer(self, st: InodeState, sync: bool = False) -> None:
        w = st.writer
        if w is None:
            return
        try:
            if sync:
                await w.fsync()
            else:
                await w.flush()
        except FsError as e:
            raise pyfuse3.FUSEError(_errno(e)) from None
        if w.last_attr is not None:
            self._entry(w.last_attr)  # remember the committed (mtime, size)
            if not w.dirty:
                st.size = -1

    async def flush(self, fh):
        await self._flush_handle(fh, sync=False)

    async def fsync(self, fh, datasync):
        await self._flush_handle(fh, sync=True)

    async def _flush_handle(self, fh, sync: bool) -> None:
        h = self.handles.get(fh) if fh else None
        st = self.states.get(h.inode) if h is not None else None
        if st is not None:
            await self._flush_writer(st, sync=sync)

    async def release(self, fh):
        if fh == 0:
            return
        h = self.handles.pop(fh, None)
        if h is None:
            return
        h.reader.drop_blocks()
        st = self.states.get(h.inode)
        if st is None:
            return
        st.opens -= 1
        if st.opens > 0:
            return
        try:
            await self._flush_writer(st)
        except pyfuse3.FUSEError as e:
            log.warning("inode %d: data lost at close: %s", h.inode, os.strerror(e.errno))
        del self.states[h.inode]
        # The pages the kernel keeps now are those of this (mtime, size).
        sig = self.known.get(h.inode)
        if sig is not None:
            if len(self.cached) > KNOWN_MAX:
                self.cached.clear()
            self.cached[h.inode] = sig
        self._fire(m.Release(h.inode))

    async def forget(self, inode_list):
        return

    # ------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        for st in list(self.states.values()):
            try:
                await self._flush_writer(st)
            except Exception as e:
                log.warning("inode %d: flush at unmount failed: %s", st.inode, e)
        if self.background:
            await asyncio.wait(list(self.background), timeout=10)


_HANDLERS = ("lookup", "getattr", "setattr", "readlink", "access", "statfs", "mknod", "mkdir",
             "symlink", "link", "unlink", "rmdir", "rename", "getxattr", "listxattr",
             "setxattr", "removexattr", "opendir", "readdir", "releasedir", "fsyncdir", "open",
             "create", "read", "write", "flush", "fsync", "release")
for _name in _HANDLERS:
    setattr(ElkOperations, _name, _always_reply(getattr(ElkOperations, _name)))
