"""The reply to a plain READDIR: struct fuse_dirent, packed by the mount itself."""

import stat
import struct

from elkfs.mount.dirents import pack_dirents


def columns(entries):
    """(names, inodes, modes) of [(name, inode, mode)]."""
    return [list(c) for c in zip(*entries)]


def parse(buf: bytes) -> list[tuple[int, int, int, bytes]]:
    """struct fuse_dirent {u64 ino; u64 off; u32 namelen; u32 type; char name[];},
    each padded with zeros to 8 bytes."""
    out, at = [], 0
    while at < len(buf):
        ino, off, namelen, dtype = struct.unpack_from("<QQII", buf, at)
        end = at + 24 + namelen
        padded = (end + 7) & ~7
        assert buf[end:padded] == bytes(padded - end)
        out.append((ino, off, dtype, buf[at + 24:end]))
        at = padded
    assert at == len(buf)
    return out


KINDS = [stat.S_IFREG | 0o644, stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777,
         stat.S_IFIFO | 0o600, stat.S_IFCHR | 0o600, stat.S_IFSOCK | 0o600]


def test_layout_numbering_and_types():
    names, inodes, modes = columns([(b"n" * (1 + i), 100 + i, KINDS[i % len(KINDS)])
                                    for i in range(20)])
    parts: list[bytes] = []
    taken, used = pack_dirents(names, inodes, modes, 3, 10, 1 << 16, parts, root=7,
                               kernel_root=1)
    buf = b"".join(parts)
    assert (taken, used) == (17, len(buf))
    got = parse(buf)
    assert [g[3] for g in got] == names[3:]
    assert [g[0] for g in got] == inodes[3:]
    assert [g[1] for g in got] == list(range(11, 28))  # the kernel resumes after each
    assert [g[2] for g in got] == [stat.S_IFMT(mode) >> 12 for mode in modes[3:]]


def test_stops_at_the_first_entry_that_does_not_fit():
    cols = columns([(b"abcdefghi", 5 + i, stat.S_IFREG) for i in range(10)])  # 40 bytes each
    parts: list[bytes] = []
    assert pack_dirents(*cols, 0, 2, 119, parts, root=1, kernel_root=1) == (2, 80)
    parts = []
    assert pack_dirents(*cols, 0, 2, 120, parts, root=1, kernel_root=1) == (3, 120)
    parts = []
    assert pack_dirents(*cols, 0, 2, 39, parts, root=1, kernel_root=1) == (0, 0)
    assert parts == []


def test_the_mounted_folder_shows_as_the_kernel_root():
    parts: list[bytes] = []
    cols = columns([(b".", 42, stat.S_IFDIR), (b"..", 9, stat.S_IFDIR)])
    pack_dirents(*cols, 0, 0, 100, parts, root=42, kernel_root=1)
    assert [g[0] for g in parse(b"".join(parts))] == [1, 9]
