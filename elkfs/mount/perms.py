"""POSIX permission checks done by the mount (pure: no I/O but the caller's groups).

The rules are `elkfs/access.py`'s, the ones the master checks every request with: the
mount checks first, against its cached attributes, to answer without a round trip, but
the master's answer is the authority (it checks against the current attributes).

The mount runs without FUSE's `default_permissions`, as MooseFS's does: with it, the kernel
re-reads a directory's attributes (one more FUSE request) after every change in it, before
it checks the next call's permissions. So the checks the kernel's `generic_permission`,
`may_create`, `may_delete`, `setattr_prepare` and `may_linkat` make are made here instead,
against the mount's cached attributes (never older than the attribute timeout, as the
kernel's own would be), and they give the same errors (EACCES or EPERM).

One check the kernel skips without `default_permissions`: search permission on a directory
whose child names it has cached. So the children of a directory that not everybody may
search are given to the kernel with an entry timeout of 0 (see `cacheable_children`): each
path walk through them asks the mount, which checks.
"""

from __future__ import annotations

import errno
import os
import stat
import time

import pyfuse3

from .. import access
from ..proto import messages as m
from . import intent

R, W, X = access.R, access.W, access.X
TOUCH_WINDOW_NS = access.TOUCH_WINDOW_NS
EXEC_OPEN = 0o40  # __FMODE_EXEC: the kernel's open of a file to execute it


class Caller:
    """Who makes a request: FUSE's (uid, gid, pid), supplementary groups read on demand."""

    __slots__ = ("uid", "gid", "pid", "_groups")

    def __init__(self, ctx):
        self.uid = ctx.uid
        self.gid = ctx.gid
        self.pid = ctx.pid
        self._groups: frozenset[int] | None = None

    @property
    def root(self) -> bool:
        return self.uid == 0

    @property
    def groups(self) -> frozenset[int]:
        if self._groups is None:
            self._groups = _groups(self.pid)
        return self._groups

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def _groups(pid: int) -> frozenset[int]:
    """The supplementary groups of process `pid` (kept for a second: a process rarely
    changes them, and every request a process makes says them to the master)."""
    now = time.monotonic()
    known = _group_cache.get(pid)
    if known is not None and now - known[0] < GROUPS_TTL_S:
        return known[1]
    groups: frozenset[int] = frozenset()
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups = frozenset(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass
    if len(_group_cache) >= GROUPS_KEPT:
        _group_cache.clear()
    _group_cache[pid] = (now, groups)
    return groups


GROUPS_TTL_S = 1.0
GROUPS_KEPT = 4096
_group_cache: dict[int, tuple[float, frozenset[int]]] = {}


def denied(e: int = errno.EACCES) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(e)


def allowed(attr: m.Attr, who: Caller, want: int) -> bool:
    """generic_permission (`access.permits`: the mode bits or the access ACL)."""
    return access.permits(attr.mode, attr.uid, attr.gid, attr.acl, who, want)


def need(attr: m.Attr, who: Caller, want: int) -> None:
    if not allowed(attr, who, want):
        raise denied()


owner_or_root = access.owner_or_root
sticky_allows = access.sticky_allows
xattr_wants = access.xattr_wants


SPECIAL = frozenset((stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK))


def is_special(mode: int) -> bool:
    """A FIFO, socket or device: the kernel uses it without asking the file system, so
    its name is never cached by the kernel and its use is checked at lookup (intent.py)."""
    return stat.S_IFMT(mode) in SPECIAL


def check_special_use(attr: m.Attr, who: Caller) -> None:
    """EACCES unless `who` may do what the system call it is in does with special file
    `attr` (open it for reading or writing, connect to it)."""
    want = intent.wants_of_caller(who.pid, stat.S_ISSOCK(attr.mode))
    if want:
        need(attr, who, want)


def cacheable_children(directory: m.Attr) -> bool:
    """May the kernel keep names of this directory's children (and so skip the search
    check on it)? Only when everybody may search it."""
    return directory.mode & 0o111 == 0o111


def open_wants(flags: int) -> int:
    want = {os.O_RDONLY: R, os.O_WRONLY: W, os.O_RDWR: R | W}.get(flags & os.O_ACCMODE, R | W)
    if flags & os.O_TRUNC:
        want |= W
    if flags & EXEC_OPEN:
        want |= X
    return want


def xattr_wants(name: bytes, write: bool) -> int:
    """The permission a user.* extended attribute needs (the kernel itself handles the
    trusted.* and user.*-on-special-file rules; security.* and system.* need none)."""
    if name.startswith(b"user."):
        return W if write else R
    return 0


def check_setattr(attr: m.Attr, who: Caller, fields, new, fh, now_ns: int,
                  write_back: bool) -> int:
    """setattr_prepare (`access.check_setattr`) for a chmod, chown, utimes or truncate
    of `attr` by `who`. Returns the mode to set (set-group-ID dropped as the kernel
    drops it). Raises EPERM or EACCES. `new` holds the requested values (pyfuse3's
    EntryAttributes)."""
    # pyfuse3 hides UTIME_NOW: "now" is a time within two seconds of the clock. The
    # write-back cache sends the mtime of writes made through a writable open (an mtime
    # alone).
    touch = (fields.update_atime and fields.update_mtime
             and abs(new.st_atime_ns - now_ns) < TOUCH_WINDOW_NS
             and abs(new.st_mtime_ns - now_ns) < TOUCH_WINDOW_NS)
    try:
        mode = access.check_setattr(
            attr, who, size=fields.update_size, opened=fh is not None,
            mode=new.st_mode if fields.update_mode else None,
            uid=new.st_uid if fields.update_uid else None,
            gid=new.st_gid if fields.update_gid else None,
            times=fields.update_atime or fields.update_mtime, touch=touch,
            writer_mtime=write_back and fields.update_mtime and not fields.update_atime)
    except access.Denied as e:
        raise denied(e.errno) from None
    return new.st_mode if mode is None else mode


def check_hardlink(attr: m.Attr, who: Caller) -> None:
    """may_linkat with fs.protected_hardlinks (on by default, as the master assumes)."""
    if protected_hardlinks() and not access.hardlink_allowed(attr, who):
        raise denied(errno.EPERM)


_protected: bool | None = None


def protected_hardlinks() -> bool:
    global _protected
    if _protected is None:
        try:
            with open("/proc/sys/fs/protected_hardlinks") as f:
                _protected = f.read().strip() != "0"
        except OSError:
            _protected = True
    return _protected
