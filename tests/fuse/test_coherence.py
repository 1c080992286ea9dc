"""Two mounts of one cluster: the mounts answer LOOKUPs from cached directory listings,
and the master recalls a listing from every other mount holding it before acknowledging
a change to that directory, so a change made through one mount is seen through the other
as soon as the changer's system call returned (no sleeps anywhere below).

Mount A is the module's mount (`mc.mnt`), mount B a second `mfsmount -f` process. Both
keep listings for 30 s (`mfsdirentrycacheto=30`), so a listing that was not recalled
would answer wrongly for the whole test instead of for one second.
`test_a_listed_directory_is_answered_without_the_master` shows the listings really are
used (the master is stopped and A still answers), so the others are not vacuous.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import stat
import subprocess
import sys
import threading
import time

import pytest

from .mounted import unmount, wait_mounted
from .util import done_while_stopped, err, getdents_batches, read

NET = "127.0.37"
DIR_TTL = "mfsdirentrycacheto=30"
MOUNT_OPTIONS = DIR_TTL
CHUNKSERVERS = 2
BIN = os.path.dirname(sys.executable)


def start_mount(mc, name: str, options: str = DIR_TTL):
    """Another `mfsmount -f` of the cluster; returns (mount point, process)."""
    mnt = os.path.join(mc.base_dir, name)
    os.makedirs(mnt, exist_ok=True)
    host, port = mc.cluster.master_addr
    log = open(os.path.join(mc.base_dir, f"{name}.stderr"), "ab")
    proc = subprocess.Popen([os.path.join(BIN, "mfsmount"), mnt, "-f", "-H", host, "-P",
                             str(port), "-o", options], stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    try:
        wait_mounted(mnt, proc)
    except BaseException:
        stop_mount(mnt, proc)
        raise
    return mnt, proc


def stop_mount(mnt: str, proc: subprocess.Popen) -> None:
    try:
        unmount(mnt)  # not with the pid: our child stays a zombie until we wait for it
    finally:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def mnt_b(mc):
    mnt, proc = start_mount(mc, "mnt_b")
    try:
        yield mnt
    finally:
        stop_mount(mnt, proc)


@pytest.fixture
def b(d, mnt_b):
    """The test's directory `d` (made through A) as seen through mount B."""
    return os.path.join(mnt_b, os.path.basename(d))


def write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def ls(path: str) -> list[str]:
    return sorted(os.listdir(path))


def raw_entries(path: str) -> dict[str, int]:
    """name -> d_ino exactly as getdents64 returns them, "." and ".." included (`ls -ai`
    is no proof for those two: GNU ls stats them instead of trusting d_ino)."""
    return {os.fsdecode(name): ino
            for batch in getdents_batches(path) for name, ino, _ in batch}


def ls_ai(path: str) -> dict[str, int]:
    r = subprocess.run(["ls", "-ai1", path], capture_output=True, text=True, check=True)
    return {name: int(ino) for ino, name in (line.split(maxsplit=1)
                                             for line in r.stdout.splitlines())}


# ---------------------------------------------------------------- the cache is used


def lookups_with_the_master_stopped(mc, directory: str, absent: str, present: str):
    """Stat an absent and a present name of `directory` (through its fd: no path walk
    from the mount's root) while the master is stopped. Returns what they gave, or None
    if they were still waiting for the master after 3 s."""
    master = mc.cluster.masters[0]
    results = {}
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def probe():
        results["absent"] = err(os.stat, absent, dir_fd=dfd)
        results["present"] = stat.S_ISREG(os.stat(present, dir_fd=dfd).st_mode)

    try:
        answered = done_while_stopped(mc.cluster, [master], probe, 3)
    finally:
        os.close(dfd)
    return results if answered else None


def test_a_listed_directory_is_answered_without_the_master(mc, d):
    write(os.path.join(d, "here"), b"x")  # d's fresh attributes come back with it
    assert ls(d) == ["here"]  # A now keeps the listing of d
    got = lookups_with_the_master_stopped(mc, d, "absent", "here")
    assert got is not None, "a LOOKUP in a listed directory waited for the master"
    assert got == {"absent": errno.ENOENT, "present": True}


def test_a_directory_where_names_were_absent_is_listed_and_kept_coherent(mc, d, b):
    """A never created nor listed `sub` (B made it). After the master said two names
    were absent there, A fetches the listing: later LOOKUPs, of absent and present names,
    are answered without the master; and B's changes still reach A at once."""
    os.mkdir(os.path.join(b, "sub"))
    write(os.path.join(b, "sub", "here"), b"x")
    sub = os.path.join(d, "sub")
    assert err(os.stat, os.path.join(sub, "absent1")) == errno.ENOENT
    assert err(os.stat, os.path.join(sub, "absent2")) == errno.ENOENT
    assert err(os.stat, os.path.join(sub, "absent3")) == errno.ENOENT  # listed here
    got = lookups_with_the_master_stopped(mc, sub, "absent4", "here")
    assert got is not None, "a LOOKUP in a directory listed after two misses waited for the master"
    assert got == {"absent": errno.ENOENT, "present": True}
    write(os.path.join(b, "sub", "absent4"), b"y")  # recalls A's listing first
    assert read(os.path.join(sub, "absent4")) == b"y"


def test_an_expired_listing_renewed_or_fetched_again_still_sees_every_change(mc, d, b):
    """With the default listing lifetime (1 s), C's listing of d expires between the
    steps. A LOOKUP of a name C's expired listing lacks renews it when nobody changed d
    meanwhile (the master still holds C's grant), else fetches it again: either way,
    what B created before, while the listing was expired, or after a renewal is seen
    through C at once, and what B removed is gone. (`ls` through C makes it keep the
    listing again after each recall.)"""
    mnt_c, proc = start_mount(mc, "mnt_c", options="")
    try:
        c = os.path.join(mnt_c, os.path.basename(d))
        write(os.path.join(b, "first"), b"1")
        assert ls(c) == ["first"]  # C keeps the listing of d
        time.sleep(2.0)  # C's listing and the master's grant expired
        assert err(os.stat, os.path.join(c, "absent1")) == errno.ENOENT  # renewed
        write(os.path.join(b, "second"), b"2")  # recalls C's renewed listing
        assert read(os.path.join(c, "second")) == b"2"

        assert ls(c) == ["first", "second"]
        time.sleep(2.0)
        write(os.path.join(b, "third"), b"3")  # C's grant expired: taken, not recalled
        assert read(os.path.join(c, "third")) == b"3"  # so no renewal: fetched again
        assert err(os.stat, os.path.join(c, "absent2")) == errno.ENOENT

        assert ls(c) == ["first", "second", "third"]
        time.sleep(2.0)
        os.unlink(os.path.join(b, "first"))
        assert err(os.stat, os.path.join(c, "absent3")) == errno.ENOENT
        assert err(os.stat, os.path.join(c, "first")) == errno.ENOENT
        for i in range(3):  # a renewal, then a change through B
            assert ls(c) == sorted(["second", "third", *(f"n{j}" for j in range(i))])
            time.sleep(1.2)
            assert err(os.stat, os.path.join(c, f"n{i}")) == errno.ENOENT
            write(os.path.join(b, f"n{i}"), b"n")
            assert read(os.path.join(c, f"n{i}")) == b"n"
        assert ls(c) == ["n0", "n1", "n2", "second", "third"]
    finally:
        stop_mount(mnt_c, proc)


# ---------------------------------------------------------------- changes made elsewhere


def test_names_created_through_b_are_seen_through_a_at_once(d, b):
    assert ls(d) == []  # A keeps the (empty) listing of d
    write(os.path.join(b, "file"), b"made by B")
    assert read(os.path.join(d, "file")) == b"made by B"

    assert ls(d) == ["file"]
    os.mkdir(os.path.join(b, "dir"))
    assert stat.S_ISDIR(os.stat(os.path.join(d, "dir")).st_mode)
    assert ls(os.path.join(d, "dir")) == []

    assert ls(d) == ["dir", "file"]
    os.symlink("file", os.path.join(b, "link"))
    assert os.readlink(os.path.join(d, "link")) == "file"
    assert read(os.path.join(d, "link")) == b"made by B"

    assert ls(d) == ["dir", "file", "link"]
    os.link(os.path.join(b, "file"), os.path.join(b, "hard"))
    assert os.stat(os.path.join(d, "hard")).st_ino == os.stat(os.path.join(b, "file")).st_ino
    assert ls(d) == ["dir", "file", "hard", "link"]

    # In a directory A itself created (known empty without any listing fetch).
    os.mkdir(os.path.join(d, "mine"))
    write(os.path.join(b, "mine", "inner"), b"in")
    assert read(os.path.join(d, "mine", "inner")) == b"in"


def test_a_name_created_through_b_after_a_looked_it_up(d, b):
    assert ls(d) == []
    p = os.path.join(d, "later")
    assert err(os.stat, p) == errno.ENOENT  # answered from A's listing
    write(os.path.join(b, "later"), b"now")
    assert read(p) == b"now"


def test_names_removed_or_renamed_through_b_leave_a_listing_at_once(d, b):
    for n in ("x", "y", "z"):
        write(os.path.join(d, n), n.encode())
    os.mkdir(os.path.join(d, "sub"))
    os.mkdir(os.path.join(d, "other"))
    assert ls(d) == ["other", "sub", "x", "y", "z"]
    assert ls(os.path.join(d, "other")) == []

    os.unlink(os.path.join(b, "x"))
    assert ls(d) == ["other", "sub", "y", "z"]
    os.rename(os.path.join(b, "y"), os.path.join(b, "w"))
    assert ls(d) == ["other", "sub", "w", "z"]
    assert read(os.path.join(d, "w")) == b"y"
    os.rmdir(os.path.join(b, "sub"))
    assert ls(d) == ["other", "w", "z"]
    # Between two directories A keeps listings of.
    os.rename(os.path.join(b, "z"), os.path.join(b, "other", "z2"))
    assert ls(d) == ["other", "w"]
    assert read(os.path.join(d, "other", "z2")) == b"z"
    assert ls(os.path.join(d, "other")) == ["z2"]
    # Over an existing name (A's kernel may keep its entry of the old "v" for
    # mfsentrycacheto: only the listing is checked).
    write(os.path.join(d, "v"), b"v")
    assert ls(d) == ["other", "v", "w"]
    os.rename(os.path.join(b, "w"), os.path.join(b, "v"))
    assert ls(d) == ["other", "v"]


def test_o_creat_opens_the_file_b_just_created(d, b):
    assert ls(d) == []
    write(os.path.join(b, "f"), b"content of B")
    ino = os.stat(os.path.join(b, "f")).st_ino
    fd = os.open(os.path.join(d, "f"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert os.fstat(fd).st_ino == ino
        assert os.read(fd, 100) == b"content of B"
    finally:
        os.close(fd)
    assert ls(d) == ["f"]
    write(os.path.join(b, "g"), b"g of B")
    assert err(os.open, os.path.join(d, "g"), os.O_RDWR | os.O_CREAT | os.O_EXCL) == errno.EEXIST
    assert read(os.path.join(d, "g")) == b"g of B"
    assert read(os.path.join(b, "f")) == b"content of B"


def test_o_creat_over_a_kernel_cached_negative_entry(mc, d, b):
    """With negative entries cached by the kernel, A's kernel skips the LOOKUP and sends
    CREATE for a name B created meanwhile: the master says EEXIST, and O_CREAT without
    O_EXCL must open B's file (as on a local file system) instead of failing."""
    mnt_c, proc = start_mount(mc, "mnt_c", f"{DIR_TTL},mfsnegentrycacheto=30")
    try:
        c = os.path.join(mnt_c, os.path.basename(d))
        assert ls(c) == []
        for n in ("f", "g"):
            assert err(os.stat, os.path.join(c, n)) == errno.ENOENT  # cached as absent
        write(os.path.join(b, "f"), b"content of B")
        write(os.path.join(b, "g"), b"g of B")
        fd = os.open(os.path.join(c, "f"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert os.fstat(fd).st_ino == os.stat(os.path.join(b, "f")).st_ino
            assert os.read(fd, 100) == b"content of B"
        finally:
            os.close(fd)
        fd = os.open(os.path.join(c, "f"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, b"+C")
        os.close(fd)
        assert read(os.path.join(d, "f")) == b"content of B+C"  # B's kernel may cache the size
        # O_EXCL makes the kernel look again: EEXIST, B's file untouched.
        assert err(os.open, os.path.join(c, "g"), os.O_RDWR | os.O_CREAT | os.O_EXCL,
                   0o600) == errno.EEXIST
        assert read(os.path.join(b, "g")) == b"g of B"
        assert ls(c) == ["f", "g"]
    finally:
        stop_mount(mnt_c, proc)


def test_a_file_open_through_b_survives_an_unlink_through_a(d, b):
    subprocess.run([os.path.join(BIN, "mfssettrashtime"), "0", d], check=True,
                   capture_output=True)  # no trash: only being open keeps it
    write(os.path.join(d, "f"), b"still readable")
    fd = os.open(os.path.join(b, "f"), os.O_RDONLY)
    try:
        os.unlink(os.path.join(d, "f"))
        assert os.read(fd, 100) == b"still readable"
    finally:
        os.close(fd)


def test_mixed_changes_from_both_mounts(d, b):
    """Random creates, mkdirs, symlinks, unlinks, rmdirs and renames, each through either
    mount, in two directories; after each, the other mount finds the name just made (from
    the listing it kept since the last step) and both list exactly the expected names.
    Names are never made twice, except by a rename over an existing file, whose name is
    not looked up: a kernel may keep its entry of the replaced file for mfsentrycacheto,
    which is not what is tested here."""
    rnd = random.Random(37)
    sides = {"A": d, "B": b}
    expect: dict[str, dict[str, str]] = {"": {}, "e": {}}  # dir -> name -> kind
    os.mkdir(os.path.join(d, "e"))
    for r in sides.values():
        assert ls(r) == ["e"] and ls(os.path.join(r, "e")) == []
    counter = iter(range(10_000))
    targets_of: dict[str, str] = {}

    def fresh(kind: str) -> str:
        return f"{kind}{next(counter)}"

    def where(root: str, sub: str, name: str = "") -> str:
        return os.path.join(root, sub, name)

    for step in range(60):
        side = rnd.choice("AB")
        other = "B" if side == "A" else "A"
        root = sides[side]
        sub = rnd.choice(["", "e"])
        names = expect[sub]
        op = rnd.choice(["create", "create", "mkdir", "symlink", "remove", "remove",
                         "rename", "rename"])
        made = None
        replaced = False  # a name the other mount's kernel may still know as the old file
        if op in ("remove", "rename") and not names:
            op = "create"
        if op == "create":
            made = fresh("f")
            write(where(root, sub, made), made.encode())
            names[made] = "file"
        elif op == "mkdir":
            made = fresh("d")
            os.mkdir(where(root, sub, made))
            names[made] = "dir"
        elif op == "symlink":
            made = fresh("l")
            os.symlink("target-" + made, where(root, sub, made))
            names[made] = "link"
            targets_of[made] = "target-" + made
        elif op == "remove":
            name = rnd.choice(sorted(names))
            (os.rmdir if names[name] == "dir" else os.unlink)(where(root, sub, name))
            del names[name]
        else:
            name = rnd.choice(sorted(names))
            to_sub = rnd.choice(["", "e"])
            kind = names.pop(name)
            targets = [n for n, k in expect[to_sub].items() if k == "file"]
            if kind == "file" and targets and rnd.random() < 0.3:
                made = rnd.choice(targets)  # over an existing file
                replaced = True
            else:
                made = fresh(name[0])
            os.rename(where(root, sub, name), where(root, to_sub, made))
            expect[to_sub][made] = kind
            if kind == "link":
                targets_of[made] = targets_of.pop(name)
            sub = to_sub
        if made is not None and not replaced:  # before listing: from the kept listing
            st = os.lstat(where(sides[other], sub, made))
            kind = expect[sub][made]
            assert {"file": stat.S_ISREG, "dir": stat.S_ISDIR,
                    "link": stat.S_ISLNK}[kind](st.st_mode), (step, op, made)
            if kind == "link":
                assert os.readlink(where(sides[other], sub, made)) == targets_of[made]
        for s, r in sides.items():
            for dsub, dnames in expect.items():
                got = [n for n in ls(where(r, dsub)) if not (dsub == "" and n == "e")]
                assert got == sorted(dnames), (step, op, side, s, dsub)


# ---------------------------------------------------------------- "." and ".."


def test_dot_and_dotdot_in_readdir(d, b):
    os.makedirs(os.path.join(d, "p", "q"))
    write(os.path.join(d, "p", "f"), b"")
    d_ino = os.stat(d).st_ino
    p_ino = os.stat(os.path.join(d, "p")).st_ino
    q_ino = os.stat(os.path.join(d, "p", "q")).st_ino
    f_ino = os.stat(os.path.join(d, "p", "f")).st_ino
    want = {".": p_ino, "..": d_ino, "q": q_ino, "f": f_ino}
    assert raw_entries(os.path.join(d, "p")) == want
    assert ls_ai(os.path.join(d, "p")) == want
    assert raw_entries(os.path.join(d, "p", "q")) == {".": q_ino, "..": p_ino}
    r = subprocess.run(["ls", "-a", os.path.join(d, "p")], capture_output=True, text=True,
                       check=True)
    assert r.stdout.split() == [".", "..", "f", "q"]
    # Through B, which learns the parents from its own lookups.
    for path in (b, os.path.join(b, "p"), os.path.join(b, "p", "q")):
        entries = raw_entries(path)
        assert entries["."] == os.stat(path).st_ino
        assert entries[".."] == os.stat(os.path.dirname(path)).st_ino
        assert ls_ai(path)[".."] == entries[".."]


def test_dotdot_after_this_mount_moved_the_directory(d):
    os.makedirs(os.path.join(d, "from", "moved"))
    os.mkdir(os.path.join(d, "to"))
    from_ino = os.stat(os.path.join(d, "from")).st_ino
    to_ino = os.stat(os.path.join(d, "to")).st_ino
    assert raw_entries(os.path.join(d, "from", "moved"))[".."] == from_ino
    os.rename(os.path.join(d, "from", "moved"), os.path.join(d, "to", "moved"))
    assert raw_entries(os.path.join(d, "to", "moved"))[".."] == to_ino


def test_dotdot_after_b_moved_the_directory(d, b):
    os.makedirs(os.path.join(d, "from", "moved"))
    os.mkdir(os.path.join(d, "to"))
    to_ino = os.stat(os.path.join(d, "to")).st_ino
    os.rename(os.path.join(b, "from", "moved"), os.path.join(b, "to", "moved"))
    assert raw_entries(os.path.join(d, "to", "moved"))[".."] == to_ino


# ---------------------------------------------------------------- races with a slow holder

HOLDER = r"""
import asyncio, sys
from elkfs.client.master_link import MasterLink
from elkfs.proto import messages as m

class Deaf(MasterLink):
    def _on_message(self, conn, msg, data):
        pass  # never answers a recall: the master waits until our listing expired

async def main(host, port, inode):
    link = Deaf(host, int(port), "deaf listing holder", listing_ttl_ms=2000)
    await link.connect()
    out = await link.request(m.ReadDir(int(inode), 0, 1000))
    assert out.next_offset == -1
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


def test_mkdir_whose_reply_is_delayed_while_b_creates_inside(mc, d, b):
    """A's mkdir of d/sub waits for a listing holder of d that does not answer the recall.
    Meanwhile B sees sub and creates sub/x; the master recalls sub's listing from A (A was
    granted it with the mkdir) before acknowledging B. Once both returned, A must see x."""
    host, port = mc.cluster.master_addr
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, host, str(port),
                               str(os.stat(d).st_ino)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        done = []
        t = threading.Thread(target=lambda: done.append(os.mkdir(os.path.join(d, "sub"))))
        t.start()
        deadline = time.monotonic() + 10
        while not os.path.isdir(os.path.join(b, "sub")):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        write(os.path.join(b, "sub", "x"), b"by B")
        assert t.is_alive(), "the mkdir did not wait for the holder: the race was not set up"
        t.join(30)
        assert done == [None]
        assert os.path.exists(os.path.join(d, "sub", "x"))
    finally:
        holder.kill()
        holder.wait(10)


# ---------------------------------------------------------------- master restart


def _restart_master(mc) -> None:
    master = mc.cluster.masters[0]
    mc.cluster.restart(master)
    mc.cluster.wait_chunkservers_registered()


def test_after_a_master_restart_listings_are_dropped(mc, d, b):
    write(os.path.join(d, "before"), b"1")
    assert ls(d) == ["before"]  # A keeps the listing; the master's grants die with it
    _restart_master(mc)
    os.statvfs(d)  # A reconnects (a request that does not touch d's listing)
    write(os.path.join(b, "after"), b"2")  # the new master knows of no listing to recall
    assert read(os.path.join(d, "after")) == b"2"
    assert ls(d) == ["after", "before"]
    # Listings work as before on the new master.
    write(os.path.join(b, "again"), b"3")
    assert read(os.path.join(d, "again")) == b"3"
    os.unlink(os.path.join(b, "before"))
    assert ls(d) == ["after", "again"]
    os.mkdir(os.path.join(d, "newdir"))
    assert ls(os.path.join(b, "newdir")) == []


def test_after_a_master_restart_a_mount_that_sent_nothing_yet_sees_changes(mc, d, b):
    """Mount C keeps kernel entries and attributes long, so a LOOKUP in d after the restart
    is its first request. With the default 1 s kernel caches the same happens while the
    kernel still holds the path's attributes; after that, the GETATTR of an expired
    directory reconnects the mount, which then drops its listings."""
    mnt_c, proc = start_mount(mc, "mnt_c", "mfsdirentrycacheto=30,mfsattrcacheto=30,"
                                           "mfsentrycacheto=30")
    try:
        c = os.path.join(mnt_c, os.path.basename(d))
        write(os.path.join(b, "before"), b"1")
        assert ls(c) == ["before"]  # C keeps the listing
        _restart_master(mc)
        write(os.path.join(b, "after"), b"2")  # B reconnects; C sent nothing yet
        assert os.path.exists(os.path.join(c, "after"))
    finally:
        stop_mount(mnt_c, proc)


def test_other_clients_never_see_the_mtime_go_back(mc, d):
    """A write's commit sets the file's mtime on the master (later than the kernel's own
    time of the write, which the write-back cache keeps and writes back at close and
    again with the ctime of a later rename). The master keeps the later one."""
    from elkfs.client.client import Client

    async def master_mtime(path: str) -> int:
        host, port = mc.cluster.master_addr
        async with await Client.connect(host, port) as c:
            return (await c.stat(path)).mtime_ns

    p = os.path.join(d, "f")
    rel = "/" + os.path.relpath(p, mc.mnt)
    for i in range(5):
        write(p, b"x" * 4096)
        closed = asyncio.run(master_mtime(rel))
        os.rename(p, p + ".r")
        assert asyncio.run(master_mtime(rel + ".r")) >= closed
        os.unlink(p + ".r")
