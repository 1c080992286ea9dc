"""The reply to a plain FUSE READDIR, built here in one piece: pure, no I/O.

Why: with READDIRPLUS every entry carries its attributes, which the mount builds as a
pyfuse3 `EntryAttributes` (a dozen attribute sets) and the kernel turns into an inode and
a dentry, and a huge directory listed that way costs the mount most of its time per
entry. The kernel asks for plain READDIR instead once the mount says it may choose
(FUSE_CAP_READDIRPLUS_AUTO): the first request of a listing stays READDIRPLUS, and so
does any request after a LOOKUP in the directory (`ls -l`, which stats what it lists);
others (`ls -f`, `find`, anything that only wants the names) get plain entries.

A plain entry is `struct fuse_dirent` of `fuse_kernel.h`: ino (u64), off (u64: the
number the kernel resumes after), namelen (u32), type (u32: the file type bits of the
mode shifted down, as libfuse's `fuse_add_direntry` does), the name, then zeros up to a
multiple of 8 bytes. Packing it here costs one `struct.pack` per entry and one reply per
request instead of one libfuse call per entry.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_HEAD = struct.Struct("<QQII")
_ZEROS = bytes(8)


def pack_dirents(names: Sequence[bytes], inodes: Sequence[int], modes: Sequence[int],
                 first: int, next_id: int, room: int, parts: list[bytes], root: int,
                 kernel_root: int) -> tuple[int, int]:
    """Append to `parts` the entries from the `first` on (names[k], inodes[k], modes[k])
    that fit in `room` bytes; the entry `first + j` is numbered `next_id + j` and the
    kernel resumes after it at `next_id + j + 1`. Inode `root` (the mounted folder) is
    shown as `kernel_root`. Returns (entries taken, bytes used)."""
    used = 0
    taken = 0
    head = _HEAD.pack
    for k in range(first, len(names)):
        name = names[k]
        size = (24 + len(name) + 7) & ~7
        if used + size > room:
            break
        ino = inodes[k]
        parts.append(head(kernel_root if ino == root else ino, next_id + taken + 1,
                          len(name), (modes[k] >> 12) & 0o17))
        parts.append(name)
        pad = size - 24 - len(name)
        if pad:
            parts.append(_ZEROS[:pad])
        used += size
        taken += 1
    return taken, used
