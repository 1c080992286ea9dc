"""System calls through a real mount: results and errno as on a local file system."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time

from .util import (NOBODY, RENAME_EXCHANGE, RENAME_NOREPLACE, UTIME_NOW, UTIME_OMIT, as_user,
                   err, getdents_batches, read, renameat2, utimensat)

NET = "127.0.32"
MiB = 1 << 20


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- files and directories


def test_create_write_read_and_modes_honour_umask(d):
    old = os.umask(0o027)
    try:
        p = os.path.join(d, "f")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o666)
        assert os.write(fd, b"hello world") == 11
        os.close(fd)
        st = os.stat(p)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_size == 11 and st.st_nlink == 1 and st.st_uid == 0
        assert read(p) == b"hello world"
        os.mkdir(os.path.join(d, "sub"), 0o777)
        assert stat.S_IMODE(os.stat(os.path.join(d, "sub")).st_mode) == 0o750
        os.mkfifo(os.path.join(d, "fifo"), 0o666)
        st = os.stat(os.path.join(d, "fifo"))
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    finally:
        os.umask(old)
    assert err(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def test_fifo_passes_data(d):
    p = os.path.join(d, "pipe")
    os.mkfifo(p)

    def writer():
        with open(p, "wb") as f:
            f.write(b"through the fifo")

    t = threading.Thread(target=writer)
    t.start()
    with open(p, "rb") as f:
        assert f.read() == b"through the fifo"
    t.join()


def test_errno_of_failures(d):
    f = os.path.join(d, "file")
    write(f, b"x")
    os.mkdir(os.path.join(d, "dir"))
    write(os.path.join(d, "dir", "inner"), b"y")
    assert err(os.stat, os.path.join(d, "missing")) == errno.ENOENT
    assert err(os.open, os.path.join(d, "missing"), os.O_RDONLY) == errno.ENOENT
    assert err(os.mkdir, f) == errno.EEXIST
    assert err(os.mkdir, os.path.join(d, "dir")) == errno.EEXIST
    assert err(os.rmdir, os.path.join(d, "dir")) == errno.ENOTEMPTY
    assert err(os.open, os.path.join(d, "dir"), os.O_WRONLY) == errno.EISDIR
    assert err(os.unlink, os.path.join(d, "dir")) == errno.EISDIR
    assert err(os.rmdir, f) == errno.ENOTDIR
    assert err(os.mkdir, os.path.join(f, "below")) == errno.ENOTDIR
    assert err(os.listdir, f) == errno.ENOTDIR
    assert err(os.open, os.path.join(d, "x" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    assert err(os.mkdir, os.path.join(d, "y" * 256)) == errno.ENAMETOOLONG
    assert err(os.stat, os.path.join(d, "z" * 300)) == errno.ENAMETOOLONG
    os.mkdir(os.path.join(d, "n" * 255))  # exactly 255 bytes is fine
    deep = os.path.join(d, *(["a" * 200] * 22))  # > PATH_MAX
    assert err(os.stat, deep) == errno.ENAMETOOLONG
    assert err(os.readlink, f) == errno.EINVAL
    assert err(os.getxattr, f, "user.nothing") == errno.ENODATA


def test_readdir_many_entries(d):
    names = {f"entry-{i:05d}" for i in range(2500)}
    for n in names:
        os.close(os.open(os.path.join(d, n), os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        entries = {e.name: e.is_file() for e in it}
    assert len(entries) == 2500 and all(entries.values())


# A READDIRPLUS entry is at least fuse_entry_out + fuse_dirent (128 + 24 bytes) and its
# name: one 64 KiB request carries at most this many.
PLUS_ENTRIES_MAX = (1 << 16) // 152


def test_plain_readdir_names_inodes_and_types(d):
    """Past its first request, a listing that only reads names (no stat in between) is
    answered with plain READDIR: more entries per request than READDIRPLUS can carry,
    every one with its inode number and type; every padding length of a name."""
    made = {}
    for i in range(3000):
        name = f"e{i:04d}" + "x" * (i % 9) if i % 100 else f"long{i:04d}" + "y" * (247 - i % 8)
        p = os.path.join(d, name)
        kind = i % 4
        if kind == 0:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        elif kind == 1:
            os.mkdir(p)
        elif kind == 2:
            os.symlink("somewhere", p)
        else:
            os.mkfifo(p)
        made[os.fsencode(name)] = stat.S_IFMT(os.lstat(p).st_mode) >> 12
    batches = getdents_batches(d)
    listed = [e for batch in batches for e in batch]
    assert len(listed) == len(made) + 2
    got = {name: (ino, dtype) for name, ino, dtype in listed}
    assert set(got) == set(made) | {b".", b".."}, "a name listed twice, missed or made up"
    for name, dtype in made.items():
        ino = os.lstat(os.path.join(os.fsencode(d), name)).st_ino
        assert got[name] == (ino, dtype), name
    assert got[b"."][0] == os.stat(d).st_ino
    assert got[b".."][0] == os.stat(os.path.dirname(d)).st_ino
    assert max(len(b) for b in batches) > PLUS_ENTRIES_MAX, "no plain READDIR was used"


def test_statfs_reports_chunkserver_totals(mc, d):
    s = os.statvfs(d)
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mfscli"), "--json",
                          "-SIG", d], capture_output=True, text=True, check=True)
    total = json.loads(out.stdout)["info"]["total_bytes"]
    assert total > 0
    assert s.f_blocks * s.f_frsize == total - total % s.f_frsize
    assert 0 < s.f_bavail <= s.f_blocks
    assert s.f_namemax == 255


def test_truncate_and_o_trunc(d):
    p = os.path.join(d, "t")
    write(p, b"a" * 100000)
    os.truncate(p, 10)
    assert read(p) == b"a" * 10
    os.truncate(p, 70000)
    assert read(p) == b"a" * 10 + bytes(69990)
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(p).st_size == 0 and read(p) == b""
    with open(p, "r+b") as f:
        f.write(b"0123456789")
        f.truncate(4)
        f.seek(0)
        assert f.read() == b"0123"


def test_posix_fallocate(d):
    p = os.path.join(d, "fa")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"abc", 0)
        os.posix_fallocate(fd, 0, 3 * MiB)
        assert os.fstat(fd).st_size == 3 * MiB
    finally:
        os.close(fd)
    data = read(p)
    assert data[:3] == b"abc" and data[3:] == bytes(3 * MiB - 3)


def test_xattrs(d):
    p = os.path.join(d, "x")
    write(p, b"")
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.size", b"\x00\x01big")
    assert os.getxattr(p, "user.color") == b"blue"
    assert sorted(os.listxattr(p)) == ["user.color", "user.size"]
    assert err(os.setxattr, p, "user.color", b"red", os.XATTR_CREATE) == errno.EEXIST
    assert err(os.setxattr, p, "user.new", b"v", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.color", b"red", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.color") == b"red"
    os.removexattr(p, "user.color")
    assert os.listxattr(p) == ["user.size"]
    assert err(os.removexattr, p, "user.color") == errno.ENODATA


# ---------------------------------------------------------------- links and renames


def test_symlink_and_readlink(d):
    write(os.path.join(d, "target"), b"data")
    os.symlink("target", os.path.join(d, "ln"))
    assert os.readlink(os.path.join(d, "ln")) == "target"
    assert stat.S_ISLNK(os.lstat(os.path.join(d, "ln")).st_mode)
    assert read(os.path.join(d, "ln")) == b"data"
    os.symlink("/nonexistent/far/away", os.path.join(d, "dangling"))
    assert err(os.stat, os.path.join(d, "dangling")) == errno.ENOENT
    assert err(os.symlink, "x", os.path.join(d, "ln")) == errno.EEXIST


def test_hard_links_and_ctime(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write(a, b"shared")
    before = os.stat(a).st_ctime_ns
    time.sleep(0.01)
    os.link(a, b)
    st = os.stat(a)
    assert st.st_nlink == 2 and st.st_ctime_ns > before
    assert os.stat(b).st_ino == st.st_ino and read(b) == b"shared"
    os.mkdir(os.path.join(d, "dir"))
    assert err(os.link, os.path.join(d, "dir"), os.path.join(d, "dirlink")) == errno.EPERM
    assert err(os.link, a, b) == errno.EEXIST
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and read(b) == b"shared"


def test_rename_cases(d):
    j = lambda *p: os.path.join(d, *p)  # noqa: E731
    write(j("f1"), b"one")
    write(j("f2"), b"two")
    os.rename(j("f1"), j("f2"))  # over an existing file
    assert read(j("f2")) == b"one" and not os.path.exists(j("f1"))
    os.mkdir(j("A"))
    os.mkdir(j("B"))
    os.rename(j("f2"), j("A", "moved"))  # across directories
    assert read(j("A", "moved")) == b"one"
    os.mkdir(j("empty"))
    os.rename(j("B"), j("empty"))  # a directory over an empty directory
    assert os.path.isdir(j("empty")) and not os.path.exists(j("B"))
    assert err(os.rename, j("empty"), j("A")) == errno.ENOTEMPTY
    os.rename(j("A"), j("A"))  # onto itself
    assert os.path.isdir(j("A"))
    write(j("A", "x"), b"")
    os.link(j("A", "x"), j("A", "y"))
    os.rename(j("A", "x"), j("A", "y"))  # two names of one file: nothing happens
    assert os.path.exists(j("A", "x")) and os.path.exists(j("A", "y"))
    os.mkdir(j("A", "sub"))
    assert err(os.rename, j("A"), j("A", "sub", "inside")) == errno.EINVAL
    assert err(os.rename, j("A", "x"), j("empty")) == errno.EISDIR
    assert err(os.rename, j("empty"), j("A", "x")) == errno.ENOTDIR
    assert err(os.rename, j("nothing"), j("other")) == errno.ENOENT
    before = os.stat(j("A", "moved")).st_ctime_ns
    time.sleep(0.01)
    os.rename(j("A", "moved"), j("A", "moved2"))
    assert os.stat(j("A", "moved2")).st_ctime_ns > before


def test_rename_noreplace_and_exchange(d):
    a, b, c = (os.path.join(d, n) for n in "abc")
    write(a, b"A")
    write(b, b"B")
    assert err(renameat2, a, b, RENAME_NOREPLACE) == errno.EEXIST
    renameat2(a, c, RENAME_NOREPLACE)
    assert read(c) == b"A" and not os.path.exists(a)
    renameat2(b, c, RENAME_EXCHANGE)
    assert read(c) == b"B" and read(b) == b"A"


def test_unlinked_open_file_stays_readable(d):
    p = os.path.join(d, "ghost")
    write(p, b"still here" * 1000)
    f = open(p, "rb")
    try:
        os.unlink(p)
        assert not os.path.exists(p)
        assert f.read() == b"still here" * 1000
        f.seek(5)
        assert f.read(5) == b" here"
    finally:
        f.close()
    # a file being written, unlinked, then written and read through the same descriptor
    fd = os.open(os.path.join(d, "w"), os.O_CREAT | os.O_RDWR, 0o600)
    os.unlink(os.path.join(d, "w"))
    os.write(fd, b"x" * 5000)
    assert os.pread(fd, 5000, 0) == b"x" * 5000
    os.close(fd)


# ---------------------------------------------------------------- attributes


def test_chmod_chown_ctime_and_suid_cleared_on_chown(d):
    p = os.path.join(d, "f")
    write(p, b"")
    c0 = os.stat(p).st_ctime_ns
    time.sleep(0.01)
    os.chmod(p, 0o4755)
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_ctime_ns > c0
    time.sleep(0.01)
    os.chown(p, 1234, 5678)
    st2 = os.stat(p)
    assert (st2.st_uid, st2.st_gid) == (1234, 5678) and st2.st_ctime_ns > st.st_ctime_ns
    assert not st2.st_mode & stat.S_ISUID  # chown clears set-user-ID
    os.chown(p, -1, 42)
    assert (os.stat(p).st_uid, os.stat(p).st_gid) == (1234, 42)


def test_nanosecond_times_and_utime_now_omit(d):
    p = os.path.join(d, "t")
    write(p, b"")
    os.utime(p, ns=(1_000_000_123_456_789, 1_500_000_987_654_321))
    st = os.stat(p)
    assert st.st_atime_ns == 1_000_000_123_456_789
    assert st.st_mtime_ns == 1_500_000_987_654_321
    utimensat(p, (0, UTIME_OMIT), (1_600_000_000, 42))
    st = os.stat(p)
    assert st.st_atime_ns == 1_000_000_123_456_789
    assert st.st_mtime_ns == 1_600_000_000_000_000_042
    before = time.time_ns()
    utimensat(p, (0, UTIME_NOW), (0, UTIME_OMIT))
    st = os.stat(p)
    assert st.st_atime_ns >= before - 1_000_000_000
    assert st.st_mtime_ns == 1_600_000_000_000_000_042


def test_write_updates_mtime_and_size(d):
    p = os.path.join(d, "m")
    write(p, b"x")
    os.utime(p, ns=(0, 0))
    with open(p, "ab") as f:
        f.write(b"yz")
    st = os.stat(p)
    assert st.st_size == 3 and st.st_mtime_ns > 0


# ---------------------------------------------------------------- permissions


def test_permissions_for_another_user(d):
    j = lambda *p: os.path.join(d, *p)  # noqa: E731
    write(j("secret"), b"root only", 0o600)
    os.chmod(j("secret"), 0o600)
    write(j("public"), b"for all", 0o644)
    os.chmod(j("public"), 0o644)
    os.mkdir(j("open"))
    os.chmod(j("open"), 0o777)
    os.mkdir(j("sticky"))
    os.chmod(j("sticky"), 0o1777)
    write(j("sticky", "roots"), b"r")
    write(j("shared"), b"", 0o666)
    os.chmod(j("shared"), 0o6777)
    code = f"""
import errno, os, stat
d = {d!r}
def e(fn, *a):
    try:
        fn(*a)
    except OSError as x:
        return x.errno
    return 0
assert e(open, d + "/secret", "rb") == errno.EACCES
assert open(d + "/public", "rb").read() == b"for all"
assert e(os.open, d + "/public", os.O_WRONLY) == errno.EACCES
assert e(os.open, d + "/new", os.O_CREAT | os.O_WRONLY) == errno.EACCES
assert e(os.mkdir, d + "/newdir") == errno.EACCES
assert e(os.unlink, d + "/public") == errno.EACCES
assert e(os.chmod, d + "/public", 0o777) == errno.EPERM
assert e(os.chown, d + "/public", {NOBODY}, {NOBODY}) == errno.EPERM
assert e(os.utime, d + "/public", (1, 1)) == errno.EPERM
assert e(os.unlink, d + "/sticky/roots") == errno.EPERM
fd = os.open(d + "/open/mine", os.O_CREAT | os.O_WRONLY, 0o640)
os.write(fd, b"mine")
os.close(fd)
st = os.stat(d + "/open/mine")
assert (st.st_uid, st.st_gid) == ({NOBODY}, {NOBODY}), (st.st_uid, st.st_gid)
os.chmod(d + "/open/mine", 0o600)
os.utime(d + "/open/mine", None)
fd = os.open(d + "/shared", os.O_WRONLY)
os.write(fd, b"x")
os.close(fd)
print(oct(os.stat(d + "/shared").st_mode))
"""
    as_user(code)
    mode = os.stat(j("shared")).st_mode
    assert not mode & stat.S_ISUID  # a write by a non-owner clears set-user-ID
    assert os.stat(j("open", "mine")).st_uid == NOBODY
    assert read(j("open", "mine")) == b"mine"


# ---------------------------------------------------------------- data


def test_two_processes_append(d):
    p = os.path.join(d, "log")
    write(p, b"")
    code = """
import os, sys
p, tag = sys.argv[1], sys.argv[2]
fd = os.open(p, os.O_WRONLY | os.O_APPEND)
for i in range(300):
    os.write(fd, f"{tag} {i:05d} ".encode() + b"." * 40 + b"\\n")
os.close(fd)
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, p, tag]) for tag in ("AAA", "BBB")]
    for proc in procs:
        assert proc.wait(120) == 0
    lines = read(p).split(b"\n")[:-1]
    assert len(lines) == 600
    for tag in (b"AAA", b"BBB"):
        mine = [ln for ln in lines if ln.startswith(tag)]
        assert [int(ln.split()[1]) for ln in mine] == list(range(300))
        assert all(ln.endswith(b"." * 40) for ln in mine)


def test_concurrent_writers_to_different_files(d):
    def work(i: int) -> None:
        block = hashlib.sha256(str(i).encode()).digest() * 2048  # 64 KiB
        with open(os.path.join(d, f"w{i}"), "wb") as f:
            for _ in range(64):
                f.write(block)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        block = hashlib.sha256(str(i).encode()).digest() * 2048
        assert read(os.path.join(d, f"w{i}")) == block * 64


def test_large_file_across_chunk_boundaries(mc, d):
    p = os.path.join(d, "large")
    chunk = 64 * MiB
    piece = os.urandom(MiB)
    h = hashlib.sha256()
    with open(p, "wb") as f:
        for i in range(140):  # 140 MiB: three chunks
            data = piece[i:] + piece[:i]
            f.write(data)
            h.update(data)
    assert os.stat(p).st_size == 140 * MiB
    h2 = hashlib.sha256()
    with open(p, "rb") as f:
        while True:
            data = f.read(3 * MiB + 17)
            if not data:
                break
            h2.update(data)
    assert h2.hexdigest() == h.hexdigest()
    # a write straddling the boundary between chunks 0 and 1, and a read across it
    with open(p, "r+b") as f:
        f.seek(chunk - 1000)
        f.write(b"Z" * 3000)
    fd = os.open(p, os.O_RDONLY)
    try:
        got = os.pread(fd, 5000, chunk - 2000)
    finally:
        os.close(fd)
    expect_before = (piece[63:] + piece[:63])[MiB - 2000:MiB - 1000]
    assert got[:1000] == expect_before and got[1000:4000] == b"Z" * 3000
    mc.remount()  # cold: nothing in the page cache
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 5000, chunk - 2000) == got
        assert os.pread(fd, 10, 140 * MiB - 5) == (piece[139:] + piece[:139])[-5:]
    finally:
        os.close(fd)


def test_fsync_and_close_commit_to_master(mc, d):
    import asyncio

    from elkfs.client import Client

    p = os.path.join(d, "durable")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"q" * 300000)
    os.fsync(fd)
    ino = os.fstat(fd).st_ino

    async def size() -> int:
        c = await Client.connect(*mc.cluster.master_addr)
        try:
            return (await c.getattr_inode(ino)).size
        finally:
            await c.close()

    assert asyncio.run(size()) == 300000  # on the master before fsync returned
    os.write(fd, b"r" * 1000)
    os.close(fd)
    assert asyncio.run(size()) == 301000


# ---------------------------------------------------------------- tools people use


def _mixed_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "a", "b", "c"))
    os.makedirs(os.path.join(root, "empty"))
    for i in range(30):
        with open(os.path.join(root, "a", f"small{i}.txt"), "w") as f:
            f.write(f"file {i}\n" * i)
    with open(os.path.join(root, "a", "b", "big.bin"), "wb") as f:
        f.write(os.urandom(3 * MiB + 123))
    open(os.path.join(root, "a", "b", "c", "zero"), "w").close()
    os.symlink("../small3.txt", os.path.join(root, "a", "b", "rel-link"))
    os.chmod(os.path.join(root, "a", "small5.txt"), 0o600)
    os.utime(os.path.join(root, "a", "small7.txt"), ns=(1_234_567_890_123_456_789,) * 2)


def test_cp_a_diff_r_and_tar(d, tmp_path):
    src = tmp_path / "src"
    _mixed_tree(str(src))
    dst = os.path.join(d, "copy")
    subprocess.run(["cp", "-a", str(src), dst], check=True)
    r = subprocess.run(["diff", "-r", "--no-dereference", str(src), dst], capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    st_src = os.stat(src / "a" / "small7.txt")
    st_dst = os.stat(os.path.join(dst, "a", "small7.txt"))
    assert st_dst.st_mtime_ns == st_src.st_mtime_ns
    assert stat.S_IMODE(os.stat(os.path.join(dst, "a", "small5.txt")).st_mode) == 0o600
    # tar into the mount, and out of it again
    tarball = os.path.join(d, "tree.tar")
    subprocess.run(["tar", "-cf", tarball, "-C", str(tmp_path), "src"], check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", tarball, "-C", str(out)], check=True)
    r = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(out / "src")],
                       capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    inside = os.path.join(d, "extracted")
    os.mkdir(inside)
    subprocess.run(["tar", "-xf", tarball, "-C", inside], check=True)
    r = subprocess.run(["diff", "-r", "--no-dereference", str(src), os.path.join(inside, "src")],
                       capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_git_init_add_commit(d):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "HOME": d, "GIT_CONFIG_NOSYSTEM": "1"}
    repo = os.path.join(d, "repo")
    os.mkdir(repo)

    def git(*args) -> str:
        r = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"git {args}: {r.stdout}{r.stderr}"
        return r.stdout

    git("init", "-q")
    for i in range(20):
        with open(os.path.join(repo, f"f{i}.txt"), "w") as f:
            f.write(f"content {i}\n" * 50)
    git("add", ".")
    git("commit", "-q", "-m", "first")
    with open(os.path.join(repo, "f3.txt"), "a") as f:
        f.write("more\n")
    git("commit", "-q", "-am", "second")
    assert git("log", "--format=%s").split() == ["second", "first"]
    assert git("status", "--porcelain") == ""
    git("fsck", "--full")


def test_interrupted_dd_then_correct_reread(mc, d, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(96 * MiB))
    dst = os.path.join(d, "dd.out")
    proc = subprocess.Popen(["dd", f"if={src}", f"of={dst}", "bs=1M", "iflag=fullblock"],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if os.stat(dst).st_size >= 8 * MiB:
                break
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    proc.kill()
    proc.wait(60)
    data = src.read_bytes()
    got = read(dst)
    assert data[:len(got)] == got  # whatever was written is a correct prefix
    mc.remount()
    assert read(dst) == got
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync"], check=True,
                   stderr=subprocess.DEVNULL)
    mc.remount()
    assert hashlib.sha256(read(dst)).digest() == hashlib.sha256(data).digest()


def test_masterinfo_is_hidden_but_readable(mc):
    assert ".masterinfo" not in os.listdir(mc.mnt)
    info = json.loads(read(os.path.join(mc.mnt, ".masterinfo")))
    assert (info["host"], info["port"]) == mc.cluster.master_addr
    assert err(os.open, os.path.join(mc.mnt, ".masterinfo"), os.O_WRONLY) == errno.EACCES
