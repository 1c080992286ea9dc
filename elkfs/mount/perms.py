"""POSIX permission checks done by the mount (pure: no I/O but the caller's groups).

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

import pyfuse3

from .. import access
from ..proto import messages as m

R, W, X = 4, 2, 1
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

    def in_group(self, gid: int) -> bool:
        if gid == self.gid:
            return True
        if self._groups is None:
            self._groups = _groups(self.pid)
        return gid in self._groups


def _groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def denied(e: int = errno.EACCES) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(e)


def allowed(attr: m.Attr, who: Caller, want: int) -> bool:
    """generic_permission: the owner's, the group's or the others' bits, or the access
    ACL when the file has one (`elkfs/access.py`); root may read and write anything,
    search any directory, and execute a file that has any execute bit."""
    if who.root:
        return not want & X or stat.S_ISDIR(attr.mode) or bool(attr.mode & 0o111)
    if attr.acl:
        try:
            entries = access.parse(attr.acl)
        except access.AclError:
            entries = None
        if entries:
            return access.allows(entries, attr.uid, attr.gid, who.uid, who.in_group, want)
    if who.uid == attr.uid:
        bits = attr.mode >> 6
    elif who.in_group(attr.gid):
        bits = attr.mode >> 3
    else:
        bits = attr.mode
    return bits & want == want


def need(attr: m.Attr, who: Caller, want: int) -> None:
    if not allowed(attr, who, want):
        raise denied()


def owner_or_root(attr: m.Attr, who: Caller) -> bool:
    return who.root or who.uid == attr.uid


def sticky_allows(directory: m.Attr, victim: m.Attr, who: Caller) -> bool:
    """may_delete's sticky rule: in a sticky directory only the owner of the entry, the
    owner of the directory or root may remove or rename it."""
    return (not directory.mode & stat.S_ISVTX or who.root or who.uid == victim.uid
            or who.uid == directory.uid)


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
    """setattr_prepare for a chmod, chown, utimes or truncate of `attr` by `who`.
    Returns the mode to set (set-group-ID dropped as the kernel drops it). Raises EPERM
    or EACCES. `new` holds the requested values (pyfuse3's EntryAttributes)."""
    mode = new.st_mode
    if fields.update_size and fh is None:
        need(attr, who, W)
    if fields.update_mode:
        # The kernel itself clears set-user-ID and set-group-ID when someone else writes
        # the file (file_remove_privs), as that writer: allowed to those who may write.
        kill_priv = (stat.S_IMODE(mode) | stat.S_ISUID | stat.S_ISGID
                     == stat.S_IMODE(attr.mode) | stat.S_ISUID | stat.S_ISGID
                     and stat.S_IMODE(mode) != stat.S_IMODE(attr.mode))
        if not owner_or_root(attr, who) and not (kill_priv and allowed(attr, who, W)):
            raise denied(errno.EPERM)
        gid = new.st_gid if fields.update_gid else attr.gid
        if not who.root and not who.in_group(gid):
            mode &= ~stat.S_ISGID
    if fields.update_uid and not who.root and (who.uid != attr.uid or new.st_uid != attr.uid):
        raise denied(errno.EPERM)
    if fields.update_gid and not who.root and (
            who.uid != attr.uid or (new.st_gid != attr.gid and not who.in_group(new.st_gid))):
        raise denied(errno.EPERM)
    if (fields.update_atime or fields.update_mtime) and not owner_or_root(attr, who) \
            and not fields.update_size:  # a truncate's own times: its write check did
        # Others may only set both times to now (`touch`, utimensat(UTIME_NOW)), and only
        # if they may write the file. pyfuse3 hides UTIME_NOW: "now" is a time within two
        # seconds of the clock. The write-back cache also sends the mtime of writes made
        # through a writable open (an mtime alone): allowed to those who may write.
        touch = (fields.update_atime and fields.update_mtime
                 and abs(new.st_atime_ns - now_ns) < 2_000_000_000
                 and abs(new.st_mtime_ns - now_ns) < 2_000_000_000)
        kernel_mtime = write_back and not fields.update_atime
        if not (touch or kernel_mtime):
            raise denied(errno.EPERM)
        if not allowed(attr, who, W):
            raise denied(errno.EACCES if touch else errno.EPERM)
    return mode


def check_hardlink(attr: m.Attr, who: Caller) -> None:
    """may_linkat with fs.protected_hardlinks (on by default): a user may hard link only a
    file they own, or a regular file they may read and write that is not set-ID."""
    if who.root or who.uid == attr.uid or not protected_hardlinks():
        return
    if (not stat.S_ISREG(attr.mode) or attr.mode & stat.S_ISUID
            or attr.mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP
            or not allowed(attr, who, R | W)):
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
