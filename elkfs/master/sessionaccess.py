"""What one client session may do, by the export rule it registered under
(`elkfs/master/exports.py`): the one place the master checks a request against the
session's rule and gives it the rule's identity.

`admit(ns, access, op)` returns the op to run (creator ids mapped by maproot/mapall), or
raises `FsError`:

- EACCES: the session lost its right (the exports were reloaded), an inode outside the
  session's root, the trash from a session that is not allowed it, or a file operation
  from a meta session;
- EROFS: a change through a read-only export;
- EPERM: a goal or trash time outside the export's range (refused as MooseFS does, not
  clamped).

The root: a session sees the tree below its root directory only. A directory is inside
when its parent chain reaches the root; a file has no parent pointer, so a session knows
the files it was shown (looked up, listed, created: `learn`) and, the first time it names
another one, the whole tree below its root is walked once to learn them (after a
reconnect). `..` of the root is the root. Symlinks are resolved by the client's kernel
against its own root, never by the master, so they cannot lead out either.

Pure: no I/O; the namespace is read, never changed.
"""

from __future__ import annotations

import errno
import stat

import msgspec

from ..proto import messages as m
from ..proto.errors import FsError
from . import exports

ROOT = 1
# Changes that do not write the file system: allowed through a read-only export.
NOT_WRITES = (m.Acquire, m.Release, m.ReleaseMany, m.SetLock, m.ReleaseLocks, m.EndSession)
TRASH_OPS = (m.ListTrash, m.Undelete, m.PurgeTrash)
META_SESSION_OPS = TRASH_OPS + (m.StatFs, m.EndSession)
CREATORS = (m.Mknod, m.Mkdir, m.Symlink, m.Snapshot)  # ops that carry the creator's ids
INODE_FIELDS = ("inode", "parent", "new_parent", "dst_parent")


class SessionAccess:
    """A session's rule and where it stands (volatile: rebuilt at every registration)."""

    __slots__ = ("rule", "ip", "path", "proven", "root", "revoked", "known", "scanned",
                 "unlimited", "tool_token", "parent")

    def __init__(self, rule: exports.Rule, ip: int | None, path: tuple[bytes, ...] | None,
                 proven: frozenset[bytes], root: int):
        self.rule = rule
        self.ip = ip
        self.path = path  # what the client asked for (None: the meta file system)
        self.proven = proven  # password digests the client proved it knows
        self.root = root
        self.revoked = ""  # why the session lost its right (a reload), or ""
        self.known: set[int] = set()  # files (not directories) shown to a rooted session
        self.scanned = False
        self.unlimited = False
        # The secret a client tool proves to ride on this session (`password.tool_token`;
        # only for a session registered with a password; never shown, never logged), and
        # for a tool's session, the session it rides on (b"": none).
        self.tool_token = b""
        self.parent = b""
        self._rule_changed()

    def _rule_changed(self) -> None:
        # Nothing to check or map (the default rules): requests pass untouched.
        rule = self.rule
        self.unlimited = (not self.revoked and not rule.readonly and self.root == ROOT
                          and self.path is not None and rule.maproot[0] == 0
                          and rule.mapall is None and rule.mingoal == 1
                          and rule.maxgoal == exports.MAX_GOAL and rule.mintrashtime == 0
                          and rule.maxtrashtime == exports.MAX_TRASHTIME)

    @property
    def meta(self) -> bool:
        return self.path is None

    def recheck(self, rules: list[exports.Rule]) -> None:
        """The exports were reloaded: keep the session's best rule now, or revoke it."""
        verdict = exports.choose(rules, self.ip, self.path, self.proven)
        if verdict.rule is None:
            self.revoked = verdict.reason
        else:
            self.rule, self.revoked = verdict.rule, ""
        self._rule_changed()

    def identity(self, uid: int, gid: int, groups=()) -> tuple[int, int, tuple]:
        """The identity a request by (uid, gid, groups) acts as."""
        return exports.map_identity(self.rule, uid, gid, groups)


def resolve_root(ns, path: tuple[bytes, ...]) -> int:
    """The inode of the directory `path` (components from the real root)."""
    inode = ROOT
    for name in path:
        node = ns.lookup(inode, name)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR, "/" + b"/".join(path).decode(errors="replace"))
        inode = node.inode
    return inode


def admit(ns, access: SessionAccess, op: m.Op) -> m.Op:
    if access.unlimited or type(op) is m.EndSession:
        return op
    rule = access.rule
    if access.revoked:
        raise FsError(errno.EACCES, f"no longer allowed: {access.revoked}")
    if access.meta:
        if not isinstance(op, META_SESSION_OPS):
            raise FsError(errno.EACCES, "a meta session has the trash only")
    elif isinstance(op, TRASH_OPS) and access.root != ROOT:
        # The trash shows paths of the whole tree: a normal session reaches it only
        # through an export of "/" (else: mount the meta file system).
        raise FsError(errno.EACCES, "the trash needs the meta file system")
    if rule.readonly and not op.READ_ONLY and not isinstance(op, NOT_WRITES):
        raise FsError(errno.EROFS, "read-only export")
    if isinstance(op, m.SetGoal) and not rule.mingoal <= op.goal <= rule.maxgoal:
        raise FsError(errno.EPERM, f"goal must be {rule.mingoal}-{rule.maxgoal} here")
    if isinstance(op, m.SetTrashTime) and \
            not rule.mintrashtime <= op.trashtime <= rule.maxtrashtime:
        raise FsError(errno.EPERM, f"trash time must be {rule.mintrashtime}-"
                                   f"{rule.maxtrashtime} s here")
    if access.root != ROOT and not access.meta:
        for inode in inodes_of(op):
            if not inside(ns, access, inode):
                raise FsError(errno.EACCES, f"inode {inode} is outside the exported tree")
        if type(op) is m.Lookup and op.parent == access.root and op.name == b"..":
            op = m.Lookup(op.parent, b".")  # the root's parent is the root
    if isinstance(op, CREATORS):
        uid, gid = exports.map_ids(rule, op.uid, op.gid)
        if (uid, gid) != (op.uid, op.gid):
            op = _replace_ids(op, uid, gid)
    return op


def _replace_ids(op, uid: int, gid: int):
    return msgspec.structs.replace(op, uid=uid, gid=gid)


def inodes_of(op: m.Op) -> list[int]:
    """The inodes `op` names (what a rooted session must be allowed to reach)."""
    found = []
    for name in INODE_FIELDS:
        value = getattr(op, name, None)
        if type(value) is int:
            found.append(value)
    return found


def inside(ns, access: SessionAccess, inode: int) -> bool:
    node = ns.nodes.get(inode)
    if node is None:
        return True  # the namespace answers ENOENT
    if node.is_dir:
        while inode != access.root:
            if inode == ROOT:
                return False
            inode = ns.nodes[inode].parent
        return True
    if inode in access.known:
        return True
    if not access.scanned:
        access.scanned = True
        _learn_tree(ns, access)
    return inode in access.known


def _learn_tree(ns, access: SessionAccess) -> None:
    stack = [access.root]
    while stack:
        directory = ns.nodes.get(stack.pop())
        if directory is None or not directory.is_dir:
            continue
        for child in directory.children.values():
            if ns.nodes[child].is_dir:
                stack.append(child)
            else:
                access.known.add(child)


def learn(access: SessionAccess, result) -> None:
    """Remember the files a rooted session was shown (directories need not be)."""
    if access.root == ROOT or result is None:
        return
    if isinstance(result, m.DirNamesOut):
        access.known.update(inode for inode, mode in zip(result.inodes, result.modes)
                            if not stat.S_ISDIR(mode))
        return
    if isinstance(result, m.DirOut):
        attrs = [e.attr for e in result.entries]
    else:
        attr = getattr(result, "attr", None)
        attrs = [attr] if isinstance(attr, m.Attr) else []
    for attr in attrs:
        if not stat.S_ISDIR(attr.mode):
            access.known.add(attr.inode)
