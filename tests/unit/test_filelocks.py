"""The master's file lock table (pure) and its records in the namespace: conflicts, range
splitting and merging, owners, sessions, and locks surviving replay and checkpoints."""

import errno

import pytest

from elkfs.master import checkpoint
from elkfs.master.filelocks import (F_RDLCK, F_UNLCK, F_WRLCK, LOCK_FLOCK, LOCK_POSIX,
                                    OFFSET_MAX, LockTable, LockWaiters)
from elkfs.master.namespace import ROOT, Namespace
from elkfs.master.records import CloseSession, DropSessionLocks, OpenSession, Record
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

A, B = b"a" * 16, b"b" * 16


def ranges(t: LockTable, inode=1, kind=LOCK_POSIX):
    return sorted((lk.session[:1], lk.owner, "RW"[lk.type], lk.start, lk.end)
                  for lk in t.by_file.get((inode, kind), ()))


def test_read_locks_share_write_locks_exclude():
    t = LockTable()
    t.set(1, LOCK_POSIX, A, 1, 10, F_RDLCK, 0, 99)
    assert t.conflict(1, LOCK_POSIX, B, 1, F_RDLCK, 50, 60) is None
    assert t.conflict(1, LOCK_POSIX, B, 1, F_WRLCK, 50, 60).pid == 10
    assert t.conflict(1, LOCK_POSIX, B, 1, F_WRLCK, 100, 200) is None  # no overlap
    assert t.conflict(1, LOCK_POSIX, A, 1, F_WRLCK, 0, 200) is None  # its own
    assert t.conflict(1, LOCK_POSIX, A, 2, F_WRLCK, 0, 0) is not None  # another owner
    assert t.conflict(1, LOCK_FLOCK, B, 1, F_WRLCK, 0, OFFSET_MAX) is None  # other space
    assert t.conflict(2, LOCK_POSIX, B, 1, F_WRLCK, 0, 0) is None  # other file


def test_unlock_in_the_middle_splits_and_same_type_neighbours_merge():
    t = LockTable()
    t.set(1, LOCK_POSIX, A, 1, 10, F_WRLCK, 0, 99)
    assert t.set(1, LOCK_POSIX, A, 1, 10, F_UNLCK, 40, 59)
    assert ranges(t) == [(b"a", 1, "W", 0, 39), (b"a", 1, "W", 60, 99)]
    assert not t.set(1, LOCK_POSIX, A, 1, 10, F_WRLCK, 40, 59)  # nothing given up
    assert ranges(t) == [(b"a", 1, "W", 0, 99)]
    assert t.set(1, LOCK_POSIX, A, 1, 10, F_RDLCK, 10, 19)  # a downgrade frees
    assert ranges(t) == [(b"a", 1, "R", 10, 19), (b"a", 1, "W", 0, 9),
                         (b"a", 1, "W", 20, 99)]
    assert t.conflict(1, LOCK_POSIX, B, 1, F_RDLCK, 10, 19) is None


def test_release_owner_and_session():
    t = LockTable()
    t.set(1, LOCK_POSIX, A, 1, 10, F_WRLCK, 0, 9)
    t.set(1, LOCK_FLOCK, A, 1, 10, F_WRLCK, 0, OFFSET_MAX)
    t.set(1, LOCK_POSIX, A, 2, 11, F_WRLCK, 20, 29)
    t.set(2, LOCK_POSIX, A, 1, 10, F_RDLCK, 0, 9)
    t.set(1, LOCK_POSIX, B, 1, 12, F_RDLCK, 50, 59)
    assert t.release_owner(1, A, 1)  # both kinds
    assert not t.release_owner(1, A, 1)
    assert ranges(t) == [(b"a", 2, "W", 20, 29), (b"b", 1, "R", 50, 59)]
    assert ranges(t, kind=LOCK_FLOCK) == []
    assert t.inodes_of(A) == {1, 2}
    assert t.release_session(A) == {1, 2}
    assert ranges(t) == [(b"b", 1, "R", 50, 59)] and t.inodes_of(A) == set()


def test_waiters_are_woken_once():
    w = LockWaiters()
    w.add(1, A, 5)
    w.add(1, A, 5)
    w.add(1, B, 6)
    w.add(2, B, 7)
    w.forget_session(B)
    assert w.take(1) == {A: [5]}
    assert w.take(1) == {} and w.take(2) == {}


class Runner:
    def __init__(self):
        self.ns = Namespace()
        self.records = []
        self.seq = 0
        for s in (A, B):
            self.do(OpenSession(s, "t"), b"")

    def do(self, op, session=A):
        self.seq += 1
        rec = Record(self.ns.version + 1, 1000 + self.seq, session, self.seq if session else 0,
                     op)
        out = self.ns.apply(rec)
        self.records.append(rec)
        return out


def test_lock_records_conflicts_replay_and_checkpoint(tmp_path):
    r = Runner()
    f = r.do(m.Mknod(ROOT, b"f", 0o100644, 0, 0)).attr.inode
    r.do(m.SetLock(f, 7, LOCK_POSIX, F_WRLCK, 0, 99, pid=42))
    with pytest.raises(FsError) as e:
        r.do(m.SetLock(f, 1, LOCK_POSIX, F_RDLCK, 50, 50), B)
    assert e.value.status == errno.EAGAIN
    r.version_after_failure = r.ns.version
    assert r.ns.get_lock(B, m.GetLock(f, 1, LOCK_POSIX, F_RDLCK, 0, 0)) == \
        m.LockOut(F_WRLCK, 0, 99, 42)
    assert r.ns.get_lock(A, m.GetLock(f, 7, LOCK_POSIX, F_WRLCK, 0, 0)).type == F_UNLCK
    r.do(m.SetLock(f, 3, LOCK_FLOCK, F_RDLCK, 0, OFFSET_MAX), B)
    with pytest.raises(FsError):
        r.do(m.SetLock(f, 1, LOCK_POSIX, F_RDLCK, 0, 0, wait=3), B)
    with pytest.raises(FsError) as e:
        r.do(m.SetLock(f, 1, 9, F_RDLCK, 0, 0), B)
    assert e.value.status == errno.EINVAL

    replayed = Namespace()
    for rec in r.records:
        try:
            replayed.apply(rec)
        except FsError:
            raise AssertionError("only applied records are journaled")
    assert replayed.locks.rows() == r.ns.locks.rows()

    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    assert sorted(map(repr, checkpoint.read(path).locks.rows())) == \
        sorted(map(repr, r.ns.locks.rows()))

    r.do(m.ReleaseLocks(f, 7))
    r.do(m.SetLock(f, 1, LOCK_POSIX, F_WRLCK, 0, 0), B)
    r.do(DropSessionLocks(B), b"")
    assert len(r.ns.locks) == 0
    r.do(m.SetLock(f, 7, LOCK_POSIX, F_WRLCK, 0, 0))
    r.do(CloseSession(A), b"")
    assert len(r.ns.locks) == 0


def test_append_reserve_gives_each_append_its_own_range():
    r = Runner()
    f = r.do(m.Mknod(ROOT, b"f", 0o100644, 0, 0)).attr.inode
    a = r.do(m.AppendReserve(f, 10))
    b = r.do(m.AppendReserve(f, 5), B)
    assert (a.offset, b.offset, b.attr.size) == (0, 10, 15)
