"""Global file locks: three mounts of one cluster (A is the module's mount, B and C
`mfsmount -f` processes), and real processes as lock owners (`lockers.py`).

A lock taken through one mount must hold against every other mount (the master holds
it), F_GETLK must name the holder, blocking waits must be woken by the master when the
holder closes, dies, or its whole mount goes away, and a waiter that is killed must leave
no lock behind. Nothing here sleeps to let something happen: every wait is for a
condition (the one exception checks that a waiter is *still* waiting after a while).
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys

import pytest

from .lockers import Locker, flock_struct, getlk, start_mount, stop_mount, wait_until

NET = "127.0.60"
CHUNKSERVERS = 1
STILL_WAITING_S = 1.0  # a waiter that got a held lock would have it well before this

COUNTER = r'''
import fcntl, sys
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    with open(path, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        value = int(f.read(8))
        f.seek(0)
        f.write(b"%08d" % (value + 1))
'''


@pytest.fixture(scope="module")
def mounts(mc):
    started = [start_mount(mc, name) for name in ("mnt_b", "mnt_c")]
    try:
        yield [mnt for mnt, _ in started]
    finally:
        for mnt, proc in started:
            stop_mount(mnt, proc)


def paths(mc, mounts, d, name: str) -> tuple[str, str, str]:
    """`name` in the test's directory as seen through A, B and C."""
    rel = os.path.relpath(os.path.join(d, name), mc.mnt)
    return tuple(os.path.join(root, rel) for root in (mc.mnt, *mounts))


def eventually(take_lock) -> None:
    """Take a lock that is being given up: flock and OFD locks go with the open file,
    when the kernel sends its RELEASE, which it does just after the last close returned."""
    def took() -> bool:
        try:
            take_lock()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return False
        return True

    wait_until(took, what="the lock to be given up")


def make(path: str, data: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def lockers():
    made: list[Locker] = []

    def new(*args, **kw) -> Locker:
        made.append(Locker(*args, **kw))
        return made[-1]

    yield new
    for lk in made:
        lk.close()


def test_flock_counter_from_two_clients_is_exact(mc, mounts, d):
    a, b, _ = paths(mc, mounts, d, "counter")
    make(a, b"%08d" % 0)
    n = 200
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, p, str(n)]) for p in (a, b)]
    for p in procs:
        assert p.wait(300) == 0
    with open(b, "rb") as f:
        assert int(f.read()) == 2 * n


def test_fcntl_byte_ranges_and_f_getlk_across_clients(mc, mounts, d, lockers):
    a, b, c = paths(mc, mounts, d, "ranges")
    make(a, b"x" * 100)
    writer = lockers(a, "posix", "w", 0, 10)
    reader = lockers(a, "posix", "r", 20, 10)
    assert writer.wait_locked() and reader.wait_locked()

    fd = os.open(b, os.O_RDWR)
    try:
        assert getlk(fd, fcntl.F_GETLK, fcntl.F_WRLCK, 5, 1) == \
            (fcntl.F_WRLCK, 0, 10, writer.pid)
        assert getlk(fd, fcntl.F_GETLK, fcntl.F_WRLCK, 25, 1) == \
            (fcntl.F_RDLCK, 20, 10, reader.pid)
        assert getlk(fd, fcntl.F_GETLK, fcntl.F_RDLCK, 25, 1)[0] == fcntl.F_UNLCK
        assert getlk(fd, fcntl.F_GETLK, fcntl.F_WRLCK, 10, 10)[0] == fcntl.F_UNLCK
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 10, 10))  # the gap
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_RDLCK, 25, 1))  # shared
        with pytest.raises(OSError) as e:
            fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 25, 1))
        assert e.value.errno in (errno.EAGAIN, errno.EACCES)

        fc = os.open(c, os.O_RDWR)
        try:
            # C sees B's lock, with this process as its holder; OFD locks conflict too.
            assert getlk(fc, fcntl.F_GETLK, fcntl.F_WRLCK, 15, 1) == \
                (fcntl.F_WRLCK, 10, 10, os.getpid())
            with pytest.raises(OSError) as e:
                fcntl.fcntl(fc, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_WRLCK, 0, 1))
            assert e.value.errno == errno.EAGAIN
            fcntl.fcntl(fc, fcntl.F_OFD_SETLK, flock_struct(fcntl.F_WRLCK, 50, 10))
            with pytest.raises(OSError):
                fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 55, 1))
        finally:
            os.close(fc)  # the OFD lock goes with its open file (the kernel's RELEASE)
        eventually(lambda: fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 55, 1)))
    finally:
        os.close(fd)  # and this process's POSIX locks with any close of the file
    writer.release()
    reader.release()
    fc = os.open(c, os.O_RDWR)
    try:
        eventually(lambda: fcntl.fcntl(fc, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 0, 0)))
    finally:
        os.close(fc)


def test_flock_holds_across_clients_and_not_against_posix_locks(mc, mounts, d, lockers):
    a, b, c = paths(mc, mounts, d, "flocked")
    make(a)
    holder = lockers(a, "flock", "r")
    assert holder.wait_locked()
    with open(b, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared with the holder
        with open(c, "r+b") as g:
            with pytest.raises(BlockingIOError):
                fcntl.flock(g, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(g, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another space of locks
    holder.release()
    with open(c, "rb") as g:
        eventually(lambda: fcntl.flock(g, fcntl.LOCK_EX | fcntl.LOCK_NB))


@pytest.mark.parametrize("how", ["flock", "posix", "ofd"])
def test_a_blocking_lock_is_woken_when_the_holder_is_killed(mc, mounts, d, lockers, how):
    a, b, c = paths(mc, mounts, d, "f")
    make(a)
    holder = lockers(a, how)
    assert holder.wait_locked()
    waiter = lockers(b if how != "posix" else c, how)
    assert not waiter.wait_locked(STILL_WAITING_S)
    holder.kill()
    assert waiter.wait_locked()


def test_a_killed_waiter_leaves_no_lock(mc, mounts, d, lockers):
    a, b, c = paths(mc, mounts, d, "f")
    make(a)
    holder = lockers(a, "posix")
    assert holder.wait_locked()
    waiter = lockers(b, "posix")
    assert not waiter.wait_locked(STILL_WAITING_S)
    waiter.kill()  # the kernel interrupts its F_SETLKW: the mount gives up the wait
    holder.release()
    fd = os.open(c, os.O_RDWR)
    try:
        wait_until(lambda: getlk(fd, fcntl.F_GETLK, fcntl.F_WRLCK, 0, 0)[0] == fcntl.F_UNLCK,
                   what="the file to be unlocked")
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 0, 0))
    finally:
        os.close(fd)


def test_a_blocking_lock_is_woken_when_the_holders_mount_goes_away(mc, mounts, d, lockers):
    a, b, _ = paths(mc, mounts, d, "f")
    make(a)
    mnt_d, proc_d = start_mount(mc, "mnt_d")
    try:
        holder = lockers(os.path.join(mnt_d, os.path.relpath(a, mc.mnt)), "flock")
        assert holder.wait_locked()
        waiter = lockers(b, "flock")
        assert not waiter.wait_locked(STILL_WAITING_S)
        # The holder keeps its file open, so the mount cannot simply be unmounted:
        # abort its FUSE connection (umount -f), and the mount process ends its session.
        subprocess.run(["umount", "-f", mnt_d], capture_output=True)
        proc_d.wait(30)
        assert waiter.wait_locked()
    finally:
        stop_mount(mnt_d, proc_d)


def test_a_lock_is_kept_across_a_master_restart(mc, mounts, d, lockers):
    a, b, _ = paths(mc, mounts, d, "f")
    make(a)
    holder = lockers(a, "flock")
    assert holder.wait_locked()
    mc.cluster.restart(mc.cluster.masters[0])  # a checkpoint and the journal carry it
    mc.cluster.wait_chunkservers_registered()
    with open(b, "rb") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    waiter = lockers(b, "flock")
    assert not waiter.wait_locked(STILL_WAITING_S)
    holder.release()
    assert waiter.wait_locked()
