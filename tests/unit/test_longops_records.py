"""The step records of long operations (elkfs/master/longops.py) on the pure namespace:
a snapshot made in steps equals the one-step snapshot; nothing of it is visible before
its last step; a detached copy survives a checkpoint and is freed in steps back to the
state before; replaying the records gives the same state; the tree walk is bounded."""

import stat

import pytest

from elkfs.master import checkpoint
from elkfs.master.namespace import ROOT, Namespace
from elkfs.master.nodes import DirNode
from elkfs.master.records import (DropDetached, Record, SetGoalMany, SnapshotBegin,
                                  SnapshotCopy, SnapshotEnd)
from elkfs.master.treewalk import DirTotals, TreeWalk, bigger_than
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

from .test_namespace import Runner, state


def tree(r: Runner) -> int:
    """/src: 3 levels, files with chunks, a symlink, an xattr."""
    src = r.mkdir(ROOT, b"src")
    for i in range(5):
        d = r.mkdir(src, b"d%d" % i)
        for j in range(7):
            f = r.mkfile(d, b"f%d" % j)
            r.do(m.WriteChunk(f, 0))
        sub = r.mkdir(d, b"sub")
        r.mkfile(sub, b"deep")
        r.do(m.Symlink(sub, b"ln", b"../f0", 0, 0))
    r.do(m.SetXattr(src, b"user.k", b"v"))
    return src


def in_steps(r: Runner, src: int, parent: int, name: bytes, step: int, stop_after=None):
    """What the leader does, with `step` entries per record. Returns the top copy."""
    top = r.do(SnapshotBegin(src, parent, name), session=b"")
    pending = [(src, top)]
    steps = 0
    while pending:
        batch = []
        while pending and len(batch) < step:
            s, c = pending.pop(0)
            batch += [(child, c, n) for n, child in r.ns.nodes[s].children.items()]
        for i in range(0, len(batch), step):
            part = batch[i:i + step]
            made = r.do(SnapshotCopy(top, part), session=b"")
            pending += [(s, c) for (s, _, _), c in zip(part, made)
                        if c and isinstance(r.ns.nodes[c], DirNode)]
            steps += 1
            if stop_after is not None and steps >= stop_after:
                return top
    return top


def shape(ns: Namespace, inode: int):
    """A tree as nested (name, kind, goal, chunks, target) without inode numbers."""
    node = ns.nodes[inode]
    if isinstance(node, DirNode):
        return ("dir", node.mode, node.nlink, node.xattrs,
                sorted((n, shape(ns, c)) for n, c in node.children.items()))
    return (type(node).__name__, node.mode, getattr(node, "chunks", None),
            getattr(node, "target", None))


def test_snapshot_in_steps_equals_the_one_step_snapshot():
    one, stepped = Runner(), Runner()
    src_one, src_stepped = tree(one), tree(stepped)
    one.do(m.Snapshot(src_one, ROOT, b"copy"))
    top = in_steps(stepped, src_stepped, ROOT, b"copy", step=4)
    with pytest.raises(FsError):
        stepped.ns.lookup(ROOT, b"copy")  # not visible before the last step
    stepped.do(SnapshotEnd(top))
    assert shape(stepped.ns, stepped.ns.lookup(ROOT, b"copy").inode) == \
        shape(one.ns, one.ns.lookup(ROOT, b"copy").inode)
    assert stepped.ns.nodes[ROOT].nlink == one.ns.nodes[ROOT].nlink
    assert sorted((c.chunk_id, c.refs) for c in stepped.ns.chunks.values()) == \
        sorted((c.chunk_id, c.refs) for c in one.ns.chunks.values())
    assert not stepped.ns.building


def test_replay_of_the_steps_gives_the_same_state():
    live = Runner()
    src = tree(live)
    top = in_steps(live, src, ROOT, b"copy", step=3)
    live.do(SetGoalMany([src, top, 999999], 5), session=b"")
    live.do(SnapshotEnd(top))
    replica = Namespace()
    for rec in live.records:
        replica.apply(rec)
    assert state(replica) == state(live.ns)


def test_end_fails_when_the_name_was_taken_and_the_copy_is_freed_in_steps(tmp_path):
    r = Runner()
    src = tree(r)
    before = state(r.ns)
    top = in_steps(r, src, ROOT, b"copy", step=5, stop_after=4)  # cut short
    # A checkpoint keeps the detached copy and where it was going.
    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    assert checkpoint.read(path).building == r.ns.building == {top: (ROOT, b"copy")}
    r.mkdir(ROOT, b"copy")
    with pytest.raises(FsError):
        r.do(SnapshotEnd(top))
    r.do(m.Rmdir(ROOT, b"copy"))
    freed = []
    while top in r.ns.building:
        freed.append(r.do(DropDetached(top, 7), session=b""))
    assert all(n <= 7 for n in freed) and len(freed) > 2
    after = state(r.ns)
    # The same nodes (the root's times aside: /copy came and went) and chunk references.
    assert [n for n in after[3] if n[1][0] != ROOT] == [n for n in before[3] if n[1][0] != ROOT]
    assert after[4] == before[4]
    assert not r.ns.effects  # the source still holds every chunk


def test_tree_walk_is_bounded_and_complete():
    r = Runner()
    src = tree(r)
    walk = TreeWalk(r.ns.nodes, src)
    batches = []
    while True:
        batch = walk.next_batch(10)
        if not batch:
            break
        batches.append(batch)
    assert all(len(b) <= 10 for b in batches)
    seen = [n.inode for b in batches for n in b]
    assert len(seen) == len(set(seen)) == 1 + 5 * (1 + 7 + 1 + 2)
    totals = DirTotals()
    for b in batches:
        totals.add(b)
    assert totals.result() == r.ns.dirstats(src)
    assert bigger_than(r.ns.nodes, src, 10) and not bigger_than(r.ns.nodes, src, 56)


@pytest.mark.parametrize("spread", [False, True])
def test_tree_walk_under_changes_visits_what_stays_once(monkeypatch, spread):
    """Between two batches entries come and go, in the walked directories and ahead of
    or behind the walk: each entry there for the whole walk is visited exactly once,
    nothing is visited twice, nothing that never was there is visited."""
    import random

    from elkfs.master import direntries

    if spread:  # /top/d0's entries are spread
        monkeypatch.setattr(direntries, "SPREAD_AT", 40)
        monkeypatch.setattr(direntries, "SHRINK_AT", 10)
    rng = random.Random(5)
    r = Runner()
    top = r.mkdir(ROOT, b"top")
    dirs = [top] + [r.mkdir(top, b"d%d" % i) for i in range(3)]
    files = {d: [] for d in dirs}
    for i in range(150):
        d = dirs[1] if i < 100 else rng.choice(dirs)
        files[d].append((b"f%03d" % i, r.mkfile(d, b"f%03d" % i)))
    staying = {inode for d in dirs for _, inode in files[d]} | set(dirs)
    ever = set(staying)
    assert (type(r.ns.nodes[dirs[1]].children) is direntries._Spread) == spread
    walk = TreeWalk(r.ns.nodes, top)
    seen: list[int] = []
    while True:
        batch = walk.next_batch(7)
        if not batch:
            break
        seen += [n.inode for n in batch]
        for _ in range(6):
            d = rng.choice(dirs)
            if files[d] and rng.random() < 0.6:
                name, inode = files[d].pop(rng.randrange(len(files[d])))
                r.do(m.Unlink(d, name))
                staying.discard(inode)
            else:
                name = b"n%05d" % rng.randrange(100000)
                if name not in r.ns.nodes[d].children:
                    inode = r.mkfile(d, name)
                    files[d].append((name, inode))
                    ever.add(inode)
    assert walk.done
    assert len(seen) == len(set(seen)), "a node visited twice"
    assert staying <= set(seen) <= ever
