"""The master's permission checks: may this identity make this request?

The master is the authority: whatever a client checked itself (a mount checks first,
against its cached attributes), every request is checked here against the current
metadata, with the rules of `elkfs/access.py` (the module the mount uses too). Pure: the
namespace, the request's identity, the op and the clock go in; the op to apply comes out
(changed where the kernel would change it: a set-group-ID bit dropped), or `FsError`
(EACCES or EPERM) with nothing changed.

The protocol names files by inode, as MooseFS's does: search permission is checked at
each `Lookup` (the step of a path walk), and an op on an inode is checked on that inode
(read and write permission on the file, write and search on the directory changed).
Data: a session reads or writes a file it opened for that (`Acquire.want`, checked at
open, as POSIX checks at open) or that the identity may read or write now.

Root (uid 0) may do everything POSIX lets root do.

Ops covering a whole tree (a non-root identity's recursive SetGoal/SetTrashTime, a
Snapshot of a directory) are checked entry by entry with one rule, `tree_entry_refusal`:
in one go here for small trees, in bounded steps by the long op for big ones (see "whole
trees" below and elkfs/master/longops.py).
"""

from __future__ import annotations

import errno
import math
import stat

import msgspec

from .. import access
from ..access import R, W, X, Who
from ..proto import messages as m
from ..proto.errors import FsError
from .nodes import DirNode, Node
from .treewalk import TreeWalk

# Ops that need no permission: attributes, listings of extended attribute names, file
# system totals, link targets, closes, locks of a file one has (or had) open.
_FREE = (m.GetAttr, m.ReadLink, m.ListXattr, m.StatFs, m.ClusterInfo, m.Release,
         m.ReleaseMany, m.EndSession, m.SetLock, m.ReleaseLocks, m.GetLock, m.DirStats,
         m.BadCopy)  # BadCopy only makes the chunkserver check its copy itself


KNOWN_XATTR_NAMESPACES = (b"user.", b"system.", b"security.", b"trusted.")


class _View:
    """What a permission rule reads of a node: mode, owner, group, access ACL."""

    __slots__ = ("mode", "uid", "gid", "acl")

    def __init__(self, node: Node):
        self.mode = node.mode
        self.uid = node.uid
        self.gid = node.gid
        xattrs = node.xattrs
        self.acl = xattrs.get(access.ACCESS, b"") if xattrs else b""


def _denied(e: access.Denied, what: str) -> FsError:
    return FsError(e.errno, what)


def _need(node: Node, who: Who, want: int, what: str) -> None:
    try:
        access.need(_View(node), who, want)
    except access.Denied as e:
        raise _denied(e, what) from None


def _may_remove(ns, directory: DirNode, name: bytes, who: Who) -> Node | None:
    """may_delete: write and search on the directory, and the sticky rule. Returns the
    entry (None when absent: the op itself answers ENOENT)."""
    _need(directory, who, W | X, "no write permission on the directory")
    inode = directory.children.get(name)
    if inode is None:
        return None
    victim = ns.nodes[inode]
    if not access.sticky_allows(directory, victim, who):
        raise FsError(errno.EPERM, "sticky directory: not the owner")
    return victim


def _owner(node: Node, who: Who, what: str) -> None:
    if not access.owner_or_root(node, who):
        raise FsError(errno.EPERM, what)


def _opened(ns, session: bytes, inode: int, write: bool) -> bool:
    sess = ns.sessions.get(session)
    if sess is None:
        return False
    return inode in (sess.writable if write else sess.open_files)


def check(ns, who: Who, op: m.Op, session: bytes, now_ns: int, tree: bool = True) -> m.Op:
    """The op to apply for `who`, or FsError. Nodes an op names that do not exist are
    left to the op itself (it answers ENOENT, ENOTDIR, ...). `tree=False`: of an op
    covering a tree, only its top (the long op checks the rest in steps)."""
    if isinstance(op, _FREE):
        return op
    if who.root and not (type(op) is m.Acquire and op.want & X):
        return op  # root may (it executes only what has an execute bit: see Acquire)
    checker = _CHECKS.get(type(op))
    if checker is None:
        raise FsError(errno.EPERM, f"{type(op).__name__}: not allowed")
    out = checker(ns, who, op, session, now_ns) or op
    if tree and needs_tree_check(ns, who, op):
        TreeCheck(ns, who, op).step(math.inf)  # a small tree: in one go
    return out


def _node(ns, inode: int) -> Node | None:
    return ns.nodes.get(inode)


def _dir(ns, inode: int) -> DirNode | None:
    node = ns.nodes.get(inode)
    return node if isinstance(node, DirNode) else None


def _lookup(ns, who, op: m.Lookup, session, now_ns):
    directory = _dir(ns, op.parent)
    if directory is not None:
        _need(directory, who, X, "no search permission on the directory")


def _readdir(ns, who, op: m.ReadDir, session, now_ns):
    directory = _dir(ns, op.inode)
    if directory is not None:
        _need(directory, who, R, "no read permission on the directory")


def _getxattr(ns, who, op: m.GetXattr, session, now_ns):
    node = _node(ns, op.inode)
    if node is None:
        return
    if who.root:
        return
    if access.xattr_root_only(op.name, False):
        raise FsError(errno.EPERM, "trusted.* attributes are root's")
    if access.xattr_wants(op.name, False):
        _need(node, who, R, "no read permission")


def _read_data(ns, who, op, session, now_ns):
    """ReadChunk, FileChunks: the session opened the file, or may read it."""
    node = _node(ns, op.inode)
    if node is not None and not who.root and not _opened(ns, session, op.inode, False):
        _need(node, who, R, "no read permission (open the file first)")


def _write_data(ns, who, op, session, now_ns):
    """WriteChunk, WriteChunkEnd, AppendReserve: the session opened the file for
    writing, or may write it."""
    node = _node(ns, op.inode)
    if node is not None and not who.root and not _opened(ns, session, op.inode, True):
        _need(node, who, W, "no write permission (open the file for writing first)")


def _truncate(ns, who, op: m.Truncate, session, now_ns):
    node = _node(ns, op.inode)
    if node is None:
        return
    try:
        access.check_setattr(_View(node), who, size=True,
                             opened=_opened(ns, session, op.inode, True))
    except access.Denied as e:
        raise _denied(e, "no write permission") from None


def _acquire(ns, who, op: m.Acquire, session, now_ns):
    node = _node(ns, op.inode)
    if node is not None and op.want:
        _need(node, who, op.want, "open: permission denied")


def _create(ns, who, op, session, now_ns):
    """Mknod, Mkdir, Symlink: write and search on the directory; the new file is the
    caller's own (a set-group-ID directory's group is allowed)."""
    directory = _dir(ns, op.parent)
    if directory is None:
        return None
    _need(directory, who, W | X, "no write permission on the directory")
    if not access.new_owner_allowed(who, op.uid, op.gid, directory.mode, directory.gid):
        raise FsError(errno.EPERM, f"a new file belongs to its creator ({who.uid}), "
                                   f"not to {op.uid}:{op.gid}")
    if isinstance(op, m.Mknod):
        fmt = stat.S_IFMT(op.mode)
        if fmt in (stat.S_IFCHR, stat.S_IFBLK) and not who.root:
            raise FsError(errno.EPERM, "device files are root's to make")
    if isinstance(op, m.Mknod) and directory.mode & stat.S_ISGID and not who.root \
            and op.mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP \
            and not who.in_group(directory.gid):
        # inode_init_owner: a new file in a group its creator is not in (a set-group-ID
        # directory's) loses set-group-ID
        return msgspec.structs.replace(op, mode=op.mode & ~stat.S_ISGID)
    return None


def _link(ns, who, op: m.Link, session, now_ns):
    directory = _dir(ns, op.parent)
    node = _node(ns, op.inode)
    if directory is None or node is None:
        return
    _need(directory, who, W | X, "no write permission on the directory")
    if not access.hardlink_allowed(_View(node), who):
        raise FsError(errno.EPERM, "protected hard links: not the owner")


def _remove(ns, who, op, session, now_ns):
    directory = _dir(ns, op.parent)
    if directory is not None:
        _may_remove(ns, directory, op.name, who)


def _rename(ns, who, op: m.Rename, session, now_ns):
    src_dir, dst_dir = _dir(ns, op.parent), _dir(ns, op.new_parent)
    if src_dir is None or dst_dir is None:
        return
    src = _may_remove(ns, src_dir, op.name, who)
    dst = _may_remove(ns, dst_dir, op.new_name, who)
    if src_dir is not dst_dir:
        # a directory moved elsewhere gets a new "..": it must be writable
        for moved in (src, dst if op.flags & m.RENAME_EXCHANGE else None):
            if isinstance(moved, DirNode):
                _need(moved, who, W, "no write permission on the moved directory")


def _setattr(ns, who, op: m.SetAttr, session, now_ns):
    node = _node(ns, op.inode)
    if node is None:
        return None
    if stat.S_ISLNK(node.mode) and not access.owner_or_root(node, who):
        # a symlink's mode (0777) means nothing: only its owner changes it
        raise FsError(errno.EPERM, "only the owner (or root) may change a symlink")
    valid = op.valid
    times = bool(valid & (m.SET_ATIME | m.SET_MTIME | m.SET_ATIME_NOW | m.SET_MTIME_NOW))
    both_now = all(
        valid & now_bit or (valid & bit and abs(t - now_ns) < access.TOUCH_WINDOW_NS)
        for bit, now_bit, t in ((m.SET_ATIME, m.SET_ATIME_NOW, op.atime_ns),
                                (m.SET_MTIME, m.SET_MTIME_NOW, op.mtime_ns)))
    mtime_alone = bool(valid & (m.SET_MTIME | m.SET_MTIME_NOW)) and not valid & (
        m.SET_ATIME | m.SET_ATIME_NOW)
    try:
        mode = access.check_setattr(
            _View(node), who,
            mode=op.mode if valid & m.SET_MODE else None,
            uid=op.uid if valid & m.SET_UID else None,
            gid=op.gid if valid & m.SET_GID else None,
            times=times, touch=both_now,
            writer_mtime=mtime_alone and _opened(ns, session, op.inode, False))
    except access.Denied as e:
        raise _denied(e, "only the owner (or root) may") from None
    if not valid & (m.SET_MODE | m.SET_UID | m.SET_GID) and not times \
            and not access.owner_or_root(node, who) \
            and not access.permits(node.mode, node.uid, node.gid, _View(node).acl, who, W):
        # a ctime alone (the write-back cache's after a rename or link), or nothing but
        # the ctime the change itself sets: only from those who may change the file
        raise FsError(errno.EPERM, "only the owner or a writer may touch the ctime")
    if mode is not None and mode != op.mode:
        return msgspec.structs.replace(op, mode=mode)
    return None


def _setxattr(ns, who, op, session, now_ns):
    """SetXattr, RemoveXattr: user.* needs write permission, an ACL the owner, trusted.*
    and security.* root."""
    node = _node(ns, op.inode)
    if node is None or who.root:
        return
    if access.xattr_root_only(op.name, True):
        raise FsError(errno.EPERM, "trusted.* and security.* attributes are root's")
    if not op.name.startswith(KNOWN_XATTR_NAMESPACES):
        raise FsError(errno.EOPNOTSUPP, "extended attributes are user.*, system.*, "
                                        "security.* or trusted.*")
    if op.name in (access.ACCESS, access.DEFAULT):
        _owner(node, who, "only the owner (or root) may change an ACL")
    elif op.name.startswith(b"system."):
        raise FsError(errno.EOPNOTSUPP, "system.* attributes other than ACLs")
    elif access.xattr_wants(op.name, True):
        if op.name.startswith(b"user.") and not (
                stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
            raise FsError(errno.EPERM, "user.* attributes only on files and directories")
        _need(node, who, W, "no write permission")


def _subtree_owned(ns, who, op, session, now_ns):
    """SetGoal, SetTrashTime: the owner's (or root's); recursively, of every node in the
    tree too (MooseFS skips the others; here the request is refused and nothing changes):
    `tree_entry_refusal`, checked by `check` or, for a big tree, by the long op."""
    node = _node(ns, op.inode)
    if node is None or who.root:
        return
    _owner(node, who, "only the owner (or root) may")


def _snapshot(ns, who, op: m.Snapshot, session, now_ns):
    """The copy of a tree: all of it must be readable (`tree_entry_refusal`, checked as
    for SetGoal)."""
    src, directory = _node(ns, op.inode), _dir(ns, op.dst_parent)
    if src is None or directory is None:
        return
    _need(directory, who, W | X, "no write permission on the directory")
    if who.root:
        return
    if op.uid != who.uid or not who.in_group(op.gid):
        raise FsError(errno.EPERM, "a snapshot belongs to its maker")
    _need(src, who, R, "no read permission on the source")


# ---------------------------------------------------------------- whole trees
#
# A recursive SetGoal/SetTrashTime or a Snapshot of a directory by a non-root identity
# covers every entry of the tree, and each must pass `tree_entry_refusal`. Small trees
# are checked here in one go (`check`); a big one (over longops.ONE_STEP_MAX entries)
# would hold the master for seconds, so the long op checks it with a `TreeCheck` a
# bounded number of entries per step, then re-checks each entry its change steps touch
# (the tree may change between the two): one rule, three callers, no divergence.


def tree_entry_refusal(op: m.Op, node: Node, who: Who) -> FsError | None:
    """Why `who` may not have `op` (SetGoal, SetTrashTime, Snapshot) cover `node`, an
    entry of its tree (the top included); None when it may."""
    if type(op) is m.Snapshot:
        want = R | X if isinstance(node, DirNode) else R
        xattrs = node.xattrs
        acl = xattrs.get(access.ACCESS, b"") if xattrs else b""
        if not access.permits(node.mode, node.uid, node.gid, acl, who, want):
            return FsError(errno.EACCES, "no read permission in the source tree")
        return None
    if not access.owner_or_root(node, who):
        return FsError(errno.EPERM, "only the owner (or root) may: the tree holds "
                                    "others' files")
    return None


def needs_tree_check(ns, who: Who, op: m.Op) -> bool:
    """Whether `op` covers a tree whose every entry must be checked for `who`."""
    if who.root:
        return False
    kind = type(op)
    if kind in (m.SetGoal, m.SetTrashTime):
        if not op.recursive:
            return False
    elif kind is not m.Snapshot:
        return False
    return isinstance(ns.nodes.get(op.inode), DirNode)


class TreeCheck:
    """The entry-by-entry check of the tree `op` covers, a bounded number of entries at
    a time (reading only; the tree may change between steps: see treewalk.py)."""

    def __init__(self, ns, who: Who, op: m.Op):
        self.who = who
        self.op = op
        self.walk = TreeWalk(ns.nodes, op.inode)

    @property
    def visited(self) -> int:
        return self.walk.visited

    def step(self, limit: float) -> bool:
        """Check up to `limit` more entries; FsError at the first refused. True once
        every entry was checked."""
        op, who = self.op, self.who
        for node in self.walk.next_batch(limit):
            refusal = tree_entry_refusal(op, node, who)
            if refusal is not None:
                raise refusal
        return self.walk.done


def _root_only(ns, who, op, session, now_ns):
    """ListTrash, Undelete, PurgeTrash: the trash (everyone's deleted files and their
    paths) is the administrator's (the meta mount)."""
    if not who.root:
        raise FsError(errno.EPERM, "the trash is root's")


_CHECKS = {
    m.Lookup: _lookup, m.ReadDir: _readdir, m.GetXattr: _getxattr,
    m.ReadChunk: _read_data, m.FileChunks: _read_data,
    m.WriteChunk: _write_data, m.WriteChunkEnd: _write_data, m.AppendReserve: _write_data,
    m.Truncate: _truncate, m.Acquire: _acquire,
    m.Mknod: _create, m.Mkdir: _create, m.Symlink: _create, m.Link: _link,
    m.Unlink: _remove, m.Rmdir: _remove, m.Rename: _rename, m.SetAttr: _setattr,
    m.SetXattr: _setxattr, m.RemoveXattr: _setxattr,
    m.SetGoal: _subtree_owned, m.SetTrashTime: _subtree_owned, m.Snapshot: _snapshot,
    m.ListTrash: _root_only, m.Undelete: _root_only, m.PurgeTrash: _root_only,
}
