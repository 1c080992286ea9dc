"""The master's permission checks (elkfs/master/authority.py), rule by rule, on a
namespace; tests/integration/test_authority.py makes the same requests over the wire."""

from __future__ import annotations

import errno
import stat

import pytest

from elkfs import access
from elkfs.access import Who
from elkfs.master import authority
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

from .test_decoders_fuzz import SESSION, _namespace
from .test_namespace import ROOT

ROOT_WHO, NOBODY, MEMBER = Who(0, 0), Who(65534, 65534), Who(1000, 1000, [1234])
NOW = 10**18
A, B, C, D = 2, 3, 4, 5  # /a (root 0755), /b (65534 1777), /a/c (root 0600), /b/a (1000)


def err(ns, who, op) -> int:
    with pytest.raises(FsError) as e:
        authority.check(ns, who, op, SESSION, NOW)
    return e.value.status


def test_every_op_has_a_rule():
    for cls in m.AnyOp.__args__:
        assert cls in authority._CHECKS or cls in authority._FREE, cls.__name__


def test_the_pure_core_imports_no_io():
    import ast
    import os

    src = open(os.path.join(os.path.dirname(authority.__file__), "authority.py")).read()
    names = {a.name.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import)
             for a in n.names}
    assert not names & {"asyncio", "time", "random", "socket", "os"}


def test_search_read_and_data():
    ns, _ = _namespace()
    ns.nodes[A].mode = stat.S_IFDIR | 0o711
    authority.check(ns, NOBODY, m.Lookup(A, b"c"), SESSION, 0)  # x suffices
    assert err(ns, NOBODY, m.ReadDir(A)) == errno.EACCES
    ns.nodes[A].mode = stat.S_IFDIR | 0o700
    assert err(ns, NOBODY, m.Lookup(A, b"c")) == errno.EACCES
    for op in (m.ReadChunk(C, 0), m.Acquire(C, access.R), m.WriteChunk(C, 0),
               m.Truncate(C, 0)):
        assert err(ns, NOBODY, op) == errno.EACCES
        authority.check(ns, ROOT_WHO, op, SESSION, 0)


def test_open_for_writing_lets_the_session_write():
    ns, (apply, _) = _namespace()
    ns.nodes[C].uid = 65534  # nobody's 0600 file
    apply(m.Acquire(C, access.R | access.W))
    ns.nodes[C].mode = stat.S_IFREG | 0o400
    authority.check(ns, NOBODY, m.WriteChunk(C, 0), SESSION, 0)
    authority.check(ns, NOBODY, m.Truncate(C, 0), SESSION, 0)
    apply(m.Release(C))
    assert err(ns, NOBODY, m.WriteChunk(C, 0)) == errno.EACCES


def test_creates_belong_to_their_creator():
    ns, _ = _namespace()
    reg = stat.S_IFREG | 0o4755
    assert err(ns, NOBODY, m.Mknod(B, b"x", reg, 0, 0)) == errno.EPERM
    assert err(ns, NOBODY, m.Mknod(B, b"x", reg, 65534, 1234)) == errno.EPERM
    authority.check(ns, NOBODY, m.Mknod(B, b"x", reg, 65534, 65534), SESSION, 0)
    authority.check(ns, MEMBER, m.Mknod(B, b"x", reg, 1000, 1234), SESSION, 0)
    assert err(ns, NOBODY, m.Mknod(A, b"x", reg, 65534, 65534)) == errno.EACCES
    # a set-group-ID directory: its group, and set-group-ID dropped for non-members
    ns.nodes[B].mode = stat.S_IFDIR | 0o3777
    ns.nodes[B].gid = 1234
    op = authority.check(ns, NOBODY, m.Mknod(B, b"y", stat.S_IFREG | 0o2775, 65534, 1234),
                         SESSION, 0)
    assert stat.S_IMODE(op.mode) == 0o775
    op = authority.check(ns, MEMBER, m.Mknod(B, b"y", stat.S_IFREG | 0o2775, 1000, 1000),
                         SESSION, 0)
    assert stat.S_IMODE(op.mode) == 0o2775


def test_sticky_and_setattr():
    ns, _ = _namespace()
    ns.nodes[D].uid = 65534
    assert err(ns, MEMBER, m.Unlink(B, b"a")) == errno.EPERM  # sticky, not the owner
    authority.check(ns, NOBODY, m.Unlink(B, b"a"), SESSION, 0)  # the directory's owner
    assert err(ns, NOBODY, m.SetAttr(A, m.SET_MODE, 0o777)) == errno.EPERM
    assert err(ns, NOBODY, m.SetAttr(B, m.SET_UID, uid=0)) == errno.EPERM
    authority.check(ns, NOBODY, m.SetAttr(B, m.SET_ATIME_NOW | m.SET_MTIME_NOW), SESSION, 0)
    assert err(ns, MEMBER, m.SetAttr(B, m.SET_ATIME | m.SET_MTIME, atime_ns=1,
                                     mtime_ns=1)) == errno.EPERM
    # chmod by the owner outside the group drops set-group-ID
    op = authority.check(ns, NOBODY, m.SetAttr(D, m.SET_MODE, 0o2755), SESSION, 0)
    assert op.mode == 0o755


def test_xattr_namespaces_found_by_the_live_fuzz():
    """A name in no namespace (b"a") was stored on root's directory by anyone."""
    ns, _ = _namespace()
    assert err(ns, NOBODY, m.SetXattr(1, b"a", b"1")) == errno.EOPNOTSUPP
    assert err(ns, NOBODY, m.RemoveXattr(1, b"a")) == errno.EOPNOTSUPP
    assert err(ns, NOBODY, m.SetXattr(B, b"system.other", b"1")) == errno.EOPNOTSUPP
    authority.check(ns, NOBODY, m.SetXattr(B, b"user.a", b"1"), SESSION, NOW)  # its own
    assert err(ns, NOBODY, m.SetXattr(A, b"user.a", b"1")) == errno.EACCES
    authority.check(ns, ROOT_WHO, m.SetXattr(1, b"a", b"1"), SESSION, NOW)


def test_a_setattr_of_nothing_is_not_a_way_to_touch_the_ctime():
    """Found by the live fuzz: SetAttr(valid=0) or a ctime alone by anyone."""
    ns, _ = _namespace()
    for valid in (0, m.SET_CTIME):
        assert err(ns, NOBODY, m.SetAttr(1, valid, ctime_ns=5)) == errno.EPERM
        authority.check(ns, NOBODY, m.SetAttr(B, valid, ctime_ns=5), SESSION, NOW)  # owner


def test_a_symlink_is_changed_by_its_owner_only():
    """Found by the live fuzz: a symlink's 0777 let anyone touch its ctime."""
    ns, _ = _namespace()
    link = 6  # /a/b -> ../b, root's
    assert stat.S_ISLNK(ns.nodes[link].mode)
    for op in (m.SetAttr(link, m.SET_ATIME_NOW | m.SET_MTIME_NOW), m.SetAttr(link, 0)):
        assert err(ns, NOBODY, op) == errno.EPERM
