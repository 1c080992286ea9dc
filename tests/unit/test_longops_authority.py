"""A non-root identity's long operations over a big tree are authorized in steps
(elkfs/master/authority.py "whole trees", elkfs/master/longops.py): the stepped check
takes a bounded number of entries per step and decides as the one-go check does; the
long op's steps run on a real namespace (no sockets: a store that applies records as
the master's does), refused trees change nothing, and a tree changed between the check
and the change steps never lets a user change another's file or copy one it may not
read."""

from __future__ import annotations

import asyncio
import errno
import stat

import pytest

from elkfs.access import Who
from elkfs.master import authority, longops
from elkfs.master.longops import LongOps
from elkfs.master.namespace import ROOT
from elkfs.master.records import DropDetached, SnapshotBegin
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

from .test_namespace import SESSION, Runner, state

USER, OTHER = 1000, 2000
ME = Who(USER, USER)


def mkdir(r: Runner, parent: int, name: bytes, uid=USER, mode=0o755) -> int:
    return r.do(m.Mkdir(parent, name, mode, uid, uid)).attr.inode


def mkfile(r: Runner, parent: int, name: bytes, uid=USER, mode=0o644) -> int:
    return r.do(m.Mknod(parent, name, stat.S_IFREG | mode, uid, uid)).attr.inode


def user_tree(r: Runner) -> tuple[int, int]:
    """/t, the user's: 5 directories of 20 files and a deep chain. Returns (top, the
    deepest directory)."""
    top = mkdir(r, ROOT, b"t")
    for i in range(5):
        d = mkdir(r, top, b"d%d" % i)
        for j in range(20):
            mkfile(r, d, b"f%d" % j)
    deep = top
    for i in range(6):
        deep = mkdir(r, deep, b"deep%d" % i)
    mkfile(r, deep, b"last")
    return top, deep


def stepped(ns, who, op, limit: int) -> tuple[int, int]:
    """Runs a TreeCheck to the end (FsError when refused); returns the steps taken, each
    checked to be within `limit` entries, and the entries checked."""
    check = authority.TreeCheck(ns, who, op)
    steps, before = 0, 0
    while True:
        steps += 1
        done = check.step(limit)
        assert check.visited - before <= limit
        before = check.visited
        if done:
            return steps, check.visited


def one_go(ns, who, op) -> int:
    """The status of the one-go check (0: allowed)."""
    try:
        authority.check(ns, who, op, SESSION, 0)
    except FsError as e:
        return e.status
    return 0


OPS = {
    "setgoal": lambda top: m.SetGoal(top, 3, True),
    "settrashtime": lambda top: m.SetTrashTime(top, 7200, True),
    "snapshot": lambda top: m.Snapshot(top, ROOT, b"copy", USER, USER),
}


@pytest.mark.parametrize("kind", sorted(OPS))
def test_stepped_check_decides_as_the_one_go_check(kind):
    r = Runner()
    r.do(m.SetAttr(ROOT, m.SET_MODE, mode=stat.S_IFDIR | 0o777))  # the user may write /
    top, deep = user_tree(r)
    op = OPS[kind](top)
    assert authority.needs_tree_check(r.ns, ME, op)
    assert not authority.needs_tree_check(r.ns, Who(0, 0), op)  # root: no walk
    assert not authority.needs_tree_check(r.ns, ME, m.SetGoal(top, 3, False))
    assert one_go(r.ns, ME, op) == 0
    entries = len(goals(r, top))  # 113
    assert stepped(r.ns, ME, op, 7) == (-(-entries // 7), entries)
    # something the user may not have deep inside: both refuse
    mkfile(r, deep, b"foreign", uid=OTHER, mode=0o600)
    status = one_go(r.ns, ME, op)
    assert status == (errno.EACCES if kind == "snapshot" else errno.EPERM)
    with pytest.raises(FsError) as e:
        stepped(r.ns, ME, op, 7)
    assert e.value.status == status
    authority.check(r.ns, ME, op, SESSION, 0, tree=False)  # the top alone is fine


# ---------------------------------------------------------------- the long op's steps


class _Store:
    """What LongOps uses of the master's store, applying records to a Runner's
    namespace as the store does (no journal file, no replicas)."""

    def __init__(self, runner: Runner):
        self.runner = runner

    @property
    def ns(self):
        return self.runner.ns

    def change(self, op, ts_ns: int, session: bytes = b"", seq: int = 0):
        result = self.runner.do(op, session=session)
        return result, self.ns.version


class _Chunks:
    def __init__(self, ns):
        self.ns = ns

    def run_effects(self):
        self.ns.effects = []


class _Master:
    leading = True

    def __init__(self, runner: Runner):
        self.store = _Store(runner)
        self.chunks = _Chunks(runner.ns)


@pytest.fixture
def small_steps(monkeypatch):
    """Steps of a few entries, so a tree of a hundred takes many."""
    monkeypatch.setattr(longops, "STEP_ENTRIES", 10)
    monkeypatch.setattr(longops, "CHECK_STEP_ENTRIES", 10)


def run_long(r: Runner, op, who=ME, between=None):
    """Runs the long op as the master does after `take`; `between(step)` runs after each
    step of the permission check walk (the tree changing meanwhile)."""
    ops = LongOps(_Master(r))
    msg = m.MetaRequest(1, SESSION, 10**6, op, uid=who.uid, gid=who.gid)
    run = ops._snapshot if type(op) is m.Snapshot else ops._set_recursive
    if not authority.needs_tree_check(r.ns, who, op):
        who = None  # as LongOps.take: root's, nothing to check
    if between is not None:
        real = authority.TreeCheck

        class Watched(real):
            steps = 0

            def step(self, limit):
                done = super().step(limit)
                Watched.steps += 1
                between(Watched.steps)
                return done

        authority.TreeCheck = Watched
    try:
        return asyncio.run(run(msg, who)), ops
    finally:
        if between is not None:
            authority.TreeCheck = real


def goals(r: Runner, top: int) -> dict[int, int]:
    out, stack = {}, [top]
    while stack:
        node = r.ns.nodes[stack.pop()]
        out[node.inode] = node.goal
        stack.extend(getattr(node, "children", {}).values())
    return out


def test_allowed_tree_changed_in_steps(small_steps):
    r = Runner()
    top, _ = user_tree(r)
    (result, _), ops = run_long(r, m.SetGoal(top, 3, True))
    assert set(goals(r, top).values()) == {3}
    assert ops.steps_done == 12  # 112 entries below the top, 10 a step
    r.do(m.SetAttr(ROOT, m.SET_MODE, mode=stat.S_IFDIR | 0o777))
    (attr, _), _ = run_long(r, m.Snapshot(top, ROOT, b"copy", USER, USER))
    copy = r.ns.lookup(ROOT, b"copy").inode
    assert len(goals(r, copy)) == len(goals(r, top)) == 113
    assert not r.ns.building


@pytest.mark.parametrize("kind", sorted(OPS))
def test_a_foreign_file_deep_inside_refuses_and_changes_nothing(small_steps, kind):
    r = Runner()
    r.do(m.SetAttr(ROOT, m.SET_MODE, mode=stat.S_IFDIR | 0o777))
    top, deep = user_tree(r)
    mkfile(r, deep, b"foreign", uid=OTHER, mode=0o600)
    before = state(r.ns)
    with pytest.raises(FsError) as e:
        run_long(r, OPS[kind](top))
    assert e.value.status == (errno.EACCES if kind == "snapshot" else errno.EPERM)
    assert state(r.ns) == before  # refused by the check walk: not one record


def test_an_entry_made_after_the_check_is_left_alone(small_steps):
    """A foreign file appears (another user writes into the user's world-writable
    directory) behind the check walk: the change steps re-check and skip it."""
    r = Runner()
    top, _ = user_tree(r)
    r.do(m.SetAttr(top, m.SET_MODE, mode=stat.S_IFDIR | 0o777))
    made = []

    def intruder(step):
        if step == 2:  # the walk is past /t/d0: it will not see a name before that one
            made.append(mkfile(r, top, b"a-intruder", uid=OTHER))

    run_long(r, m.SetGoal(top, 5, True), between=intruder)
    assert made and r.ns.nodes[made[0]].goal != 5  # another's: untouched
    assert {g for i, g in goals(r, top).items() if i != made[0]} == {5}


def test_a_file_given_away_after_the_check_is_left_alone(small_steps):
    r = Runner()
    top, _ = user_tree(r)
    victim = r.ns.lookup(r.ns.lookup(top, b"d0").inode, b"f0").inode

    def chown(step):
        if step == 1:  # the walk checked /t/d0/f0 in its first step
            r.do(m.SetAttr(victim, m.SET_UID, uid=OTHER))  # root gives it away

    run_long(r, m.SetTrashTime(top, 7200, True), between=chown)
    assert r.ns.nodes[victim].trashtime != 7200
    assert r.ns.nodes[top].trashtime == 7200


def test_an_unreadable_entry_after_the_check_stops_the_snapshot(small_steps):
    """No copy of what the user may not read: the snapshot stops with EACCES where it
    meets the entry, and its detached copy is freed."""
    r = Runner()
    r.do(m.SetAttr(ROOT, m.SET_MODE, mode=stat.S_IFDIR | 0o777))
    top, _ = user_tree(r)
    d0 = r.ns.lookup(top, b"d0").inode
    r.do(m.SetAttr(d0, m.SET_MODE, mode=stat.S_IFDIR | 0o777))

    def intruder(step):
        if step == 2:  # the walk is past /t/d0/f0: it will not see a name before it
            mkfile(r, d0, b"a-secret", uid=OTHER, mode=0o600)

    nodes_before = len(r.ns.nodes)
    with pytest.raises(FsError) as e:
        run_long(r, m.Snapshot(top, ROOT, b"copy", USER, USER), between=intruder)
    assert e.value.status == errno.EACCES
    kinds = [type(rec.op) for rec in r.records]
    assert SnapshotBegin in kinds and DropDetached in kinds  # refused by a copy step
    assert b"copy" not in r.ns.nodes[ROOT].children
    assert not r.ns.building
    assert len(r.ns.nodes) == nodes_before + 1  # the secret; no copy left behind


def test_root_walks_nothing(small_steps):
    r = Runner()
    top, deep = user_tree(r)
    mkfile(r, deep, b"foreign", uid=OTHER, mode=0o600)
    checks = []

    run_long(r, m.SetGoal(top, 2, True), who=Who(0, 0), between=checks.append)
    assert not checks
    assert set(goals(r, top).values()) == {2}


def test_anothers_readable_file_may_be_copied_not_changed():
    r = Runner()
    r.do(m.SetAttr(ROOT, m.SET_MODE, mode=stat.S_IFDIR | 0o777))
    top, deep = user_tree(r)
    mkfile(r, deep, b"shared", uid=OTHER, mode=0o644)
    for kind, status in (("snapshot", 0), ("setgoal", errno.EPERM),
                         ("settrashtime", errno.EPERM)):
        op = OPS[kind](top)
        assert one_go(r.ns, ME, op) == status
        try:
            stepped(r.ns, ME, op, 7)
            got = 0
        except FsError as e:
            got = e.status
        assert got == status
