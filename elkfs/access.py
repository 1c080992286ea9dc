"""Who may do what: POSIX permissions and POSIX.1e access control lists.

One implementation for the master (the authority: `elkfs/master/authority.py` checks
every client request with it) and the mount (which checks the same rules against its
cached attributes first, `elkfs/mount/perms.py`). Pure (no I/O). The rules are Linux's:

- `permits` is `generic_permission` (`fs/namei.c`): the owner's, the group's or the
  others' bits, or the access ACL; root may read and write anything, search any
  directory and execute a file that has any execute bit.
- `sticky_allows` is `may_delete`'s sticky rule, `hardlink_allowed` `may_linkat` with
  `fs.protected_hardlinks`, `check_setattr` `setattr_prepare` (chmod, chown, utimes,
  truncate).

ACLs (`fs/posix_acl.c`):

- An ACL is stored as the extended attribute `system.posix_acl_access` (and a directory's
  default ACL as `system.posix_acl_default`) in Linux's xattr form: a little-endian u32
  version 2, then entries of (u16 tag, u16 perm, u32 id).
- The check (`posix_acl_permission`): the owner gets the USER_OBJ entry; a named user his
  USER entry, limited by the MASK; otherwise every group entry that matches the caller
  (GROUP_OBJ, named GROUPs) is tried, limited by the MASK, and if some matched but none
  grants, access is denied; only a caller matching nothing gets OTHER.
- The mode's group bits are the MASK (or GROUP_OBJ without one): chmod changes the MASK,
  and setting an ACL changes the mode (`posix_acl_equiv_mode`). An ACL that says no more
  than the mode is not kept.
- A new file or directory in a directory with a default ACL gets that ACL, cut down by
  the create mode and *without* the umask (`posix_acl_create`); a new directory also
  inherits the default ACL itself.
"""

from __future__ import annotations

import errno
import stat
import struct

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"

USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

Entry = tuple[int, int, int]  # (tag, perm, id)


class AclError(ValueError):
    """Not a valid ACL (the caller answers EINVAL)."""


def parse(value: bytes) -> list[Entry]:
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise AclError("bad ACL size")
    if _HEADER.unpack_from(value)[0] != VERSION:
        raise AclError("unknown ACL version")
    entries = [_ENTRY.unpack_from(value, pos)
               for pos in range(_HEADER.size, len(value), _ENTRY.size)]
    tags = [t for t, _, _ in entries]
    if not entries:
        return entries  # an empty default ACL: none
    for tag in (USER_OBJ, GROUP_OBJ, OTHER):
        if tags.count(tag) != 1:
            raise AclError("an ACL needs one owner, one group and one other entry")
    if tags.count(MASK) > 1:
        raise AclError("more than one mask")
    if (USER in tags or GROUP in tags) and MASK not in tags:
        raise AclError("named entries need a mask")
    for tag, perm, _ in entries:
        if tag not in (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER) or perm & ~7:
            raise AclError("bad ACL entry")
    named = [(t, i) for t, _, i in entries if t in (USER, GROUP)]
    if len(set(named)) != len(named):
        raise AclError("a user or group named twice")
    return entries


def encode(entries: list[Entry]) -> bytes:
    order = {USER_OBJ: 0, USER: 1, GROUP_OBJ: 2, GROUP: 3, MASK: 4, OTHER: 5}
    entries = sorted(entries, key=lambda e: (order[e[0]], e[2]))
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def allows(entries: list[Entry], owner: int, group: int, uid: int, in_group, want: int) -> bool:
    """posix_acl_permission for a caller other than root; `in_group(gid)` says whether
    the caller is in a group."""
    mask = next((p for t, p, _ in entries if t == MASK), 7)
    found = False
    for tag, perm, eid in entries:
        if tag == USER_OBJ and uid == owner:
            return perm & want == want
        if tag == USER and uid == eid:
            return perm & mask & want == want
    for tag, perm, eid in entries:
        if (tag == GROUP_OBJ and in_group(group)) or (tag == GROUP and in_group(eid)):
            found = True
            if perm & mask & want == want:
                return True
    if found:
        return False
    return next((p for t, p, _ in entries if t == OTHER), 0) & want == want


def mode_of(entries: list[Entry], mode: int) -> int:
    """The permission bits an ACL gives the file's mode (other bits of `mode` kept)."""
    perms = {t: p for t, p, _ in entries if t in (USER_OBJ, GROUP_OBJ, MASK, OTHER)}
    group = perms.get(MASK, perms.get(GROUP_OBJ, 0))
    return (mode & ~0o777) | perms.get(USER_OBJ, 0) << 6 | group << 3 | perms.get(OTHER, 0)


def is_minimal(entries: list[Entry]) -> bool:
    """The ACL says no more than the mode: it need not be kept."""
    return all(t in (USER_OBJ, GROUP_OBJ, OTHER) for t, _, _ in entries)


def chmod(entries: list[Entry], mode: int) -> list[Entry]:
    """posix_acl_chmod: the new mode's bits go to USER_OBJ, MASK (or GROUP_OBJ) and
    OTHER."""
    has_mask = any(t == MASK for t, _, _ in entries)
    out = []
    for tag, perm, eid in entries:
        if tag == USER_OBJ:
            perm = mode >> 6 & 7
        elif tag == MASK or (tag == GROUP_OBJ and not has_mask):
            perm = mode >> 3 & 7
        elif tag == OTHER:
            perm = mode & 7
        out.append((tag, perm, eid))
    return out


def inherit(default: list[Entry], mode: int) -> tuple[list[Entry] | None, int]:
    """posix_acl_create: the access ACL (None when the mode says it all) and the mode of
    a file created with `mode` (no umask) in a directory with `default`."""
    entries = []
    mask_at = group_at = None
    perm_mode = mode & 0o777
    for tag, perm, eid in default:
        if tag == USER_OBJ:
            perm &= perm_mode >> 6
            perm_mode &= (perm << 6) | 0o077
        elif tag == OTHER:
            perm &= perm_mode & 7
            perm_mode &= perm | 0o770
        elif tag == MASK:
            mask_at = len(entries)
        elif tag == GROUP_OBJ:
            group_at = len(entries)
        entries.append((tag, perm, eid))
    at = mask_at if mask_at is not None else group_at
    if at is not None:
        tag, perm, eid = entries[at]
        perm &= perm_mode >> 3 & 7
        perm_mode &= (perm << 3) | 0o707
        entries[at] = (tag, perm, eid)
    new_mode = (mode & ~0o777) | perm_mode
    return (None if is_minimal(entries) else entries), new_mode


# ---------------------------------------------------------------- permissions

R, W, X = 4, 2, 1
ROOT_UID = 0
TOUCH_WINDOW_NS = 2_000_000_000  # explicit times this close to the clock count as "now"


class Denied(Exception):
    """Not allowed: `errno` is EACCES (the permission bits say no) or EPERM (only the
    owner or root may)."""

    def __init__(self, errno_: int = errno.EACCES):
        super().__init__(errno_)
        self.errno = errno_


class Who:
    """Who makes a request: uid, primary gid and supplementary groups."""

    __slots__ = ("uid", "gid", "groups")

    def __init__(self, uid: int, gid: int, groups=()):
        self.uid = uid
        self.gid = gid
        self.groups = frozenset(groups)

    @property
    def root(self) -> bool:
        return self.uid == ROOT_UID

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def __repr__(self) -> str:
        return f"Who({self.uid}, {self.gid}, {sorted(self.groups)})"


def permits(mode: int, owner: int, group: int, acl: bytes, who, want: int) -> bool:
    """generic_permission for a file of `mode`, `owner`, `group` and access ACL `acl`
    (b"" for none). `who` has uid, root and in_group(gid) (a `Who` or the mount's
    caller)."""
    if who.root:
        return not want & X or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if acl:
        try:
            entries = parse(acl)
        except AclError:
            entries = None
        if entries:
            return allows(entries, owner, group, who.uid, who.in_group, want)
    if who.uid == owner:
        bits = mode >> 6
    elif who.in_group(group):
        bits = mode >> 3
    else:
        bits = mode
    return bits & want == want


def need(f, who, want: int) -> None:
    """Raise Denied(EACCES) unless `who` has `want` on `f` (anything with mode, uid,
    gid and acl: the mount's `Attr`, the master's attribute view)."""
    if not permits(f.mode, f.uid, f.gid, f.acl, who, want):
        raise Denied(errno.EACCES)


def owner_or_root(f, who) -> bool:
    return who.root or who.uid == f.uid


def sticky_allows(directory, victim, who) -> bool:
    """may_delete's sticky rule: in a sticky directory only the owner of the entry, the
    owner of the directory or root may remove or rename it."""
    return (not directory.mode & stat.S_ISVTX or who.root or who.uid == victim.uid
            or who.uid == directory.uid)


def hardlink_allowed(f, who) -> bool:
    """may_linkat with fs.protected_hardlinks: a user may hard link only a file they
    own, or a regular file they may read and write that is not set-ID."""
    if who.root or who.uid == f.uid:
        return True
    return not (not stat.S_ISREG(f.mode) or f.mode & stat.S_ISUID
                or f.mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP
                or not permits(f.mode, f.uid, f.gid, f.acl, who, R | W))


def check_setattr(f, who, *, size: bool = False, opened: bool = False,
                  mode: int | None = None, uid: int | None = None, gid: int | None = None,
                  times: bool = False, touch: bool = False,
                  writer_mtime: bool = False) -> int | None:
    """setattr_prepare: may `who` change `f` so? `size`: a truncate (`opened`: through
    an open file, whose open checked); `mode`/`uid`/`gid`: the new values (None: not
    changed); `times`: atime or mtime set; `touch`: both set to now (utimensat's
    UTIME_NOW); `writer_mtime`: an mtime alone written back after writes through an open
    file. Returns the mode to set (set-group-ID dropped as the kernel drops it), None
    when the mode is not changed. Raises Denied (EPERM or EACCES)."""
    if size and not opened:
        need(f, who, W)
    if mode is not None:
        # The kernel clears set-user-ID and set-group-ID when someone else writes the
        # file (file_remove_privs), as that writer: allowed to those who may write.
        kill_priv = (stat.S_IMODE(mode) | stat.S_ISUID | stat.S_ISGID
                     == stat.S_IMODE(f.mode) | stat.S_ISUID | stat.S_ISGID
                     and stat.S_IMODE(mode) != stat.S_IMODE(f.mode))
        if not owner_or_root(f, who) and not (
                kill_priv and permits(f.mode, f.uid, f.gid, f.acl, who, W)):
            raise Denied(errno.EPERM)
        if not who.root and not who.in_group(f.gid if gid is None else gid):
            mode &= ~stat.S_ISGID
    if uid is not None and not who.root and (who.uid != f.uid or uid != f.uid):
        raise Denied(errno.EPERM)
    if gid is not None and not who.root and (
            who.uid != f.uid or (gid != f.gid and not who.in_group(gid))):
        raise Denied(errno.EPERM)
    if times and not owner_or_root(f, who) and not size:  # a truncate's own times
        # Others may only set both times to now (`touch`), and only if they may write;
        # or write back the mtime of their writes.
        if not (touch or writer_mtime):
            raise Denied(errno.EPERM)
        if not permits(f.mode, f.uid, f.gid, f.acl, who, W):
            raise Denied(errno.EACCES if touch else errno.EPERM)
    return mode


def new_owner_allowed(who, uid: int, gid: int, parent_mode: int, parent_gid: int) -> bool:
    """May `who` create a file owned by uid:gid in a directory? Its own uid, and one of
    its groups (or the directory's group, which a set-group-ID directory gives)."""
    if who.root:
        return True
    return uid == who.uid and (who.in_group(gid) or (
        bool(parent_mode & stat.S_ISGID) and gid == parent_gid))


def xattr_wants(name: bytes, write: bool) -> int:
    """The permission a user.* extended attribute needs (security.* and system.* need
    none; trusted.* is root's: see `xattr_root_only`)."""
    if name.startswith(b"user."):
        return W if write else R
    return 0


def xattr_root_only(name: bytes, write: bool) -> bool:
    """trusted.* needs CAP_SYS_ADMIN to read or write, security.* to write (the
    capability sets and labels a kernel trusts)."""
    return name.startswith(b"trusted.") or (write and name.startswith(b"security."))
