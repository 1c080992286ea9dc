"""POSIX.1e access control lists: parsing, the permission check, chmod and inheritance.

Pure (no I/O), so the mount checks with it today and the master can check with it once it
is the authority. The rules are Linux's (`fs/posix_acl.c`):

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
