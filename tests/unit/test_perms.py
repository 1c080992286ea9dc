"""The mount's permission rules (elkfs/mount/perms.py) one by one; the FUSE test
tests/fuse/test_permissions.py compares them with a local file system end to end."""

from __future__ import annotations

import errno
import stat
import types

import pyfuse3
import pytest

from elkfs.mount import perms
from elkfs.mount.perms import EXEC_OPEN, R, W, X, Caller
from elkfs.proto import messages as m

NOW = 1_800_000_000 * 10**9


def attr(mode: int, uid: int = 100, gid: int = 200, kind: int = stat.S_IFREG) -> m.Attr:
    return m.Attr(7, kind | mode, uid, gid, 0, 0, 0, 1, 0, 0, 0, 0)


def caller(uid: int, gid: int = 999, groups: tuple[int, ...] = ()) -> Caller:
    who = Caller(types.SimpleNamespace(uid=uid, gid=gid, pid=1))
    who._groups = frozenset(groups)  # instead of /proc/PID/status
    return who


def fields(**set_) -> types.SimpleNamespace:
    names = ("update_size", "update_mode", "update_uid", "update_gid", "update_atime",
             "update_mtime", "update_ctime")
    return types.SimpleNamespace(**{n: set_.get(n, False) for n in names})


def new(mode=0, uid=0, gid=0, atime=0, mtime=0) -> types.SimpleNamespace:
    return types.SimpleNamespace(st_mode=mode, st_uid=uid, st_gid=gid, st_atime_ns=atime,
                                 st_mtime_ns=mtime)


def errno_of(fn, *args) -> int:
    with pytest.raises(pyfuse3.FUSEError) as e:
        fn(*args)
    return e.value.errno


def test_owner_group_other_bits_and_root():
    a = attr(0o640)
    assert perms.allowed(a, caller(100), R | W)
    assert not perms.allowed(a, caller(100), X)
    assert perms.allowed(a, caller(5, gid=200), R) and not perms.allowed(a, caller(5, 200), W)
    assert perms.allowed(a, caller(5, groups=(200,)), R)  # a supplementary group
    assert not perms.allowed(a, caller(5), R)
    # the owner's bits apply to the owner even when the others' bits are wider
    assert not perms.allowed(attr(0o007), caller(100), R)
    root = caller(0)
    assert perms.allowed(a, root, R | W)
    assert not perms.allowed(a, root, X)  # no execute bit at all
    assert perms.allowed(attr(0o100), root, X)
    assert perms.allowed(attr(0o000, kind=stat.S_IFDIR), root, X)  # search any directory


def test_sticky_directories():
    d = attr(0o1777, uid=1, kind=stat.S_IFDIR)
    theirs, mine = attr(0o666, uid=2), attr(0o644, uid=3)
    assert not perms.sticky_allows(d, theirs, caller(3))
    assert perms.sticky_allows(d, mine, caller(3))
    assert perms.sticky_allows(d, theirs, caller(1))  # the directory's owner
    assert perms.sticky_allows(d, theirs, caller(0))
    assert perms.sticky_allows(attr(0o777, kind=stat.S_IFDIR), theirs, caller(3))


def test_which_directories_the_kernel_may_cache_names_of():
    assert perms.cacheable_children(attr(0o755, kind=stat.S_IFDIR))
    assert perms.cacheable_children(attr(0o711, kind=stat.S_IFDIR))
    for mode in (0o700, 0o750, 0o744, 0o705):
        assert not perms.cacheable_children(attr(mode, kind=stat.S_IFDIR))


def test_open_flags():
    import os

    assert perms.open_wants(os.O_RDONLY) == R
    assert perms.open_wants(os.O_WRONLY | os.O_APPEND) == W
    assert perms.open_wants(os.O_RDWR) == R | W
    assert perms.open_wants(os.O_RDONLY | os.O_TRUNC) == R | W
    assert perms.open_wants(os.O_RDONLY | EXEC_OPEN) == R | X


def test_xattr_namespaces():
    assert perms.xattr_wants(b"user.a", False) == R and perms.xattr_wants(b"user.a", True) == W
    assert perms.xattr_wants(b"security.capability", False) == 0
    assert perms.xattr_wants(b"trusted.x", True) == 0  # the kernel decides those


def check(a, who, f, n, fh=None, write_back=True):
    return perms.check_setattr(a, who, f, n, fh, NOW, write_back)


def test_chmod():
    a = attr(0o644, uid=100, gid=200)
    assert errno_of(check, a, caller(5), fields(update_mode=True), new(0o600)) == errno.EPERM
    assert check(a, caller(100, gid=200), fields(update_mode=True), new(0o2755)) == 0o2755
    # the owner outside the file's group loses set-group-ID, as on Linux
    assert check(a, caller(100, gid=1), fields(update_mode=True), new(0o2755)) == 0o755
    assert check(a, caller(0), fields(update_mode=True), new(0o2755)) == 0o2755


def test_the_kernels_own_set_id_clearing_after_a_write_by_another_user():
    a = attr(0o6777, uid=100)
    assert check(a, caller(5), fields(update_mode=True), new(0o777)) == 0o777
    # only clearing, and only by someone who may write
    assert errno_of(check, a, caller(5), fields(update_mode=True), new(0o700)) == errno.EPERM
    b = attr(0o6755, uid=100)
    assert errno_of(check, b, caller(5), fields(update_mode=True), new(0o755)) == errno.EPERM


def test_chown_and_chgrp():
    a = attr(0o644, uid=100, gid=200)
    assert errno_of(check, a, caller(100), fields(update_uid=True), new(uid=5)) == errno.EPERM
    assert check(a, caller(100), fields(update_uid=True), new(0o644, uid=100)) == 0o644
    assert errno_of(check, a, caller(5), fields(update_uid=True), new(uid=100)) == errno.EPERM
    member = caller(100, groups=(300,))
    check(a, member, fields(update_gid=True), new(gid=300))
    assert errno_of(check, a, member, fields(update_gid=True), new(gid=400)) == errno.EPERM
    assert errno_of(check, a, caller(5, groups=(300,)), fields(update_gid=True),
                    new(gid=300)) == errno.EPERM
    check(a, caller(0), fields(update_uid=True, update_gid=True), new(uid=1, gid=1))


def test_times():
    a = attr(0o666, uid=100)  # writable by anyone
    ro = attr(0o644, uid=100)
    both = fields(update_atime=True, update_mtime=True)
    now = new(atime=NOW, mtime=NOW + 10**9)
    then = new(atime=10**9, mtime=10**9)
    check(a, caller(5), both, now)  # touch by a writer
    assert errno_of(check, ro, caller(5), both, now) == errno.EACCES
    assert errno_of(check, a, caller(5), both, then) == errno.EPERM
    check(ro, caller(100), both, then)  # the owner sets any time
    # an mtime alone: the write-back cache's, from a writer
    mtime = fields(update_mtime=True, update_ctime=True)
    check(a, caller(5), mtime, new(mtime=10**9))
    assert errno_of(check, ro, caller(5), mtime, new(mtime=NOW)) == errno.EPERM
    assert errno_of(check, a, caller(5), mtime, new(mtime=10**9), None, False) == errno.EPERM


def test_truncate():
    ro = attr(0o644, uid=100)
    size = fields(update_size=True, update_mtime=True, update_ctime=True)
    assert errno_of(check, ro, caller(5), size, new(mtime=NOW)) == errno.EACCES
    check(attr(0o666, uid=100), caller(5), size, new(mtime=NOW), None, False)
    check(ro, caller(5), size, new(mtime=NOW), 3)  # ftruncate: the open checked


def test_hard_links(monkeypatch):
    monkeypatch.setattr(perms, "_protected", True)
    perms.check_hardlink(attr(0o600, uid=5), caller(5))  # one's own file
    perms.check_hardlink(attr(0o666, uid=1), caller(5))
    for mode in (0o644, 0o4666, 0o2676):
        assert errno_of(perms.check_hardlink, attr(mode, uid=1), caller(5)) == errno.EPERM
    assert errno_of(perms.check_hardlink, attr(0o666, uid=1, kind=stat.S_IFIFO),
                    caller(5)) == errno.EPERM
    monkeypatch.setattr(perms, "_protected", False)
    perms.check_hardlink(attr(0o600, uid=1), caller(5))
