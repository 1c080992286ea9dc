"""The ElkFS client library: an async API over the master and the chunkservers.

    client = await Client.connect("127.0.1.10", 9421)
    await client.mkdir("/photos")
    f = await client.create("/photos/a.jpg")
    await f.write(0, data); await f.close()

Metadata goes to the master (`MasterLink`), data straight to and from chunkservers
(`chunkio`). Paths are resolved with `Lookup` from the root; the inode-level methods
(`op`, `open_inode`) are what the FUSE mount uses.

Writes are streamed: a `File` keeps one chunk open for writing (`WriteChunk` at the master,
a write session on the chain) while the application writes into it sequentially; small
writes are coalesced into pieces of up to 1 MiB. The chunk is closed (`WriteChunkEnd`,
which records the new length) when the writer moves to another chunk, reads, flushes,
fsyncs or closes. If the chain fails mid-write, the chunk is reopened (new version, the
copies still alive) and everything written in the session is sent again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time

from .. import access
from ..proto import messages as m
from ..proto import rpc
from ..proto.errors import CHUNK_LOCKED, NO_SERVERS, FsError
from ..proto.layout import CHUNK_SIZE, MAX_FILE_SIZE
from ..proto.password import password_digest
from .chunkio import (STALE_LOCATION, TOKEN_REFUSALS, WRITE_PIECE, ChunkWriter,
                      ConnectionPool, read_chunk)
from .master_link import DEFAULT_MASTER_PORT, MasterLink

log = logging.getLogger("elkfs.client")

ROOT = 1
COALESCE = 1 << 20
SPLIT_READ_MIN = 2 << 20  # reads of at least twice this are spread over the copies


def password_digest_of(password: str | None, md5pass: str | None) -> bytes | None:
    """The MD5 of an export's password (from the password, or `md5pass` in hex)."""
    if md5pass:
        try:
            digest = bytes.fromhex(md5pass)
        except ValueError:
            digest = b""
        if len(digest) != 16:
            raise FsError(errno.EINVAL, "md5pass must be 32 hexadecimal digits")
        return digest
    return password_digest(os.fsencode(password)) if password is not None else None


class Client:
    """`uid`, `gid`, `groups`: who the requests are made for (the master checks every
    one against them); by default the process's own."""

    def __init__(self, link: MasterLink, io_retry_s: float = 30.0, uid: int | None = None,
                 gid: int | None = None, groups=None):
        self.link = link
        self.pool = ConnectionPool()
        self.io_retry_s = io_retry_s
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        if uid is not None or gid is not None or groups is not None:
            link.identity = access.Who(self.uid, self.gid,
                                       os.getgroups() if groups is None else groups)

    @classmethod
    async def connect(cls, host: str, port: int = DEFAULT_MASTER_PORT, info: str = "",
                      retry_s: float = 30.0, dns_server: str | None = None,
                      subfolder: str = "/", password: str | None = None,
                      md5pass: str | None = None, meta: bool = False,
                      bind: str | None = None, uid: int | None = None,
                      gid: int | None = None, groups=None,
                      attach=None) -> "Client":
        """Connect to the master at `host` (an address, or a name whose A records are the
        masters: the client finds the leader and follows it). `subfolder` becomes the
        root of every path; `password` (or its MD5 in hex, `md5pass`) for an export that
        asks for one; `meta`: the meta file system (the trash) only; `bind`: the local
        address to connect to the master from; `attach`: a client tool riding on a
        mount's session (`MasterLink.attach`)."""
        link = MasterLink(host, port, info or f"elkfs client pid {os.getpid()}", retry_s,
                          dns_server=dns_server, path=subfolder, meta=meta,
                          password_digest=password_digest_of(password, md5pass), bind=bind,
                          attach=attach)
        await link.connect()
        return cls(link, retry_s, uid, gid, groups)

    async def close(self) -> None:
        self.pool.close()
        await self.link.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # ------------------------------------------------------------ inode level

    async def op(self, op: m.Op):
        return await self.link.request(op)

    async def lookup(self, parent: int, name: bytes) -> m.Attr:
        return (await self.op(m.Lookup(parent, name))).attr

    async def getattr_inode(self, inode: int) -> m.Attr:
        return (await self.op(m.GetAttr(inode))).attr

    async def readdir_inode(self, inode: int) -> list[m.DirEntry]:
        return [e async for page in self.readdir_pages(inode) for e in page]

    async def readdir_pages(self, inode: int, page_size: int = 1000):
        """The directory's entries, a page at a time, in name order; each page resumes
        after the last name of the one before, so an entry that stays in the directory is
        seen exactly once however the directory changes meanwhile."""
        after = b""
        while True:
            out = await self.op(m.ReadDir(inode, 0, page_size, after))
            if out.entries:
                yield out.entries
                after = out.entries[-1].name
            if out.next_offset < 0 or not out.entries:
                return

    def open_inode(self, inode: int) -> "File":
        return File(self, inode)

    # ------------------------------------------------------------ paths

    @staticmethod
    def _split(path: str) -> list[bytes]:
        return [os.fsencode(p) for p in path.split("/") if p and p != "."]

    async def resolve(self, path: str) -> m.Attr:
        attr = await self.getattr_inode(self.link.root)
        for part in self._split(path):
            attr = await self.lookup(attr.inode, part)
        return attr

    async def _parent(self, path: str) -> tuple[int, bytes]:
        parts = self._split(path)
        if not parts:
            raise FsError(errno.EINVAL, "the root has no parent")
        inode = self.link.root
        for part in parts[:-1]:
            inode = (await self.lookup(inode, part)).inode
        return inode, parts[-1]

    async def stat(self, path: str) -> m.Attr:
        return await self.resolve(path)

    async def exists(self, path: str) -> bool:
        try:
            await self.resolve(path)
            return True
        except FsError as e:
            if e.status == errno.ENOENT:
                return False
            raise

    async def mkdir(self, path: str, mode: int = 0o755) -> m.Attr:
        parent, name = await self._parent(path)
        return (await self.op(m.Mkdir(parent, name, mode, self.uid, self.gid))).attr

    async def makedirs(self, path: str, mode: int = 0o755) -> m.Attr:
        inode = self.link.root
        attr = await self.getattr_inode(self.link.root)
        for part in self._split(path):
            try:
                attr = await self.lookup(inode, part)
            except FsError as e:
                if e.status != errno.ENOENT:
                    raise
                attr = (await self.op(m.Mkdir(inode, part, mode, self.uid, self.gid))).attr
            inode = attr.inode
        return attr

    async def mknod(self, path: str, mode: int, rdev: int = 0) -> m.Attr:
        parent, name = await self._parent(path)
        return (await self.op(m.Mknod(parent, name, mode, self.uid, self.gid, rdev))).attr

    async def create(self, path: str, mode: int = 0o644, exclusive: bool = False) -> "File":
        """Create (or, unless `exclusive`, truncate) a regular file and open it."""
        parent, name = await self._parent(path)
        try:
            attr = (await self.op(m.Mknod(parent, name, stat.S_IFREG | mode, self.uid,
                                          self.gid, acquire=True))).attr
        except FsError as e:
            if e.status != errno.EEXIST or exclusive:
                raise
            attr = await self.lookup(parent, name)
            if stat.S_ISDIR(attr.mode):
                raise FsError(errno.EISDIR) from None
            await self.op(m.Truncate(attr.inode, 0))
            return await self._opened(attr.inode)
        f = File(self, attr.inode)
        f.acquired = True  # the Mknod opened it
        return f

    async def open(self, path: str, write: bool = True) -> "File":
        """Open for reading and (unless not `write`) writing: the master checks that the
        caller may."""
        attr = await self.resolve(path)
        if stat.S_ISDIR(attr.mode):
            raise FsError(errno.EISDIR)
        return await self._opened(attr.inode, access.R | access.W if write else access.R)

    async def _opened(self, inode: int, want: int = access.R | access.W) -> "File":
        await self.op(m.Acquire(inode, want))
        f = File(self, inode)
        f.acquired = True
        return f

    async def listdir(self, path: str) -> list[str]:
        attr = await self.resolve(path)
        return [os.fsdecode(e.name) for e in await self.readdir_inode(attr.inode)]

    async def readdir(self, path: str) -> list[m.DirEntry]:
        return await self.readdir_inode((await self.resolve(path)).inode)

    async def unlink(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self.op(m.Unlink(parent, name))

    async def rmdir(self, path: str) -> None:
        parent, name = await self._parent(path)
        await self.op(m.Rmdir(parent, name))

    async def rename(self, src: str, dst: str, flags: int = 0) -> None:
        sp, sn = await self._parent(src)
        dp, dn = await self._parent(dst)
        await self.op(m.Rename(sp, sn, dp, dn, flags))

    async def link(self, src: str, dst: str) -> m.Attr:
        inode = (await self.resolve(src)).inode
        parent, name = await self._parent(dst)
        return (await self.op(m.Link(inode, parent, name))).attr

    async def symlink(self, target: str, path: str) -> m.Attr:
        parent, name = await self._parent(path)
        return (await self.op(m.Symlink(parent, name, os.fsencode(target), self.uid,
                                        self.gid))).attr

    async def readlink(self, path: str) -> str:
        parent, name = await self._parent(path)
        attr = await self.lookup(parent, name)
        return os.fsdecode((await self.op(m.ReadLink(attr.inode))).value)

    async def setattr(self, path: str, **fields) -> m.Attr:
        inode = (await self.resolve(path)).inode
        return (await self.op(m.SetAttr(inode, **fields))).attr

    async def chmod(self, path: str, mode: int) -> m.Attr:
        return await self.setattr(path, valid=m.SET_MODE, mode=mode)

    async def chown(self, path: str, uid: int, gid: int) -> m.Attr:
        return await self.setattr(path, valid=m.SET_UID | m.SET_GID, uid=uid, gid=gid)

    async def utime(self, path: str, atime_ns: int, mtime_ns: int) -> m.Attr:
        return await self.setattr(path, valid=m.SET_ATIME | m.SET_MTIME, atime_ns=atime_ns,
                                  mtime_ns=mtime_ns)

    async def truncate(self, path: str, length: int) -> m.Attr:
        inode = (await self.resolve(path)).inode
        return (await self.op(m.Truncate(inode, length))).attr

    async def setxattr(self, path: str, name: bytes, value: bytes, flags: int = 0) -> None:
        inode = (await self.resolve(path)).inode
        await self.op(m.SetXattr(inode, name, value, flags))

    async def getxattr(self, path: str, name: bytes) -> bytes:
        inode = (await self.resolve(path)).inode
        return (await self.op(m.GetXattr(inode, name))).value

    async def listxattr(self, path: str) -> list[bytes]:
        inode = (await self.resolve(path)).inode
        return (await self.op(m.ListXattr(inode))).names

    async def removexattr(self, path: str, name: bytes) -> None:
        inode = (await self.resolve(path)).inode
        await self.op(m.RemoveXattr(inode, name))

    async def statfs(self) -> m.StatFsOut:
        return await self.op(m.StatFs())

    async def setgoal(self, path: str, goal: int, recursive: bool = False) -> m.Attr:
        inode = (await self.resolve(path)).inode
        return (await self.op(m.SetGoal(inode, goal, recursive))).attr

    async def getgoal(self, path: str) -> int:
        return (await self.resolve(path)).goal

    async def fileinfo(self, path: str) -> list[m.ChunkDesc]:
        inode = (await self.resolve(path)).inode
        return (await self.op(m.FileChunks(inode))).chunks

    async def cluster_info(self) -> dict:
        import json

        return json.loads((await self.op(m.ClusterInfo())).text)

    # ------------------------------------------------------------ snapshots and trash

    async def snapshot(self, src: str, dst: str) -> m.Attr:
        """Lazy copy of a file or tree (mfsmakesnapshot): shares chunks until written.
        If `dst` is an existing directory the copy goes into it under the source's name."""
        inode = (await self.resolve(src)).inode
        try:
            attr = await self.resolve(dst)
        except FsError as e:
            if e.status != errno.ENOENT:
                raise
            attr = None
        if attr is not None and stat.S_ISDIR(attr.mode):
            parent, name = attr.inode, self._split(src)[-1] if self._split(src) else b""
        else:
            parent, name = await self._parent(dst)
        return (await self.op(m.Snapshot(inode, parent, name, self.uid, self.gid))).attr

    async def settrashtime(self, path: str, seconds: int, recursive: bool = False) -> m.Attr:
        inode = (await self.resolve(path)).inode
        return (await self.op(m.SetTrashTime(inode, seconds, recursive))).attr

    async def gettrashtime(self, path: str) -> int:
        return (await self.resolve(path)).trashtime

    async def list_trash(self) -> list[m.TrashEntry]:
        entries: list[m.TrashEntry] = []
        offset = 0
        while offset >= 0:
            out = await self.op(m.ListTrash(offset, 1000))
            entries.extend(out.entries)
            offset = out.next_offset
        return entries

    async def undelete(self, inode: int) -> m.Attr:
        """Put a trash file back at its old path."""
        return (await self.op(m.Undelete(inode))).attr

    async def purge_trash(self, inodes: list[int]) -> None:
        await self.op(m.PurgeTrash(list(inodes)))

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        f = await self.create(path, mode)
        try:
            await f.write(0, data)
        finally:
            await f.close()

    async def read_file(self, path: str) -> bytes:
        f = await self.open(path, write=False)
        try:
            length = (await self.getattr_inode(f.inode)).size
            return await f.read(0, length)
        finally:
            await f.close()


def _retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # marks it retrieved: no "never retrieved" warning at exit


def _out_of_space(e: BaseException) -> bool:
    return isinstance(e, (FsError, OSError)) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class _OpenChunk:
    """The chunk a File is writing into: its chain session and everything sent to it.

    The master's answer to `WriteChunk` (`chunk`, `writer`) is not waited for when the
    chunk is opened: small writes are kept in `pending` meanwhile, so the kernel's WRITE
    is answered at once and the trip to the master overlaps what the application does
    next (typically close). Whoever needs the answer awaits `ready()`; a failure to open
    comes out there, at the next write that sends data or at flush/close, as write-back
    errors do."""

    def __init__(self, index: int, opening: asyncio.Future):
        self.index = index
        self.opening = opening  # -> (chunk, writer)
        self.chunk: m.ChunkOut | None = None
        self.writer: ChunkWriter | None = None
        self.sent: list[tuple[int, bytes]] = []  # (offset in chunk, data), for replays
        self.end = 0  # highest byte written, relative to the chunk
        self.pending_off = 0
        self.pending = bytearray()

    async def ready(self) -> None:
        if self.writer is None:
            if not self.opening.done():
                # Shielded: a cancelled waiter must not cancel the WriteChunk, whose
                # answer (and chunk lock) the close still needs.
                await asyncio.shield(self.opening)
            self.chunk, self.writer = self.opening.result()


class File:
    """An open regular file. Not safe for concurrent writers within one File; use one
    File per writer (the master serialises writers of one chunk)."""

    def __init__(self, client: Client, inode: int):
        self.client = client
        self.inode = inode
        self.acquired = False
        self._open: _OpenChunk | None = None
        self._lock = asyncio.Lock()
        self._locations: dict[int, m.ChunkOut] = {}
        self.unsynced: set[int] = set()  # chunks closed without sync since the last fsync
        self.last_attr: m.Attr | None = None  # attributes after the last WriteChunkEnd
        # When a retry window of this file last ran out with nothing working: the calls
        # that follow at once (the kernel reads again a page whose read-ahead failed, a
        # close after a failed write) fail at their first error instead of waiting a
        # second window, until something works again or a window has passed.
        self._gave_up_at = float("-inf")

    def _retry_deadline(self) -> float:
        """Until when a failing step is retried: `io_retry_s` (mfsioretries) from now,
        or not at all just after a window ran out."""
        now = time.monotonic()
        if now - self._gave_up_at < self.client.io_retry_s:
            return now
        return now + self.client.io_retry_s

    def _worked(self) -> None:
        self._gave_up_at = float("-inf")

    def _give_up(self) -> None:
        self._gave_up_at = time.monotonic()

    # ------------------------------------------------------------ writing

    async def write(self, offset: int, data) -> int:
        if offset < 0:
            raise FsError(errno.EINVAL)
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)  # here, not at the close (the chunk is not waited for)
        data = bytes(data) if not isinstance(data, bytes) else data
        async with self._lock:
            pos = 0
            while pos < len(data):
                index, in_chunk = divmod(offset + pos, CHUNK_SIZE)
                take = min(len(data) - pos, CHUNK_SIZE - in_chunk)
                oc = await self._chunk_for_write(index)
                await self._queue(oc, in_chunk, data[pos:pos + take])
                pos += take
        return len(data)

    async def _chunk_for_write(self, index: int) -> _OpenChunk:
        if self._open is not None and self._open.index == index:
            return self._open
        await self._close_chunk(sync=False)
        opening = asyncio.ensure_future(self._open_chunk(index))
        opening.add_done_callback(_retrieved)  # a failure is raised where it is awaited
        self._open = _OpenChunk(index, opening)
        return self._open

    async def _ready(self, oc: _OpenChunk) -> None:
        """Wait for the master's answer to the chunk's WriteChunk; if it failed, the
        chunk is not open any more (the data kept for it is lost, as the error says)."""
        try:
            await oc.ready()
        except BaseException:
            if self._open is oc:
                self._open = None
            raise

    async def _open_chunk(self, index: int,
                          connect: bool = False) -> tuple[m.ChunkOut, ChunkWriter]:
        """WriteChunk, retried. With `connect` the chain session is opened too (and
        retried with it); else it opens with the first data sent, or a small session
        goes as one message at the close (`ChunkWriter.write_once`)."""
        deadline = self._retry_deadline()
        delay = 0.1
        while True:
            try:
                chunk = await self.client.op(m.WriteChunk(self.inode, index))
                writer = ChunkWriter(chunk.locations, chunk.chunk_id, chunk.version,
                                     self.client.pool, chunk.create, chunk.token)
                if connect:
                    try:
                        await writer.open()
                    except BaseException:
                        writer.close()
                        await self._end_chunk(index, chunk.chunk_id, 0, ok=False)
                        raise
                self._locations.pop(index, None)
                self._worked()
                return chunk, writer
            except (FsError, OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                retriable = not isinstance(e, FsError) or e.status in (
                    errno.EIO, CHUNK_LOCKED, NO_SERVERS, errno.ETIMEDOUT) or e.status >= 1000
                if not retriable or time.monotonic() + delay > deadline:
                    if retriable:
                        self._give_up()
                    if isinstance(e, FsError) and e.status < 1000:
                        raise
                    # No chunkserver reachable (NO_SERVERS), or none answering: EIO (a
                    # full cluster is ENOSPC, from the master, at once).
                    raise FsError(errno.EIO, f"cannot open chunk {index} for writing: {e}") from None
                log.info("opening chunk %d of inode %d for writing failed (%s); retrying",
                         index, self.inode, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _end_chunk(self, index: int, chunk_id: int, length: int,
                         ok: bool = True) -> m.Attr:
        return (await self.client.op(m.WriteChunkEnd(self.inode, index, chunk_id, length,
                                                     ok))).attr

    async def _queue(self, oc: _OpenChunk, offset: int, data: bytes) -> None:
        if oc.pending and offset == oc.pending_off + len(oc.pending) \
                and len(oc.pending) + len(data) <= COALESCE:
            oc.pending += data
            return
        await self._send_pending(oc)
        if len(data) >= COALESCE:
            await self._send(oc, offset, data)
        else:
            oc.pending_off = offset
            oc.pending = bytearray(data)

    async def _send_pending(self, oc: _OpenChunk) -> None:
        if oc.pending:
            data, oc.pending = bytes(oc.pending), bytearray()
            await self._send(oc, oc.pending_off, data)

    async def _send(self, oc: _OpenChunk, offset: int, data: bytes) -> None:
        await self._ready(oc)
        oc.sent.append((offset, data))
        oc.end = max(oc.end, offset + len(data))
        try:
            if not oc.writer.opened:
                await oc.writer.open()
            await oc.writer.write(offset, data)
        except (FsError, OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
            if _out_of_space(e) and not oc.chunk.create:
                await self._abandon(oc)
                raise FsError(errno.ENOSPC, f"chunkserver out of space: {e}") from None
            await self._recover(oc, e)

    async def _abandon(self, oc: _OpenChunk) -> None:
        """Give up the chunk session (a full chunkserver: another chain would not help);
        the file keeps the length it had."""
        self._open = None
        oc.writer.close()
        await self._end_chunk(oc.index, oc.chunk.chunk_id, 0, ok=False)

    async def _recover(self, oc: _OpenChunk, error: Exception) -> None:
        """The chain failed: reopen the chunk (new version, surviving copies) and send
        everything written in this session again, as often as the new chain fails too
        within the I/O retry window; then EIO (never the socket's own error, which would
        reach the application as a strange errno). A new chunk's session that found a
        chunkserver full comes here too: the master makes the chunk again where there is
        room, or answers ENOSPC when there is none."""
        deadline = time.monotonic() + self.client.io_retry_s
        while True:
            log.warning("write to chunk %016X failed (%s); replaying on a new chain",
                        oc.chunk.chunk_id, error)
            oc.writer.close()
            await self._end_chunk(oc.index, oc.chunk.chunk_id, 0, ok=False)
            try:
                oc.chunk, oc.writer = await self._open_chunk(oc.index, connect=True)
            except FsError as e:
                if _out_of_space(e):
                    self._open = None  # nowhere to write it: the file keeps its length
                raise
            try:
                for offset, data in oc.sent:
                    await oc.writer.write(offset, data)
                return
            except (FsError, OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                if _out_of_space(e) or time.monotonic() > deadline:
                    self._open = None
                    oc.writer.close()
                    await self._end_chunk(oc.index, oc.chunk.chunk_id, 0, ok=False)
                    code = errno.ENOSPC if _out_of_space(e) else errno.EIO
                    raise FsError(code, f"write failed: {e}") from None
                error = e

    async def _close_chunk(self, sync: bool) -> None:
        oc = self._open
        if oc is None:
            return
        await self._ready(oc)
        for attempt in range(5):
            try:
                if not oc.writer.opened and len(oc.pending) <= WRITE_PIECE:
                    # Nothing sent yet and all of it fits one frame: one message.
                    data, oc.pending = bytes(oc.pending), bytearray()
                    oc.sent.append((oc.pending_off, data))
                    oc.end = max(oc.end, oc.pending_off + len(data))
                    await oc.writer.write_once(oc.pending_off, data, sync)
                else:
                    await self._send_pending(oc)
                    await oc.writer.finish(sync)
                break
            except (FsError, OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                if _out_of_space(e) and not oc.chunk.create:
                    await self._abandon(oc)
                    raise FsError(errno.ENOSPC, f"chunkserver out of space: {e}") from None
                if attempt == 4:
                    self._open = None
                    raise FsError(errno.EIO, f"write failed: {e}") from None
                await self._recover(oc, e)
        self._open = None
        if sync:
            self.unsynced.discard(oc.index)
        else:
            self.unsynced.add(oc.index)
        self.last_attr = await self._end_chunk(oc.index, oc.chunk.chunk_id,
                                               oc.index * CHUNK_SIZE + oc.end if oc.end else 0)

    @property
    def dirty(self) -> bool:
        """True while written data is not yet closed (not yet in the file's length)."""
        return self._open is not None

    async def _sync_chunk(self, index: int) -> None:
        """fsync a chunk written earlier without sync: an empty write session ended with
        sync on every copy."""
        chunk = await self.client.op(m.ReadChunk(self.inode, index))
        if chunk.chunk_id == 0:  # truncated away meanwhile
            return
        chunk, writer = await self._open_chunk(index, connect=True)
        try:
            await writer.finish(True)
        finally:
            writer.close()
            await self._end_chunk(index, chunk.chunk_id, 0)

    async def flush(self) -> None:
        async with self._lock:
            await self._close_chunk(sync=False)

    async def fsync(self) -> None:
        async with self._lock:
            await self._close_chunk(sync=True)
            for index in sorted(self.unsynced):
                await self._sync_chunk(index)
            self.unsynced.clear()

    # ------------------------------------------------------------ reading

    async def read(self, offset: int, size: int) -> bytes | bytearray:
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL)
        async with self._lock:
            await self._close_chunk(sync=False)
        if size == 0:
            return b""
        first = await self._chunk_for_read(offset // CHUNK_SIZE, refresh=True)  # fresh length
        length = first.file_length
        if offset >= length:
            return b""
        return await self.read_range(offset, min(size, length - offset))

    async def read_range(self, offset: int, size: int) -> bytearray:
        """Read `size` bytes at `offset`, all of them inside the file (the caller knows the
        length): every chunk the range touches is read at once. Returns a bytearray, so
        what may be many MiB is not copied again."""
        out = bytearray(size)
        view = memoryview(out)
        pos = 0
        jobs = []
        while pos < size:
            index, in_chunk = divmod(offset + pos, CHUNK_SIZE)
            take = min(size - pos, CHUNK_SIZE - in_chunk)
            jobs.append(self._read_piece(index, in_chunk, take, view[pos:pos + take]))
            pos += take
        if len(jobs) == 1:
            await jobs[0]
        else:
            await asyncio.gather(*jobs)
        return out

    async def _chunk_for_read(self, index: int, refresh: bool) -> m.ChunkOut:
        chunk = None if refresh else self._locations.get(index)
        if chunk is None:
            chunk = await self.client.op(m.ReadChunk(self.inode, index))
            self._locations[index] = chunk
        return chunk

    async def _read_piece(self, index: int, offset: int, size: int, out: memoryview) -> None:
        deadline = self._retry_deadline()
        delay = 0.1
        refresh = False
        fresh_token = fresh_location = False
        while True:
            chunk = await self._chunk_for_read(index, refresh)
            if chunk.chunk_id == 0:
                out[:] = bytes(size)  # a hole reads as zeros
                return
            try:
                if not chunk.locations:
                    raise FsError(errno.EIO, f"chunk {chunk.chunk_id:016X}: no copy available")
                await self._read_copies(chunk, offset, size, out)
                self._worked()
                return
            except FsError as e:
                if e.status in TOKEN_REFUSALS and not fresh_token:
                    # Expired (a location kept long), or the chunk changed since: a fresh
                    # location and token from the master, at once.
                    refresh = fresh_token = True
                    continue
                if e.status in STALE_LOCATION and not fresh_location:
                    # What we knew of the chunk is out of date (it was written since):
                    # ask again at once, once; a second refusal waits like any error.
                    refresh = fresh_location = True
                    continue
                if time.monotonic() + delay > deadline:
                    self._give_up()
                    raise
                log.info("read of inode %d chunk %d failed (%s); asking the master again",
                         self.inode, index, e)
                refresh = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _read_copies(self, chunk: m.ChunkOut, offset: int, size: int,
                           out: memoryview) -> None:
        """A large read is split over the copies, each part trying the others if its
        copy fails, so every chunkserver holding the chunk works at once."""
        locations = chunk.locations
        parts = max(1, min(len(locations), size // SPLIT_READ_MIN))
        step = -(-size // parts)
        jobs = []
        for i, start in enumerate(range(0, size, step)):
            end = min(size, start + step)
            order = locations[i % len(locations):] + locations[:i % len(locations)]
            jobs.append(read_chunk(self.client.pool, order, chunk.chunk_id, chunk.version,
                                   offset + start, end - start, out[start:end], chunk.token,
                                   lambda addr: self._bad_copy(chunk, addr)))
        await asyncio.gather(*jobs)

    def _bad_copy(self, chunk: m.ChunkOut, addr: m.Addr) -> None:
        """Tell the master (in the background) that a copy sent a block failing its CRC;
        the read goes on with the next copy meanwhile."""
        report = asyncio.ensure_future(self.client.op(m.BadCopy(chunk.chunk_id,
                                                                chunk.version, addr)))
        report.add_done_callback(_retrieved)

    # ------------------------------------------------------------ closing

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            if self.acquired:
                self.acquired = False
                await self.client.op(m.Release(self.inode))
