"""Many clients, one file system: what another mount sees of a file written through this
one. Mount A is the module's mount, mount B a second `mfsmount -f` of the cluster, both
with the default options (write-back cache off: see docs/consistency.md).

After a writer's close or fsync returns, B sees the new size and data: when it opens
the file afterwards (close-to-open: the open asks the master), and also while it holds
the file open (the master recalled B's cached attributes and pages before it answered
the writer). Appends with O_APPEND from both mounts all land, whole, once each.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from .lockers import start_mount, stop_mount
from .util import done_while_stopped

NET = "127.0.62"
CHUNKSERVERS = 1

APPENDER = r'''
import os, sys
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
for i in range(n):
    os.write(fd, b"%s %06d ......................................\n" % (tag.encode(), i))
os.close(fd)
'''


@pytest.fixture(scope="module")
def mnt_b(mc):
    mnt, proc = start_mount(mc, "mnt_b")
    try:
        yield mnt
    finally:
        stop_mount(mnt, proc)


def on_b(mc, mnt_b, path: str) -> str:
    return os.path.join(mnt_b, os.path.relpath(path, mc.mnt))


def read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_after_close_b_sees_size_and_data_on_open_and_while_open(mc, mnt_b, d):
    a = os.path.join(d, "f")
    b = on_b(mc, mnt_b, a)
    with open(a, "wb") as f:
        f.write(b"first")
    assert read_all(b) == b"first"
    with open(b, "rb") as held:
        assert held.read() == b"first"
        with open(a, "ab") as f:
            f.write(b" and more")
        # B kept the file open all along: the master recalled what B cached.
        assert os.fstat(held.fileno()).st_size == len(b"first and more")
        assert os.pread(held.fileno(), 100, 0) == b"first and more"
        with open(a, "r+b") as f:
            f.truncate(3)
        assert os.fstat(held.fileno()).st_size == 3
        assert os.pread(held.fileno(), 100, 0) == b"fir"
    assert os.stat(b).st_size == 3
    assert read_all(b) == b"fir"  # re-opened


def test_after_fsync_b_sees_size_and_data_while_a_keeps_writing(mc, mnt_b, d):
    a = os.path.join(d, "f")
    b = on_b(mc, mnt_b, a)
    with open(a, "wb") as f:
        f.write(b"x" * 1000)
    with open(b, "rb") as held:
        assert len(held.read()) == 1000
        with open(a, "r+b") as f:
            f.seek(0, os.SEEK_END)
            f.write(b"y" * 5000)
            f.flush()
            os.fsync(f.fileno())
            # A has not closed; its fsync returned.
            assert os.fstat(held.fileno()).st_size == 6000
            assert os.pread(held.fileno(), 6000, 0) == b"x" * 1000 + b"y" * 5000
            assert read_all(b) == b"x" * 1000 + b"y" * 5000
            f.seek(10)
            f.write(b"Z")
            f.flush()
            os.fsync(f.fileno())
            assert os.pread(held.fileno(), 1, 10) == b"Z"


def test_a_file_rewritten_in_place_is_seen_fresh_by_a_reader_that_opens_it(mc, mnt_b, d):
    a = os.path.join(d, "f")
    b = on_b(mc, mnt_b, a)
    for i in range(20):  # same size every time: only the data (and mtime) changes
        data = b"%08d" % i * 512
        with open(a, "r+b" if i else "wb") as f:
            f.write(data)
        assert read_all(b) == data


def test_b_stats_the_rewritten_file_before_it_opens_it(mc, mnt_b, d):
    """The stat tells B's kernel the new mtime first (same size), so nothing but the
    mount can drop the pages B's kernel holds of the old data: the open must."""
    a = os.path.join(d, "f")
    b = on_b(mc, mnt_b, a)
    for i in range(10):
        data = b"%08d" % i * 512
        with open(a, "r+b" if i else "wb") as f:
            f.write(data)
        st = os.stat(b)
        assert (st.st_size, st.st_mtime_ns) == (len(data), os.stat(a).st_mtime_ns)
        assert read_all(b) == data


def test_a_mapping_b_holds_sees_a_rewrite_of_the_same_size(mc, mnt_b, d):
    a = os.path.join(d, "f")
    b = on_b(mc, mnt_b, a)
    with open(a, "wb") as f:
        f.write(b"1" * 8192)
    with open(b, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:  # the descriptor is closed: only the mapping holds the file open on B
        assert mapped[:8192] == b"1" * 8192
        with open(a, "r+b") as f:
            f.write(b"2" * 8192)
        assert mapped[:8192] == b"2" * 8192
        os.stat(b)
        assert mapped[:8192] == b"2" * 8192
    finally:
        mapped.close()


def test_a_file_written_here_is_read_back_from_the_kernels_pages(mc, d):
    """Reading back what this mount wrote needs no chunkserver: with every chunkserver
    stopped the read still completes (it would wait for them otherwise)."""
    path = os.path.join(d, "mine")
    data = os.urandom(4096)
    with open(path, "wb") as f:
        f.write(data)
    got = {}

    def reread():
        got["data"] = read_all(path)

    answered = done_while_stopped(mc.cluster, mc.cluster.chunkservers, reread, 10)
    assert answered, "the read went to a chunkserver"
    assert got["data"] == data


def test_o_append_from_two_clients_keeps_every_record_once(mc, mnt_b, d):
    a = os.path.join(d, "log")
    open(a, "wb").close()
    b = on_b(mc, mnt_b, a)
    n = 300
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, path, tag, str(n)])
             for path, tag in ((a, "a1"), (a, "a2"), (b, "b1"), (b, "b2"))]
    for p in procs:
        assert p.wait(300) == 0
    for path in (a, b):
        lines = read_all(path).split(b"\n")
        assert lines.pop() == b""
        assert len(lines) == 4 * n
        assert sorted(lines) == sorted(
            b"%s %06d ......................................" % (tag, i)
            for tag in (b"a1", b"a2", b"b1", b"b2") for i in range(n))


def mount_open_files(mc) -> list[int]:
    """The open files the master counts for each connected mount's session."""
    url = mc.cluster.web_url(mc.cluster.masters[0], "/api/mounts")
    with urllib.request.urlopen(url, timeout=30) as r:
        sessions = json.load(r)["sessions"]
    return [s["open_files"] for s in sessions if s["connected"] and "mfsmount" in s["info"]]


def test_closed_files_stay_open_on_the_master_for_a_while_then_go(mc, d):
    """What makes a reopen free (no master trip) and keeps recalls coming: the mount
    holds each closed file open on the master for 30 s, then releases it."""
    before = sum(mount_open_files(mc))
    for i in range(5):
        with open(os.path.join(d, f"h{i}"), "wb") as f:
            f.write(b"x")
    assert sum(mount_open_files(mc)) >= before + 5
    deadline = time.monotonic() + 90
    while sum(mount_open_files(mc)) and time.monotonic() < deadline:
        time.sleep(1)
    assert sum(mount_open_files(mc)) == 0


def test_an_xattr_set_through_a_is_seen_through_b(mc, mnt_b, d):
    """B answers "no such attribute" from its cached attributes: at once right for a
    file B holds open (the master recalls them), within the attribute time otherwise."""
    a = os.path.join(d, "f")
    b = on_b(mc, mnt_b, a)
    other_a = os.path.join(d, "g")
    other_b = on_b(mc, mnt_b, other_a)
    for path in (a, other_a):
        with open(path, "wb") as f:
            f.write(b"x")
    with open(b, "rb") as held:
        with pytest.raises(OSError) as e:
            os.getxattr(b, "user.k")
        assert e.value.errno == errno.ENODATA
        os.setxattr(a, "user.k", b"v")
        assert os.getxattr(b, "user.k") == b"v"
        assert os.getxattr(held.fileno(), "user.k") == b"v"
    with pytest.raises(OSError) as e:
        os.getxattr(other_b, "user.k")  # B now caches g's attributes: no xattr
    assert e.value.errno == errno.ENODATA
    os.setxattr(other_a, "user.k", b"w")
    deadline = time.monotonic() + 30
    while True:
        try:
            assert os.getxattr(other_b, "user.k") == b"w"
            break
        except OSError as e:
            assert e.errno == errno.ENODATA and time.monotonic() < deadline
            time.sleep(0.2)


def master_op_counts(mc, ops: tuple[str, ...]) -> int:
    """How many requests of these kinds the master has answered (its /metrics page)."""
    url = mc.cluster.web_url(mc.cluster.masters[0], "/metrics")
    with urllib.request.urlopen(url, timeout=30) as r:
        lines = r.read().decode().splitlines()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in lines
               for op in ops if line.startswith(f'elkfs_master_ops_total{{op="{op}"'))


def test_held_files_are_stated_from_the_cache_and_name_changes_elsewhere_recall_them(
        mc, mnt_b, d):
    """Files closed here stay open on the master for a while; their stats are answered
    from what this mount caches past the attribute time, because the master recalls it
    before it acknowledges another session's change of the file, its names included:
    B's link and rename are seen through A at once, past the attribute time too."""
    names = [os.path.join(d, f"s{i:02d}") for i in range(20)]
    for path in names:
        with open(path, "wb") as f:
            f.write(b"x")
    time.sleep(1.5)  # the kernel's and the mount's attribute and entry times are over
    before = master_op_counts(mc, ("Lookup", "GetAttr"))
    stats = [os.stat(path) for path in names]
    assert all(st.st_size == 1 for st in stats)
    assert master_op_counts(mc, ("Lookup", "GetAttr")) - before < len(names) // 2

    linked, renamed = names[0], names[1]
    os.link(on_b(mc, mnt_b, linked), on_b(mc, mnt_b, linked + ".l"))
    st = os.stat(linked)
    assert st.st_nlink == 2 and st.st_ctime_ns > stats[0].st_ctime_ns
    time.sleep(1.5)
    assert os.stat(linked).st_nlink == 2
    os.rename(on_b(mc, mnt_b, renamed), on_b(mc, mnt_b, renamed + ".r"))
    time.sleep(1.5)
    with pytest.raises(FileNotFoundError):
        os.stat(renamed)
    assert os.stat(renamed + ".r").st_ctime_ns > stats[1].st_ctime_ns
    os.unlink(on_b(mc, mnt_b, linked + ".l"))
    time.sleep(1.5)
    assert os.stat(linked).st_nlink == 1
