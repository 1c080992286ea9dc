"""The meta mount (`mfsmount -m` / `-o mfsmeta` in MooseFS): the trash as a file system.

    /trash/                  one entry per file in the trash, named
                             `<inode, 8+ hex digits>|<old path, "/" written as "|">`
    /trash/undel/            move (rename) a trash entry here to restore the file to its
                             old path (missing directories are made again)

Removing (unlink) a trash entry frees the file at once. Entries show the file's size,
mode, owner and times; their contents are not readable here (restore the file first).
Everything is asked of the master through the client library (`Client.list_trash`,
`undelete`, `purge_trash`); the listing is cached for a second.

Run on its own (`python -m elkfs.mount.meta MOUNTPOINT -H MASTER [-P PORT] [-f]`), or
from mfsmount's option handling through `serve(client, mountpoint)`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import stat
import sys
import time

import pyfuse3

from ..client.client import Client
from ..proto import messages as m
from ..proto.errors import FsError
from .unmount import UnmountOnSignal

log = logging.getLogger("elkfs.mount.meta")

ROOT = pyfuse3.ROOT_INODE  # 1
TRASH = 2
UNDEL = 3
OFFSET = 16  # kernel inode of a trash entry = its real inode + OFFSET
CACHE_S = 1.0


def entry_name(entry: m.TrashEntry) -> bytes:
    return b"%08X|" % entry.inode + entry.path.replace(b"/", b"|")


def inode_of_name(name: bytes) -> int | None:
    head, sep, _ = name.partition(b"|")
    if not sep:
        return None
    try:
        return int(head, 16)
    except ValueError:
        return None


class MetaOperations(pyfuse3.Operations):
    def __init__(self, client: Client):
        super().__init__()
        self.client = client
        self._entries: dict[int, m.TrashEntry] = {}
        self._fetched = 0.0
        self._dirs: dict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = {}
        self._next_fh = 1
        self.mounted_at = time.time_ns()

    # ------------------------------------------------------------ helpers

    async def _trash(self, fresh: bool = False) -> dict[int, m.TrashEntry]:
        if fresh or time.monotonic() - self._fetched > CACHE_S:
            try:
                entries = await self.client.list_trash()
            except FsError as e:
                raise pyfuse3.FUSEError(e.errno) from None
            self._entries = {e.inode: e for e in entries}
            self._fetched = time.monotonic()
        return self._entries

    def _dir_attr(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = stat.S_IFDIR | (0o700 if inode != ROOT else 0o755)
        a.st_nlink = 3 if inode != UNDEL else 2
        a.st_uid = a.st_gid = 0
        a.st_size = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mounted_at
        a.st_blksize = 65536
        a.attr_timeout = a.entry_timeout = 0.0
        return a

    @staticmethod
    def _entry_attr(entry: m.TrashEntry) -> pyfuse3.EntryAttributes:
        attr = entry.attr
        a = pyfuse3.EntryAttributes()
        a.st_ino = entry.inode + OFFSET
        a.st_mode = stat.S_IFREG | stat.S_IMODE(attr.mode)
        a.st_nlink = 1
        a.st_uid, a.st_gid = attr.uid, attr.gid
        a.st_size = attr.size
        a.st_blocks = (attr.size + 511) // 512
        a.st_blksize = 65536
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = attr.atime_ns, attr.mtime_ns, attr.ctime_ns
        a.attr_timeout = a.entry_timeout = 0.0
        return a

    async def _entry_by_name(self, name: bytes) -> m.TrashEntry:
        inode = inode_of_name(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        entry = (await self._trash()).get(inode)
        if entry is None or entry_name(entry) != name:
            entry = (await self._trash(fresh=True)).get(inode)
        if entry is None or entry_name(entry) != name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry

    # ------------------------------------------------------------ operations

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode == ROOT and name == b"trash":
            return self._dir_attr(TRASH)
        if parent_inode == TRASH:
            if name == b"undel":
                return self._dir_attr(UNDEL)
            return self._entry_attr(await self._entry_by_name(name))
        if name == b"..":
            return self._dir_attr(ROOT if parent_inode == TRASH else TRASH)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def getattr(self, inode, ctx=None):
        if inode in (ROOT, TRASH, UNDEL):
            return self._dir_attr(inode)
        entry = (await self._trash()).get(inode - OFFSET)
        if entry is None:
            entry = (await self._trash(fresh=True)).get(inode - OFFSET)
        if entry is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry_attr(entry)

    async def setattr(self, inode, attr, fields, fh, ctx):
        return await self.getattr(inode, ctx)

    async def opendir(self, inode, ctx):
        if inode == ROOT:
            items = [(b"trash", self._dir_attr(TRASH))]
        elif inode == TRASH:
            entries = await self._trash(fresh=True)
            items = [(b"undel", self._dir_attr(UNDEL))]
            items += [(entry_name(e), self._entry_attr(e)) for e in entries.values()]
        elif inode == UNDEL:
            items = []
        else:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = items
        return fh

    async def readdir(self, fh, start_id, token):
        items = self._dirs.get(fh, [])
        for i in range(start_id, len(items)):
            name, attr = items[i]
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                return

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if parent_inode_old != TRASH or parent_inode_new != UNDEL:
            raise pyfuse3.FUSEError(errno.EPERM)
        entry = await self._entry_by_name(name_old)
        try:
            await self.client.undelete(entry.inode)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        self._fetched = 0.0
        log.info("restored inode %d to /%s", entry.inode, os.fsdecode(entry.path))

    async def unlink(self, parent_inode, name, ctx):
        if parent_inode != TRASH:
            raise pyfuse3.FUSEError(errno.EPERM)
        entry = await self._entry_by_name(name)
        try:
            await self.client.purge_trash([entry.inode])
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        self._fetched = 0.0

    async def open(self, inode, flags, ctx):
        raise pyfuse3.FUSEError(errno.EACCES)  # restore a file to read it

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        try:
            out = await self.client.statfs()
            total, avail = out.total_bytes, out.avail_bytes
        except FsError:
            total = avail = 0
        s.f_bsize = s.f_frsize = 65536
        s.f_blocks = total // 65536
        s.f_bfree = s.f_bavail = avail // 65536
        s.f_files = len(self._entries) + 3
        s.f_ffree = 0
        s.f_namemax = 1024
        return s


async def serve(client: Client, mountpoint: str, fuse_options: set[str] | None = None,
                ready=None) -> None:
    """Mount the meta file system at `mountpoint` and serve it until unmounted or
    SIGTERM/SIGINT. Needs `fuseloop.enable()` first."""
    ops = MetaOperations(client)
    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts.add(f"fsname=mfsmeta#{client.link.host}:{client.link.port}")
    opts.add("subtype=elkfsmeta")
    opts |= fuse_options or set()
    pyfuse3.init(ops, mountpoint, opts)
    signals = UnmountOnSignal()
    if ready is not None:
        ready()
    try:
        await pyfuse3.main()
    finally:
        pyfuse3.close(unmount=signals.stopping)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mfsmount -m", description="ElkFS meta mount (trash)")
    ap.add_argument("mountpoint")
    ap.add_argument("-H", "--host", default="mfsmaster")
    ap.add_argument("-P", "--port", type=int, default=9421)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s mfsmount-meta %(levelname)s %(message)s")
    from . import fuseloop

    fuseloop.enable()

    async def run() -> int:
        try:
            client = await Client.connect(args.host, args.port, meta=True,
                                          info=f"mfsmount meta {os.path.abspath(args.mountpoint)}")
        except FsError as e:
            print(f"mfsmount: cannot connect to master {args.host}:{args.port}: {e}",
                  file=sys.stderr)
            return 1
        try:
            await serve(client, args.mountpoint,
                        ready=lambda: print("mounted", flush=True))
        finally:
            await client.close()
        return 0

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
