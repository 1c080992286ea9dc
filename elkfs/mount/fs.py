"""The FUSE file system: pyfuse3 `Operations` over the ElkFS client library.

Theory of operation
-------------------
Kernel inode numbers are the master's inode numbers (the mounted subfolder's inode shows
as 1), so no table maps them and `forget` has nothing to do.

Metadata: every change is one request to the master (`Client.op`), the master stays the
authority. The kernel caches entries and attributes for `entry_timeout`/`attr_timeout`
seconds (MooseFS defaults: 1 s); behind it the mount's `MetaCache` keeps attributes and
whole directory listings for the same times, so the kernel's own extra requests (the
LOOKUP of a name about to be created, the GETATTR of a directory just changed, a LOOKUP
whose entry expired) are answered without a master round trip. See `metacache.py` for what
that promises.

Open files: the mount keeps one `InodeState` per open inode, shared by all its handles:
the writer (`client.File`, which streams writes into one chunk at a time in large pieces)
and the local view of the size while written data is not yet committed. The master is
told about opens (`Acquire`, so an unlinked open file stays readable, whoever unlinks it)
at once and without waiting for the answer. A last close does not release the file at
once: the mount keeps it acquired for `HOLD_S` more seconds (at most `HELD_MAX` files, the
oldest released first). A file opened again meanwhile sends neither the Release nor a new
Acquire, and when its cached attributes survived (the master recalls them from this mount,
as from any mount holding the file open, before it acknowledges another session's change),
the open needs no trip to the master at all: a file read again, or written and read back,
costs only the kernel's requests. An open that wants more than the held one was granted
(write after read, exec) asks the master.

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
import time

import msgspec
import pyfuse3

from ..access import ACCESS as ACL_ACCESS
from ..access import DEFAULT as ACL_DEFAULT
from ..client.client import Client, File
from ..client.locking import set_lock
from ..client.master_link import caller
from ..proto import messages as m
from ..proto.errors import FsError
from ..master.filelocks import F_UNLCK, LOCK_FLOCK, LOCK_POSIX
from .dirents import pack_dirents
from .metacache import LISTING_MAX, MetaCache, bounded_put
from .openfiles import RA_BLOCK, Handle, InodeState, Reader
from .perms import (R, W, X, Caller, allowed, cacheable_children, check_hardlink,
                    check_setattr, check_special_use, denied, is_special, need, open_wants,
                    sticky_allows, xattr_wants)
from .options import MountOptions

log = logging.getLogger("elkfs.mount")

ROOT = pyfuse3.ROOT_INODE
MASTERINFO_NAME = b".masterinfo"
MASTERINFO_INODE = 0x7FFFFFFFFFFFFFF0
# The mount's session and tool token ("SESSION TOKEN" in hex), for the client tools to
# ride on the session (an export with a password): only on a mount with a password, and
# readable by root and the mount's owner only (checked here: the kernel checks nothing
# without default_permissions).
MASTERTOKEN_NAME = b".mastertoken"
MASTERTOKEN_INODE = MASTERINFO_INODE + 1
MASTERTOKEN_FH = 1 << 63  # never a real handle's number (those count from 1)
MASTERTOKEN_SIZE = 2 * 16 + 1 + 2 * 32 + 1
VIRTUAL_INODES = (MASTERINFO_INODE, MASTERTOKEN_INODE)
CAPABILITY = b"security.capability"
BLKSIZE = 1 << 16
NAME_MAX = 255
KNOWN_MAX = 200_000
_SETATTR_BITS = (("update_mode", m.SET_MODE), ("update_uid", m.SET_UID),
                 ("update_gid", m.SET_GID), ("update_atime", m.SET_ATIME),
                 ("update_mtime", m.SET_MTIME), ("update_ctime", m.SET_CTIME))
HOLD_S = 30.0  # seconds a file stays acquired after its last close here
HELD_MAX = 4096  # files held that way at most
HOLD_BATCH_S = 1.0  # a release also takes the files whose hold ends this much later
# A directory this mount holds no listing of is listed after the master said this many
# names were absent in it: the mount is working in it (creating there, most likely), and
# with the listing every later LOOKUP there is answered without a trip to the master.
# Such a listing is fetched only up to a smaller size, which bounds what a few lookups
# can cost the master; a recall drops it, and it is fetched again only after two more
# misses, so many mounts creating in one directory do not re-read it after every change.
MISSES_BEFORE_LISTING = 2
MISSED_LISTING_MAX = 1000
UNLISTABLE_S = 60.0  # a directory too big to keep a listing of is not fetched again for this long
PAGE = 1000  # directory entries per ReadDir of a listing
KERNEL_NAMES_MAX = 20_000  # names of one directory remembered as given to the kernel


class DirStream:
    """An open directory: the page of entries being listed, numbered from `start`
    (. and .. are 0 and 1), as parallel lists; `attrs` is None for a page asked for
    without attributes (for plain READDIR). A page resumes after the last name of the one
    before (`after`), and the next one after the last name of this one. `ahead`: that
    next page, asked for already (see `_next_page`)."""

    __slots__ = ("inode", "dots", "names", "inodes", "modes", "attrs", "after", "start",
                 "done", "ahead")

    def __init__(self, inode: int):
        self.inode = inode
        self.dots: list[m.DirEntry] | None = None
        self.ahead: asyncio.Future | None = None
        self.rewind()

    def rewind(self) -> None:
        self.drop_ahead()
        self.names: list[bytes] = []
        self.inodes: list[int] = []
        self.modes: list[int] = []
        self.attrs: list[m.Attr] | None = []
        self.after = b""
        self.start = 2
        self.done = False

    def take(self, out: m.DirOut | m.DirNamesOut, after: bytes, start: int) -> None:
        """The page `out` (resuming after `after`) is now this one, its first entry
        numbered `start`."""
        if type(out) is m.DirNamesOut:
            self.names, self.inodes, self.modes = out.names, out.inodes, out.modes
            self.attrs = None
        else:
            self.attrs = [e.attr for e in out.entries]
            self.names = [e.name for e in out.entries]
            self.inodes = [a.inode for a in self.attrs]
            self.modes = [a.mode for a in self.attrs]
        self.after = after
        self.start = start
        self.done = out.next_offset < 0 or not self.names

    def drop_ahead(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()
            self.ahead = None


def _invalidate_kernel_inode(inode: int, attr_only: bool) -> None:
    """From a thread: the kernel may wait for pages that requests being answered by the
    event loop hold."""
    try:
        pyfuse3.invalidate_inode(inode, attr_only)
    except OSError:
        pass  # the kernel does not know the inode (any more)


def _invalidate_kernel_entry(directory: int, name: bytes) -> None:
    try:
        pyfuse3.invalidate_entry(directory, name)
    except OSError:
        pass


def _retrieved(task: asyncio.Future) -> None:
    """A page asked for ahead may never be awaited (closed, rewound): its error is
    not news."""
    if not task.cancelled():
        task.exception()


def _errno(e: FsError) -> int:
    return e.errno  # ElkFS's own statuses (no chunkserver reachable, ...) are EIO


def _always_reply(fn):
    """pyfuse3 answers a request only when its handler returns or raises FUSEError: turn
    every other failure into EIO (logged), so no system call ever waits forever."""

    @functools.wraps(fn)
    async def handler(*args, **kwargs):
        ctx = kwargs.get("ctx", args[-1] if args else None)
        if isinstance(ctx, pyfuse3.RequestContext):
            # What this call asks of the master is asked for its caller (the master
            # checks it); each FUSE request runs in a task of its own.
            caller.set(Caller(ctx))
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
        # Permissions are checked here (perms.py) unless the kernel does (-o default_permissions).
        self.checks = "default_permissions" not in opts.fuse_options
        # ...and then the kernel must know the ACLs too (it reads system.posix_acl_*).
        self.enable_acl = not self.checks
        self.root = root_inode
        self.states: dict[int, InodeState] = {}
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, DirStream] = {}
        self.next_fh = 1
        self.cache = MetaCache(opts.attr_timeout, opts.direntry_timeout)
        client.link.on_invalidate = self.cache.invalidate
        client.link.on_invalidate_inodes = self._recalled
        self.refreshing: dict[int, asyncio.Future] = {}  # directory -> listing in flight
        self.misses: dict[int, int] = {}  # directory without a listing -> absent names asked
        self.unlistable: dict[int, float] = {}  # directory -> until when not worth listing
        self.parents: dict[int, int] = {}  # directory -> its parent, as last seen
        self.no_caps: dict[int, float] = {}  # inode -> until when it has no security.capability
        self.sent_mtimes: dict[int, int] = {}  # inode -> the last mtime the kernel wrote back
        self.known: dict[int, tuple[int, int]] = {}  # inode -> (mtime, size) last seen
        self.cached: dict[int, tuple[int, int]] = {}  # inode -> (mtime, size) of cached pages
        self.ra_blocks = max(0, opts.readahead_mib * (1 << 20) // RA_BLOCK)
        # Files closed here that the master still has open for this mount (`HOLD_S`):
        # inode -> (the access it granted, when the last close was), oldest first.
        self.releases: dict[int, tuple[int, float]] = {}
        # Lock owners that took a lock here, by inode: a close by one of them (FLUSH with
        # its owner, the last release of an open file) releases its locks at the master.
        self.lockers: dict[int, set[int]] = {}
        self.kernel_names: dict[int, dict[bytes, float]] = {}  # dir -> {name: until}
        self.kernel_names_full: dict[int, float] = {}  # dir -> no expired names before then
        self.release_timer: asyncio.TimerHandle | None = None
        # Opens the master refused (inode -> errno): its answer to the `Acquire` of a
        # first open arrives before that of the GETATTR sent after it (a refusal is not
        # journaled, so it is answered at once), and it is the authority.
        self.refused_opens: dict[int, int] = {}
        self.masterinfo = json.dumps({
            "host": client.link.host, "port": client.link.port,
            "dns_server": client.link.dns_server, "subfolder": opts.subfolder,
            "bind": opts.bind,
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

    def _opened(self, inode: int, is_open: bool, want: int = 0) -> int:
        """The first open (True; `want`: the access it asks for, which the master
        checks too) or the last close (False; `want`: what the master granted) of
        `inode` here. Returns the access the master grants the open file."""
        if is_open:
            held = self.releases.pop(inode, None)  # the master still has it open for us
            granted = 0 if held is None else held[0]
            if want & ~granted:
                # Asked with this open's own needs (the caller may lack the held grant's):
                # the master's grant to the session is the union of its opens'.
                self.client.link.post(m.Acquire(inode, want),
                                      on_refused=lambda status: bounded_put(
                                          self.refused_opens, inode, status, KNOWN_MAX))
                if held is not None:  # one open on the master, with the wider grant
                    self.client.link.post(m.ReleaseMany([inode]))
            return want | granted
        self.releases[inode] = (want, time.monotonic())
        if len(self.releases) > HELD_MAX:
            self._send_releases(len(self.releases) - HELD_MAX)
        elif self.release_timer is None:
            self.release_timer = asyncio.get_running_loop().call_later(
                HOLD_S, self._send_releases)
        return 0

    def _send_releases(self, oldest: int = 0, everything: bool = False) -> None:
        """Release the held files whose hold is over, and the `oldest` many held files
        anyway (`everything`: all of them, at unmount)."""
        if self.release_timer is not None:
            self.release_timer.cancel()
            self.release_timer = None
        over = time.monotonic() - HOLD_S + HOLD_BATCH_S
        gone = []
        for inode, (_, closed) in self.releases.items():  # oldest close first
            if not everything and len(gone) >= oldest and closed > over:
                break
            gone.append(inode)
        for inode in gone:
            del self.releases[inode]
        if gone:
            self.client.link.post(m.ReleaseMany(gone))
        if self.releases:
            first = next(iter(self.releases.values()))[1]
            self.release_timer = asyncio.get_running_loop().call_later(
                max(0.0, first + HOLD_S - time.monotonic()), self._send_releases)

    def _held_attrs(self, ino: int, now: float) -> tuple[m.Attr, float] | None:
        """The attributes of a file closed here that the master still holds open for
        this mount (`releases`), however old, cached for another lifetime: the master
        recalls them from this mount before it acknowledges anyone else's change of the
        file (its data, attributes or names), so the last ones this mount was sent are
        still the master's. None when a recall took them."""
        last = self.cache.last(ino, now)
        if last is None:
            return None
        self.cache.put(last[0], now)
        return last[0], self.cache.attr_ttl

    def _fresh(self, attr: m.Attr) -> pyfuse3.EntryAttributes:
        """Attributes the master just sent: cache them and give them to the kernel."""
        self.cache.put(attr, time.monotonic())
        return self._entry(attr)

    def _entry(self, attr: m.Attr, entry_timeout: float | None = None,
               attr_timeout: float | None = None,
               remember: bool = True) -> pyfuse3.EntryAttributes:
        """What the kernel is told of `attr`; with `remember`, recorded in `known` (not
        for the pages of a huge listing: an open of a file not known revalidates it)."""
        e = pyfuse3.EntryAttributes()
        inode = attr.inode
        size = attr.size
        st = self.states.get(inode)
        if st is not None and st.size > size:
            size = st.size
        e.st_ino = self._k(inode)
        e.generation = 0
        e.entry_timeout = self.opts.entry_timeout if entry_timeout is None else entry_timeout
        if is_special(attr.mode) and self.checks:
            e.entry_timeout = 0.0  # each use is a lookup, checked then (_check_special)
        e.attr_timeout = self.opts.attr_timeout if attr_timeout is None else attr_timeout
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = size
        e.st_blksize = BLKSIZE
        e.st_blocks = (size + 511) // 512 if attr.blocks < 0 or size != attr.size \
            else attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        if remember and stat.S_ISREG(attr.mode):
            bounded_put(self.known, inode, (attr.mtime_ns, attr.size), KNOWN_MAX)
        return e

    async def _attr(self, ino: int) -> m.Attr:
        """Attributes to check a permission against: the cached ones, else the master's."""
        now = time.monotonic()
        cached = self.cache.attr(ino, now)
        if cached is not None:
            return cached[0]
        attr = (await self._op(m.GetAttr(ino))).attr
        self.cache.put(attr, now)
        return attr

    def _who(self, ctx) -> Caller | None:
        """The caller whose permissions this mount checks; None when they need no checking
        (root may do anything that reaches a handler) or the kernel checks them."""
        if not self.checks or ctx is None or ctx.uid == 0:
            return None
        return Caller(ctx)

    async def _need_dir(self, ino: int, ctx, want: int) -> m.Attr | None:
        """Check `want` on directory `ino`; returns its attributes when they were needed."""
        who = self._who(ctx)
        if who is None:
            return None
        attr = await self._attr(ino)
        need(attr, who, want)
        return attr

    async def _child_timeout(self, directory: int, attr: m.Attr | None = None) -> float | None:
        """The entry timeout for names in `directory`: 0 when not everybody may search it,
        so the kernel asks (and this mount checks) at every path walk. None: the default."""
        if not self.checks:
            return None
        if attr is None:
            attr = await self._attr(directory)
        return None if cacheable_children(attr) else 0.0

    async def _child(self, parent: int, name: bytes) -> m.Attr | None:
        """The attributes of `parent`/`name` (None: no such entry), for a permission check."""
        known = await self._listed(parent, name)
        if known is not None:
            if not known[0]:
                return None
            cached = self.cache.attr(known[0], time.monotonic())
            if cached is not None:
                return cached[0]
        try:
            attr = (await self.client.op(m.Lookup(parent, name))).attr
        except FsError as e:
            if e.status == errno.ENOENT:
                return None
            raise pyfuse3.FUSEError(_errno(e)) from None
        self.cache.put(attr, time.monotonic())
        return attr

    def _note_parent(self, directory: int, parent: int) -> None:
        bounded_put(self.parents, directory, parent, KNOWN_MAX)

    def _masterinfo_entry(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = MASTERINFO_INODE
        e.entry_timeout = e.attr_timeout = 3600
        e.st_mode = stat.S_IFREG | 0o444
        e.st_nlink = 1
        e.st_size = len(self.masterinfo)
        e.st_blksize = BLKSIZE
        return e

    def _has_token(self) -> bool:
        return self.client.link.password_digest is not None

    def _mastertoken_entry(self) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = MASTERTOKEN_INODE
        e.entry_timeout = e.attr_timeout = 3600
        e.st_mode = stat.S_IFREG | 0o400
        e.st_uid, e.st_gid = os.getuid(), os.getgid()
        e.st_nlink = 1
        e.st_size = MASTERTOKEN_SIZE
        e.st_blksize = BLKSIZE
        return e

    def _mastertoken(self) -> bytes:
        link = self.client.link
        return f"{link.session.hex()} {link.tool_token.hex()}\n".encode()

    def _virtual_entry(self, parent: int, name: bytes) -> pyfuse3.EntryAttributes | None:
        if parent == self.root and name == MASTERINFO_NAME:
            return self._masterinfo_entry()
        if parent == self.root and name == MASTERTOKEN_NAME and self._has_token():
            return self._mastertoken_entry()
        return None

    def _state(self, inode: int) -> InodeState:
        st = self.states.get(inode)
        if st is None:
            st = self.states[inode] = InodeState(inode)
        return st

    # ------------------------------------------------------------ lookups and attributes

    def _absent(self, entry_timeout: float) -> pyfuse3.EntryAttributes:
        if entry_timeout <= 0:
            raise pyfuse3.FUSEError(errno.ENOENT)
        neg = pyfuse3.EntryAttributes()
        neg.st_ino = 0
        neg.entry_timeout = entry_timeout
        return neg

    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:  # before any cached "absent" answers ENOENT
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        parent = self._m(parent_inode)
        virtual = self._virtual_entry(parent, name)
        if virtual is not None:
            return virtual
        timeout = self.opts.entry_timeout
        if self.checks:
            pattr = await self._attr(parent)
            who = self._who(ctx)
            if who is not None:
                need(pattr, who, X)
            if not cacheable_children(pattr):
                timeout = 0.0
        dots = name in (b".", b"..")
        known = None if dots else await self._listed(parent, name)
        if known is not None:
            inode, left = known
            if not inode:
                return self._absent(min(self.opts.neg_entry_timeout, left))
            now = time.monotonic()
            cached = self.cache.attr(inode, now)
            if cached is None and inode in self.releases:
                cached = self._held_attrs(inode, now)
            if cached is not None:
                attr, attr_left = cached
                if stat.S_ISDIR(attr.mode):
                    self._note_parent(inode, parent)
                self._check_special(attr, ctx)
                self._kernel_named(parent, name, min(timeout, left))
                return self._entry(attr, min(timeout, left), attr_left)
        try:
            out = await self.client.op(m.Lookup(parent, name))
        except FsError as e:
            if e.status == errno.ENOENT:
                if known is not None:
                    self.cache.stale(parent)
                elif not dots:
                    bounded_put(self.misses, parent, self.misses.get(parent, 0) + 1, KNOWN_MAX)
                return self._absent(self.opts.neg_entry_timeout)
            raise pyfuse3.FUSEError(_errno(e)) from None
        if stat.S_ISDIR(out.attr.mode) and not dots:
            self._note_parent(out.attr.inode, parent)
        self.cache.put(out.attr, time.monotonic())
        self._check_special(out.attr, ctx)
        if not dots:
            self._kernel_named(parent, name, timeout)
        return self._entry(out.attr, timeout)

    def _check_special(self, attr: m.Attr, ctx) -> None:
        """The open of a FIFO or device, or a connect to a socket, that this lookup is
        part of: the kernel will not ask again (perms.is_special)."""
        if is_special(attr.mode):
            who = self._who(ctx)
            if who is not None:
                check_special_use(attr, who)

    async def _listed(self, parent: int, name: bytes):
        """What the cached listing of `parent` says of `name` (see MetaCache.lookup),
        fetching the listing of a directory this mount has been working in: one it had
        a listing of (expired now), or one where the master said names were absent."""
        now = time.monotonic()
        known = self.cache.lookup(parent, name, now)
        if known is not None:
            return known
        if self.cache.has_listing(parent):
            # An absent name needs only the names: renewing them costs the master no
            # listing of the whole directory (a large one, every second, under load).
            # So does a name of a file this mount holds: its attributes are known.
            inode = self.cache.named(parent, name)
            renew = not inode or (inode in self.releases
                                  and self.cache.last(inode, now) is not None)
            await self._refresh_listing(parent, renew=renew)
        elif (self.misses.get(parent, 0) >= MISSES_BEFORE_LISTING and self.cache.dir_ttl > 0
              and self.unlistable.get(parent, 0.0) <= now):
            await self._refresh_listing(parent, MISSED_LISTING_MAX)
        else:
            return None
        return self.cache.lookup(parent, name, time.monotonic())

    async def _refresh_listing(self, parent: int, limit: int = LISTING_MAX,
                               renew: bool = False) -> None:
        pending = self.refreshing.get(parent)
        if pending is not None:
            await asyncio.shield(pending)
            return
        fut = asyncio.get_running_loop().create_future()
        self.refreshing[parent] = fut
        try:
            mark = self.cache.fetch_mark(parent)
            self.misses.pop(parent, None)
            try:
                out = await self.client.op(m.ReadDir(parent, 0, limit, renew=renew))
            except FsError:
                self.cache.drop_listing(parent)
                return
            if out.renewed:
                if not self.cache.renew(parent, mark, time.monotonic()):
                    self.cache.drop_listing(parent)
            elif out.next_offset == -1 and len(out.entries) <= limit:
                self.cache.install(parent, out.entries, mark, time.monotonic())
            else:
                self.cache.drop_listing(parent)
                bounded_put(self.unlistable, parent, time.monotonic() + UNLISTABLE_S,
                            KNOWN_MAX)
        finally:
            del self.refreshing[parent]
            fut.set_result(None)

    async def getattr(self, inode, ctx=None):
        if inode == MASTERINFO_INODE:
            return self._masterinfo_entry()
        if inode == MASTERTOKEN_INODE:
            return self._mastertoken_entry()
        ino = self._m(inode)
        now = time.monotonic()
        cached = self.cache.attr(ino, now)
        if cached is None and ino in self.releases:
            cached = self._held_attrs(ino, now)
        if cached is not None:
            return self._entry(cached[0], attr_timeout=cached[1])
        return self._fresh((await self._op(m.GetAttr(ino))).attr)

    async def setattr(self, inode, attr, fields, fh, ctx):
        if inode in VIRTUAL_INODES:
            raise pyfuse3.FUSEError(errno.EPERM)
        ino = self._m(inode)
        mode = attr.st_mode
        who = self._who(ctx)
        if who is not None:
            mode = check_setattr(await self._attr(ino), who, fields, attr, fh, time.time_ns(),
                                 self.enable_writeback_cache)
        if not (fields.update_size or fields.update_mode or fields.update_uid
                or fields.update_gid or fields.update_atime):
            entry = self._times_only(ino, attr, fields)
            if entry is not None:
                return entry
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
        for field, bit in _SETATTR_BITS:
            if getattr(fields, field):
                valid |= bit
        if valid & (m.SET_MTIME | m.SET_ATIME):
            st = self.states.get(ino)
            if st is not None and st.writer is not None and st.writer.dirty:
                # Data written before the times are set (cp -p, tar): its commit would
                # set the mtime after them.
                await self._flush_writer(st)
        if valid or out is None:
            out = await self._op(m.SetAttr(ino, valid, mode, attr.st_uid, attr.st_gid,
                                           attr.st_atime_ns, attr.st_mtime_ns, attr.st_ctime_ns))
        if valid & (m.SET_MODE | m.SET_UID | m.SET_GID) and stat.S_ISDIR(out.attr.mode):
            # Names the kernel keeps inside it must be looked up (and checked) again; not
            # awaited: the kernel holds the directory locked until this answer.
            self._recalled([ino])
        return self._fresh(out.attr)

    def _times_only(self, ino: int, attr, fields) -> pyfuse3.EntryAttributes | None:
        """The write-back cache writing back times it keeps itself (mtime after writes,
        ctime after a rename, unlink or link): answered here, sent without waiting.
        The kernel ignores the attributes of this answer; expired ones will do (it is
        told not to keep them). None when the cache has none."""
        if self.cache.is_gone(ino):
            raise pyfuse3.FUSEError(errno.ENOENT)  # unlinked and freed: the master agrees
        now = time.monotonic()
        cached = self.cache.last(ino, now)
        if cached is None:
            return None
        old = cached[0]
        mtime = attr.st_mtime_ns if fields.update_mtime else old.mtime_ns
        if mtime == old.mtime_ns or mtime == self.sent_mtimes.get(ino):
            # Only the kernel's own ctime bump (the master set ctime with the change), or
            # an mtime it sent before (the master has since set its own at the commit of
            # the data written: that one stays).
            return self._entry(old, attr_timeout=cached[1])
        bounded_put(self.sent_mtimes, ino, mtime, KNOWN_MAX)
        st = self.states.get(ino)
        if st is not None and st.writer is not None and st.writer.dirty:
            # Written data not committed yet: its commit (WriteChunkEnd) sets the mtime.
            return self._entry(old, attr_timeout=cached[1])
        ctime = attr.st_ctime_ns if fields.update_ctime else old.ctime_ns
        valid = m.SET_MTIME | (m.SET_CTIME if fields.update_ctime else 0)
        self.client.link.post(m.SetAttr(ino, valid, mtime_ns=mtime, ctime_ns=ctime))
        new = msgspec.structs.replace(old, mtime_ns=mtime, ctime_ns=ctime)
        if not cached[1]:
            return self._entry(new, attr_timeout=0.0)  # expired: not to be cached again
        self.cache.put(new, now)
        return self._entry(new)

    async def readlink(self, inode, ctx):
        return (await self._op(m.ReadLink(self._m(inode)))).value

    async def access(self, inode, mode, ctx):
        """pyfuse3: True when allowed."""
        if inode == MASTERINFO_INODE:
            return not mode & (W | X)
        if inode == MASTERTOKEN_INODE:
            return not mode & (W | X) and ctx.uid in (0, os.getuid())
        attr = await self._attr(self._m(inode))  # F_OK: it exists
        return not self.checks or allowed(attr, Caller(ctx), mode & (R | W | X))

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

    async def _change(self, op: m.Op, *dirs: int):
        """Send a change to the directories `dirs`; a refusal that contradicts their
        cached listings (EEXIST, ENOENT) drops those listings."""
        for d in dirs:
            self.cache.changing(d)
        try:
            return await self.client.op(op)
        except FsError as e:
            if e.status in (errno.EEXIST, errno.ENOENT, errno.ENOTEMPTY):
                for d in dirs:
                    self.cache.stale(d)
            raise pyfuse3.FUSEError(_errno(e)) from None

    async def _add(self, parent: int, name: bytes, op: m.Op, ctx) -> pyfuse3.EntryAttributes:
        pattr = await self._need_dir(parent, ctx, W | X)
        out = await self._change(op, parent)
        self.cache.added(parent, name, out, time.monotonic())
        timeout = None
        if self.checks:
            timeout = await self._child_timeout(parent, out.parent or pattr)
        self._kernel_named(parent, name, timeout)
        return self._entry(out.attr, timeout)

    # The umask goes to the master with the mode: a directory's default ACL replaces it.

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        parent = self._m(parent_inode)
        return await self._add(parent, name, m.Mknod(parent, name, mode, ctx.uid, ctx.gid, rdev,
                                                     umask=ctx.umask & 0o777), ctx)

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._m(parent_inode)
        epoch = self.cache.epoch
        entry = await self._add(parent, name, m.Mkdir(parent, name, mode & 0o7777, ctx.uid,
                                                      ctx.gid, umask=ctx.umask & 0o777), ctx)
        self.cache.created_dir(entry.st_ino, epoch, time.monotonic())
        self._note_parent(entry.st_ino, parent)
        return entry

    async def symlink(self, parent_inode, name, target, ctx):
        parent = self._m(parent_inode)
        return await self._add(parent, name, m.Symlink(parent, name, target, ctx.uid, ctx.gid),
                               ctx)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        if inode in VIRTUAL_INODES:
            raise pyfuse3.FUSEError(errno.EPERM)
        parent = self._m(new_parent_inode)
        who = self._who(ctx)
        if who is not None:
            check_hardlink(await self._attr(self._m(inode)), who)
        return await self._add(parent, new_name, m.Link(self._m(inode), parent, new_name), ctx)

    async def unlink(self, parent_inode, name, ctx):
        parent = self._m(parent_inode)
        if parent == self.root and name in (MASTERINFO_NAME, MASTERTOKEN_NAME):
            raise pyfuse3.FUSEError(errno.EPERM)
        await self._may_remove(parent, name, ctx)
        out = await self._change(m.Unlink(parent, name), parent)
        self.cache.removed(parent, name, out, time.monotonic())

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._m(parent_inode)
        await self._may_remove(parent, name, ctx)
        out = await self._change(m.Rmdir(parent, name), parent)
        self.cache.removed(parent, name, out, time.monotonic())

    async def _may_remove(self, parent: int, name: bytes, ctx,
                          absent_ok: bool = False) -> m.Attr | None:
        """may_delete: write and search permission on `parent`, and the sticky rule.
        Returns the entry's attributes when they were looked up (None for root)."""
        pattr = await self._need_dir(parent, ctx, W | X)
        if pattr is None:
            return None
        victim = await self._child(parent, name)
        if victim is None:
            if absent_ok:
                return None
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not sticky_allows(pattr, victim, self._who(ctx)):
            raise denied(errno.EPERM)
        return victim

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        parent, new_parent = self._m(parent_inode_old), self._m(parent_inode_new)
        src = await self._may_remove(parent, name_old, ctx)
        dst = await self._may_remove(new_parent, name_new, ctx, absent_ok=True)
        if src is not None and parent != new_parent:
            # a directory moved elsewhere gets a new "..": it must be writable
            for moved in (src, dst if flags & m.RENAME_EXCHANGE else None):
                if moved is not None and stat.S_ISDIR(moved.mode):
                    need(moved, self._who(ctx), W)
        out = await self._change(m.Rename(parent, name_old, new_parent, name_new, flags),
                                 parent, new_parent)
        self.cache.moved(parent, name_old, new_parent, name_new,
                         bool(flags & m.RENAME_EXCHANGE), out, time.monotonic())
        if parent != new_parent and isinstance(out, m.ChangedOut):
            for attr in out.attrs:  # a moved directory has a new ".."
                if stat.S_ISDIR(attr.mode) and attr.inode not in (parent, new_parent):
                    self.parents.pop(attr.inode, None)
            if self.checks:
                # The kernel moves its cached name along: not into a directory whose
                # names it must not keep (perms.py). After this reply, from a thread.
                moved = [(new_parent, name_new)]
                if flags & m.RENAME_EXCHANGE:
                    moved.append((parent, name_old))
                for directory, name in moved:
                    if not cacheable_children(await self._attr(directory)):
                        pyfuse3.invalidate_entry_async(self._k(directory), name,
                                                       ignore_enoent=True)

    # ------------------------------------------------------------ extended attributes

    async def getxattr(self, inode, name, ctx):
        if inode in VIRTUAL_INODES:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        ino = self._m(inode)
        who = self._who(ctx)
        if who is not None and xattr_wants(name, False):
            need(await self._attr(ino), who, R)
        # Cached attributes say whether the file has any extended attribute (ACLs
        # included): "none" is answered here, as fresh as the attributes themselves
        # (`ls -l` asks two of them for every entry it lists).
        now = time.monotonic()
        cached = self.cache.attr(ino, now)
        if cached is not None and not cached[0].has_xattrs:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if name == CAPABILITY:
            # The kernel asks before every write to a file (FUSE file systems may not
            # promise it "no capabilities"): also the last answer counts.
            if self.no_caps.get(ino, 0.0) > now:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            try:
                return (await self.client.op(m.GetXattr(ino, name))).value
            except FsError as e:
                if e.status == errno.ENODATA:
                    bounded_put(self.no_caps, ino, time.monotonic() + self.opts.attr_timeout,
                                KNOWN_MAX)
                raise pyfuse3.FUSEError(_errno(e)) from None
        return (await self._op(m.GetXattr(ino, name))).value

    async def _may_set_xattr(self, ino: int, name: bytes, ctx) -> None:
        who = self._who(ctx)
        if who is not None and xattr_wants(name, True):
            need(await self._attr(ino), who, W)
        if who is not None and name in (ACL_ACCESS, ACL_DEFAULT):
            if who.uid != (await self._attr(ino)).uid:  # setfacl: the owner's (or root's)
                raise pyfuse3.FUSEError(errno.EPERM)

    async def listxattr(self, inode, ctx):
        if inode in VIRTUAL_INODES:
            return []
        return (await self._op(m.ListXattr(self._m(inode)))).names

    async def setxattr(self, inode, name, value, ctx):
        if inode in VIRTUAL_INODES:
            raise pyfuse3.FUSEError(errno.EPERM)
        ino = self._m(inode)
        await self._may_set_xattr(ino, name, ctx)
        self.no_caps.pop(ino, None)
        self.cache.drop(ino)  # ctime and has_xattrs change
        try:
            await self._op(m.SetXattr(ino, name, value))
        finally:
            self.cache.drop(ino)  # an answer that crossed the change may have refilled it

    async def removexattr(self, inode, name, ctx):
        if inode in VIRTUAL_INODES:
            raise pyfuse3.FUSEError(errno.EPERM)
        ino = self._m(inode)
        await self._may_set_xattr(ino, name, ctx)
        self.no_caps.pop(ino, None)
        self.cache.drop(ino)
        try:
            await self._op(m.RemoveXattr(ino, name))
        finally:
            self.cache.drop(ino)

    # ------------------------------------------------------------ directories

    async def opendir(self, inode, ctx):
        await self._need_dir(self._m(inode), ctx, R)
        fh = self.next_fh
        self.next_fh += 1
        self.dirs[fh] = DirStream(self._m(inode))
        return fh

    async def _dots(self, inode: int) -> list[m.DirEntry]:
        """The "." and ".." entries (the kernel only shows their inode numbers)."""
        here = self.cache.attr(inode, time.monotonic())
        here_attr = here[0] if here else (await self._op(m.GetAttr(inode))).attr
        up = ROOT if inode == self.root else self.parents.get(inode)
        if up is None:
            up = (await self._op(m.Lookup(inode, b".."))).attr.inode
        up_attr = m.Attr(up, stat.S_IFDIR, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0)
        return [m.DirEntry(b".", here_attr), m.DirEntry(b"..", up_attr)]

    async def _next_page(self, d: DirStream, names_only: bool) -> None:
        """Fetch the page after `d`'s current one (the first after a rewind); with
        `names_only`, without attributes (for plain READDIR: a fraction of the master's
        work and of the bytes).

        Pages without attributes, and any page past the first LISTING_MAX entries (a huge
        directory, whose attributes are not cached), are not cached: for them the page
        after the new one is asked for at once, so the master finds it while the kernel
        takes this one (two pages held at most). It resumes after the last name of this
        page like any page, so it is as right as one asked for later."""
        first = d.start == 2 and not d.names
        after = d.names[-1] if d.names else b""
        mark = self.cache.fetch_mark(d.inode)
        ahead, d.ahead = d.ahead, None
        if ahead is None:
            ahead = self._ask_page(d.inode, after, names_only)
        out = await ahead
        d.take(out, after, d.start + len(d.names))
        if d.attrs is not None:
            now = time.monotonic()
            if first and d.done:  # the whole listing in one answer
                self.cache.install(d.inode, out.entries, mark, now)
            if d.start < LISTING_MAX:  # not for a huge directory: bounded memory
                for attr in d.attrs:
                    self.cache.put(attr, now)
                return
        if not d.done:
            d.ahead = asyncio.ensure_future(self._ask_page(d.inode, d.names[-1], names_only))
            d.ahead.add_done_callback(_retrieved)

    def _ask_page(self, inode: int, after: bytes, names_only: bool):
        return self._op(m.ReadDir(inode, 0, PAGE, after, names_only=names_only))

    async def _with_attrs(self, d: DirStream, i: int) -> None:
        """READDIRPLUS of entry `i` in a page that came without attributes (the kernel
        chose plain READDIR for the requests before): ask for a page with them, resuming
        after the name before `i`, numbered from `i`."""
        k = i - d.start
        after = d.names[k - 1] if k else d.after
        d.drop_ahead()
        d.take(await self._ask_page(d.inode, after, False), after, i)

    async def readdir(self, fh, start_id, token):
        """Entries are numbered in the order this handle lists them: "." is 0, ".." is
        1, then the master's names; the kernel resumes at the number after the last entry
        it took. Only the current page is held (see `DirStream`)."""
        d = self.dirs[fh]
        if d.dots is None:
            d.dots = await self._dots(d.inode)
        i = start_id
        while i < 2:
            ent = d.dots[i]
            if not pyfuse3.readdir_reply(token, ent.name, self._entry(ent.attr, 0.0, 0.0), i + 1):
                return
            i += 1
        if i < d.start:  # back to an earlier place (seekdir): list again from the start
            d.rewind()
        child_timeout = await self._child_timeout(d.inode, d.dots[0].attr)
        while True:
            while i >= d.start + len(d.names):
                if d.done:
                    return
                await self._next_page(d, False)
            if d.attrs is None:
                await self._with_attrs(d, i)
                continue
            k = i - d.start
            name, attr = d.names[k], d.attrs[k]
            timeout = self._kernel_named(d.inode, name, child_timeout, listing=True)
            e = self._entry(attr, timeout, remember=d.start < LISTING_MAX)
            if stat.S_ISDIR(attr.mode):
                self._note_parent(attr.inode, d.inode)
            if not pyfuse3.readdir_reply(token, name, e, i + 1):
                return
            i += 1

    async def readdir_plain(self, fh: int, start_id: int, size: int) -> bytes:
        """A plain READDIR (lowlevel.py): the same numbering and pages as `readdir`,
        names, inode numbers and types only, packed into one reply of at most `size`
        bytes. The kernel keeps nothing of these entries, so nothing is remembered."""
        d = self.dirs[fh]
        if d.dots is None:
            d.dots = await self._dots(d.inode)
        parts: list[bytes] = []
        i = start_id
        room = size
        if i < 2:
            dots = [e.attr for e in d.dots]
            taken, used = pack_dirents([b".", b".."], [a.inode for a in dots],
                                       [a.mode for a in dots], i, i, room, parts,
                                       self.root, ROOT)
            i += taken
            room -= used
            if i < 2:
                return b"".join(parts)
        if i < d.start:  # back to an earlier place (seekdir): list again from the start
            d.rewind()
        while True:
            while i >= d.start + len(d.names):
                if d.done:
                    return b"".join(parts)
                await self._next_page(d, True)
            taken, used = pack_dirents(d.names, d.inodes, d.modes, i - d.start, i, room,
                                       parts, self.root, ROOT)
            if not taken:
                return b"".join(parts)
            i += taken
            room -= used

    async def releasedir(self, fh):
        d = self.dirs.pop(fh, None)
        if d is not None:
            d.drop_ahead()

    async def fsyncdir(self, fh, datasync):
        return

    # ------------------------------------------------------------ files

    def _new_handle(self, inode: int, flags: int, acquired: bool = False,
                    uid: int = 0) -> tuple[int, bool]:
        """A handle for an open of `inode`; `acquired`: the master knows of this open."""
        st = self._state(inode)
        st.opens += 1
        if st.opens == 1:
            # a create opened the file on the master, for anything
            st.granted = R | W if acquired else self._opened(inode, True, open_wants(flags))
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(inode, flags, Reader(self.client, st, self.ra_blocks), uid)
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
        if inode == MASTERTOKEN_INODE:
            if flags & (os.O_WRONLY | os.O_RDWR) or ctx.uid not in (0, os.getuid()):
                raise pyfuse3.FUSEError(errno.EACCES)
            # A token is good while the session is registered with whoever leads: after a
            # failover or a restart the session registers again now (a new token), not at
            # the next request, so that a tool reads the one the master knows.
            try:
                await self.client.link.connect()
            except FsError as e:
                raise pyfuse3.FUSEError(_errno(e)) from None
            fi = pyfuse3.FileInfo(fh=MASTERTOKEN_FH)
            fi.direct_io = True
            return fi
        ino = self._m(inode)
        who = self._who(ctx)
        st = self.states.get(ino)
        fresh = st is None or st.opens == 0
        chunk = None
        try:
            if fresh:
                # Close-to-open: the first open here asks the master for the file's
                # current attributes (with the Acquire, or after it: from then on the
                # master recalls what we cache of the file when others change it). The
                # Acquire says what the open wants, and the master's refusal is the answer.
                self.refused_opens.pop(ino, None)
                attr, chunk = await self._fresh_open(
                    ino, inode, open_wants(flags),
                    flags & os.O_ACCMODE != os.O_WRONLY and not flags & os.O_TRUNC)
                refused = self.refused_opens.pop(ino, None)
                if refused is not None:
                    raise pyfuse3.FUSEError(_errno(FsError(refused)))
            else:
                attr = await self._attr(ino) if who is not None else None
            if who is not None:
                need(attr, who, open_wants(flags))
            if flags & os.O_TRUNC:
                # libfuse asks the kernel for atomic O_TRUNC: the truncation is ours to do.
                st = self.states.get(ino)
                if st is not None and st.writer is not None:
                    await self._flush_writer(st)
                self._fresh((await self._op(m.Truncate(ino, 0))).attr)
                if st is not None:
                    st.size = -1
                    st.gen += 1
            fh, keep = self._new_handle(ino, flags, uid=ctx.uid if ctx else 0)
            if chunk is not None and not flags & os.O_TRUNC:
                self.handles[fh].reader.seed(chunk)
        finally:
            if fresh:
                self._release_if_unused(ino)
        fi = self._file_info(fh, keep and not flags & os.O_TRUNC)
        if flags & os.O_APPEND:
            fi.direct_io = True  # the kernel's idea of the end is not where appends go
        return fi

    async def _fresh_open(self, ino: int, kernel_ino: int, want: int,
                          reading: bool) -> tuple[m.Attr, m.ChunkOut | None]:
        """The master's attributes of a file about to be opened here (no open of it
        here yet), and, for a reader, where its first chunk is (None when not asked).
        The master learns of the open first (`Acquire`, held open by an extra count
        until the open completes or fails), and answers it with both in one trip;
        when the size or mtime are not what the kernel was last told, its cached
        attributes go, so its next read or stat asks again (and the open drops the
        cached pages: `keep_cache`)."""
        st = self._state(ino)
        st.opens += 1
        held = self.releases.get(ino) if st.opens == 1 else None
        acquire = st.opens == 1 and (held is None or want & ~held[0])
        if st.opens == 1 and not acquire:
            st.granted = self._opened(ino, True, want)  # the master has it open for us
        st.pending += 1
        before = self.known.get(ino)
        chunk = None
        last = self.cache.last(ino, time.monotonic()) if held is not None else None
        if acquire:
            if held is not None:
                # It needs more than the master granted: ask with this open's own needs
                # (the caller may lack the held grant's); the session's grant on the
                # master is the union of its opens', and one open stays.
                del self.releases[ino]
                st.granted = held[0]  # what stays if this Acquire is refused
            out = await self._op(m.Acquire(ino, want, m.ACQUIRE_CHUNK if reading
                                           else m.ACQUIRE_ATTR))
            if held is not None:
                self.client.link.post(m.ReleaseMany([ino]))
                want |= held[0]
            st.granted = want
            attr, chunk = out.attr, out.chunk
        elif last is not None:
            # Held since its last close here, and not recalled since (a recall drops the
            # cached attributes): these are the master's, no trip needed.
            attr = last[0]
        else:
            attr = (await self._op(m.GetAttr(ino))).attr
        self.cache.put(attr, time.monotonic())
        bounded_put(self.known, ino, (attr.mtime_ns, attr.size), KNOWN_MAX)
        if before != (attr.mtime_ns, attr.size):
            await asyncio.get_running_loop().run_in_executor(
                None, _invalidate_kernel_inode, kernel_ino, True)
        return attr, chunk

    def _release_if_unused(self, ino: int) -> None:
        """Drop the extra count `_fresh_open` took (the open succeeded or failed)."""
        st = self.states.get(ino)
        if st is None or not st.pending:
            return
        st.pending -= 1
        st.opens -= 1
        if st.opens == 0:
            del self.states[ino]
            self._opened(ino, False, st.granted)

    def _recalled(self, inodes: list[int] | None):
        """The master says another session changed these files, which are open here
        (None: we reconnected and may have missed anything): drop our cached
        attributes and read-ahead, and the kernel's attributes and pages. Returns what
        the master's answer waits for."""
        if inodes is None:
            inodes = list(self.states)
            # A new session (the old one expired) has none of the held files open:
            # release them all (a resumed one just lets them go early).
            self._send_releases(everything=True)
        now = time.monotonic()
        names = []  # names the kernel may still pass through without asking (perms.py)
        for ino in inodes:
            self.cache.drop(ino)
            self.cached.pop(ino, None)
            self.known.pop(ino, None)
            for name, until in self.kernel_names.pop(ino, {}).items():
                if until > now:
                    names.append((self._k(ino), name))
        wanted = set(inodes)
        for h in self.handles.values():
            if h.inode in wanted:
                h.reader.invalidate()
        if not inodes:
            return None
        kernel = [self._k(ino) for ino in inodes]
        loop = asyncio.get_running_loop()
        return asyncio.gather(*(loop.run_in_executor(None, _invalidate_kernel_inode, k, False)
                                for k in kernel),
                              *(loop.run_in_executor(None, _invalidate_kernel_entry, d, name)
                                for d, name in names))

    def _kernel_named(self, directory: int, name: bytes, timeout: float | None,
                      listing: bool = False) -> float:
        """The kernel may keep `name` in `directory` for `timeout` seconds: remembered,
        so a recall of the directory (its permissions changed) can take it back. Returns
        the entry timeout to give the kernel: for a `listing`, 0 once this directory has
        KERNEL_NAMES_MAX names remembered (the kernel asks again for the others), so the
        listing of a huge directory costs bounded memory."""
        timeout = self.opts.entry_timeout if timeout is None else timeout
        if timeout <= 0:
            return 0.0
        names = self.kernel_names.get(directory)
        now = time.monotonic()
        if names is None:
            names = {}
            bounded_put(self.kernel_names, directory, names, KNOWN_MAX)
        elif len(names) >= KERNEL_NAMES_MAX and name not in names:
            # Forget the expired names, at most once per expiry of the oldest (the scan is
            # linear: once per name would make a big listing quadratic).
            if self.kernel_names_full.get(directory, 0.0) <= now:
                for old in [n for n, until in names.items() if until <= now]:
                    del names[old]
                if len(names) >= KERNEL_NAMES_MAX // 2:
                    bounded_put(self.kernel_names_full, directory, min(names.values()),
                                KNOWN_MAX)
            if listing and len(names) >= KERNEL_NAMES_MAX:
                return 0.0
        names[name] = now + timeout
        return timeout

    async def create(self, parent_inode, name, mode, flags, ctx):
        mode = stat.S_IFREG | (mode & 0o7777)
        parent = self._m(parent_inode)
        try:
            entry = await self._add(parent, name, m.Mknod(parent, name, mode, ctx.uid, ctx.gid,
                                                          acquire=True,
                                                          umask=ctx.umask & 0o777), ctx)
        except pyfuse3.FUSEError as e:
            if e.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            # Another client created the name after our LOOKUP said it was absent (a
            # cached listing): open(O_CREAT) without O_EXCL opens that file.
            return await self._open_existing(parent, name, flags, ctx)
        fh, _ = self._new_handle(entry.st_ino, flags, acquired=True, uid=ctx.uid)
        fi = self._file_info(fh, True)
        if flags & os.O_APPEND:
            fi.direct_io = True
        return fi, entry

    async def _open_existing(self, parent: int, name: bytes, flags: int, ctx):
        attr = (await self._op(m.Lookup(parent, name))).attr
        if stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if ctx.uid != 0:  # the kernel believed the name absent: it checked nothing
            need(attr, Caller(ctx), open_wants(flags))
        entry = self._fresh(attr)
        fi = await self.open(entry.st_ino, flags & ~os.O_CREAT, ctx)
        if flags & os.O_TRUNC:
            entry = await self.getattr(entry.st_ino)
        return fi, entry

    async def read(self, fh, off, size):
        if fh == 0:
            return self.masterinfo[off:off + size]
        if fh == MASTERTOKEN_FH:
            return self._mastertoken()[off:off + size]
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
        if h.flags & os.O_APPEND and buf:
            return await self._append(h, st, buf)
        # Readers drop what they know of the chunks now (the write may raise a chunk's
        # version before a read that runs meanwhile) and again after it (what such a
        # read fetched is older than this write).
        st.gen += 1
        try:
            await st.writer.write(off, buf)
        except FsError as e:
            self._write_failed(st)
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

    async def _append(self, h: Handle, st: InodeState, buf) -> int:
        """O_APPEND, atomic across clients: the master gives this write a range of its
        own at the end (`AppendReserve`), the data goes there and is committed before
        the write returns (so the chunk is not kept locked against the other
        appenders). The kernel's offset (its own idea of the end) is ignored."""
        if st.writer.dirty:
            await self._flush_writer(st)
        if h.uid != 0:
            await self._kill_priv(h.inode)
        out = await self._op(m.AppendReserve(h.inode, len(buf)))
        try:
            await st.writer.write(out.offset, buf)
        except FsError as e:
            raise pyfuse3.FUSEError(_errno(e)) from None
        st.gen += 1
        st.writes += 1
        await self._flush_writer(st)
        await asyncio.get_running_loop().run_in_executor(
            None, _invalidate_kernel_inode, self._k(h.inode), True)
        return len(buf)

    async def _kill_priv(self, ino: int) -> None:
        """A write by someone without CAP_FSETID clears set-user-ID and set-group-ID (with
        group execute), as file_remove_privs does; the kernel leaves it to us for
        direct I/O (the O_APPEND handles)."""
        attr = await self._attr(ino)
        kill = attr.mode & stat.S_ISUID
        if attr.mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP:
            kill |= stat.S_ISGID
        if kill:
            out = await self._op(m.SetAttr(ino, m.SET_MODE, stat.S_IMODE(attr.mode) & ~kill))
            self._fresh(out.attr)

    def _write_failed(self, st: InodeState) -> None:
        """A write failed (ENOSPC, EIO): what it added is not in the file. Forget the
        size and pages this mount and the kernel keep of it, so the next stat and read
        show what the master holds. The kernel's copy goes from another thread, not
        waited for (this request may hold the inode)."""
        ino = st.inode
        st.size = -1
        st.gen += 1
        self.cache.drop(ino)
        self.known.pop(ino, None)
        self.cached.pop(ino, None)
        asyncio.get_running_loop().run_in_executor(None, _invalidate_kernel_inode,
                                                   self._k(ino), False)

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
            self._write_failed(st)
            raise pyfuse3.FUSEError(_errno(e)) from None
        if w.last_attr is not None:
            self._fresh(w.last_attr)  # remember the committed (mtime, size)
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
        if fh in (0, MASTERTOKEN_FH):
            return
        h = self.handles.pop(fh, None)
        if h is None:
            return
        if h.owners:
            # flock and OFD locks belong to the open file, which is gone now (POSIX
            # locks taken through it went with the FLUSH of their process's close).
            await self._release_locks(h.inode, h.owners)
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
            bounded_put(self.cached, h.inode, sig, KNOWN_MAX)
        self._opened(h.inode, False, st.granted)

    async def forget(self, inode_list):
        return

    # ------------------------------------------------------------ locks (lowlevel.py)

    async def flush_owner(self, fh, owner: int) -> None:
        """FLUSH, with the lock owner pyfuse3 does not pass on: a process closed the file,
        so its POSIX locks on it go (on every client, before close returns)."""
        await self.flush(fh)
        h = self.handles.get(fh)
        if h is not None:
            await self._release_locks(h.inode, (owner,))

    async def _release_locks(self, inode: int, owners) -> None:
        held = self.lockers.get(inode)
        if not held:
            return
        for owner in list(owners):
            if owner in held:
                held.discard(owner)
                await self._op(m.ReleaseLocks(inode, owner))
        if not held:
            self.lockers.pop(inode, None)

    async def getlk(self, inode, fh, owner, type, start, end):
        """F_GETLK: (type, start, end, pid) of a conflicting lock; type F_UNLCK: none."""
        out = await self._op(m.GetLock(self._m(inode), owner, LOCK_POSIX, type, start, end))
        if out.type == F_UNLCK:
            return F_UNLCK, start, end, 0
        return out.type, out.start, out.end, out.pid

    async def setlk(self, inode, fh, owner, is_flock, type, start, end, pid, sleep):
        ino = self._m(inode)
        h = self.handles.get(fh)
        op = m.SetLock(ino, owner, LOCK_FLOCK if is_flock else LOCK_POSIX, type, start, end,
                       pid)
        if type == F_UNLCK:
            st = self.states.get(ino)
            if st is not None and st.writer is not None and st.writer.dirty:
                await self._flush_writer(st)  # what was written under the lock first
        else:
            # Known before the request leaves: a close racing with the answer releases it.
            self.lockers.setdefault(ino, set()).add(owner)
            if h is not None:
                h.owners.add(owner)
        try:
            await set_lock(self.client.link, op, sleep)
        except FsError as e:
            raise pyfuse3.FUSEError(_errno(e)) from None

    async def fallocate(self, inode, fh, mode, offset, length):
        """Mode 0 only: the file is at least offset+length long afterwards. The space is
        not reserved (chunks are made when written; ENOSPC comes at the write), and
        KEEP_SIZE, PUNCH_HOLE and the others are EOPNOTSUPP."""
        if mode != 0:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise pyfuse3.FUSEError(errno.EINVAL)
        ino = self._m(inode)
        st = self.states.get(ino)
        if st is not None and st.writer is not None:
            await self._flush_writer(st)
        attr = (await self._op(m.GetAttr(ino))).attr
        if not stat.S_ISREG(attr.mode):
            raise pyfuse3.FUSEError(errno.ENODEV)
        end = offset + length
        if end > attr.size and (st is None or end > st.size):
            out = await self._op(m.Truncate(ino, end))
            if st is not None:
                st.size = -1
                st.gen += 1
            self._fresh(out.attr)
            pyfuse3.invalidate_inode(inode, attr_only=True)

    # ------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        self._send_releases(everything=True)
        for st in list(self.states.values()):
            try:
                await self._flush_writer(st)
            except Exception as e:
                log.warning("inode %d: flush at unmount failed: %s", st.inode, e)
        await self.client.link.drain_posted(timeout=10)


_HANDLERS = ("lookup", "getattr", "setattr", "readlink", "access", "statfs", "mknod", "mkdir",
             "symlink", "link", "unlink", "rmdir", "rename", "getxattr", "listxattr",
             "setxattr", "removexattr", "opendir", "readdir", "readdir_plain", "releasedir",
             "fsyncdir", "open", "create", "read", "write", "flush", "fsync", "release",
             "flush_owner", "getlk", "setlk", "fallocate")
for _name in _HANDLERS:
    setattr(ElkOperations, _name, _always_reply(getattr(ElkOperations, _name)))
