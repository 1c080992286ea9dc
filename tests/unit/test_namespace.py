"""The metadata state machine: POSIX semantics of each op, failures that change nothing,
and replay of the journaled records reaching the identical state."""

import errno
import random
import stat

import pytest

from elkfs.master import checkpoint
from elkfs.master.checkpoint import _node_tuple
from elkfs.master.namespace import (ROOT, DeleteChunkEffect, DuplicateChunkEffect, Namespace,
                                    TruncateChunkEffect)
from elkfs.master.records import OpenSession, Record
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

SESSION = b"s" * 16


class Runner:
    """Applies ops as the master does: stamp a record, apply, keep it if it succeeded."""

    def __init__(self):
        self.ns = Namespace()
        self.records: list[Record] = []
        self.ts = 1_000_000_000
        self.seq = 0
        self.do(OpenSession(SESSION, "test"), session=b"")

    def do(self, op, session=SESSION):
        self.ts += 1000
        self.seq += 1
        rec = Record(self.ns.version + 1, self.ts, session, self.seq if session else 0, op)
        result = self.ns.apply(rec)
        self.records.append(rec)
        return result

    def fails(self, op, code):
        before = state(self.ns)
        with pytest.raises(FsError) as e:
            self.do(op)
        assert e.value.status == code
        assert state(self.ns) == before, "a failed op changed the state"

    def mkdir(self, parent, name, mode=0o755):
        return self.do(m.Mkdir(parent, name, mode, 0, 0)).attr.inode

    def mkfile(self, parent, name, mode=0o644):
        return self.do(m.Mknod(parent, name, stat.S_IFREG | mode, 0, 0)).attr.inode


def state(ns: Namespace):
    return (
        ns.version, ns.next_inode, ns.next_chunk_id,
        sorted(_node_tuple(n) for n in ns.nodes.values()),
        sorted((c.chunk_id, c.version, c.refs) for c in ns.chunks.values()),
        sorted((s.session_id, tuple(sorted(s.open_files.items())), len(s.results))
               for s in ns.sessions.values()),
        sorted(ns.trash.items()),
    )


def test_create_lookup_and_attributes():
    r = Runner()
    d = r.mkdir(ROOT, b"d", 0o750)
    f = r.mkfile(d, b"f", 0o600)
    ns = r.ns
    assert ns.lookup(ROOT, b"d").inode == d
    attr = ns.attr(ns.lookup(d, b"f"))
    assert stat.S_ISREG(attr.mode) and stat.S_IMODE(attr.mode) == 0o600
    assert attr.nlink == 1 and attr.size == 0 and attr.goal == 2
    assert ns.nodes[d].nlink == 2 and ns.nodes[ROOT].nlink == 3
    assert ns.lookup(d, b"..").inode == ROOT
    r.fails(m.Mkdir(d, b"f", 0o755, 0, 0), errno.EEXIST)
    r.fails(m.Mknod(f, b"x", stat.S_IFREG | 0o644, 0, 0), errno.ENOTDIR)
    r.fails(m.Mkdir(d, b"x" * 256, 0o755, 0, 0), errno.ENAMETOOLONG)
    r.fails(m.Mkdir(d, b"a/b", 0o755, 0, 0), errno.EINVAL)
    r.fails(m.Mkdir(999, b"a", 0o755, 0, 0), errno.ENOENT)


def test_special_nodes_symlinks_and_hard_links():
    r = Runner()
    r.do(m.SetTrashTime(ROOT, 0))
    fifo = r.do(m.Mknod(ROOT, b"p", stat.S_IFIFO | 0o644, 0, 0)).attr
    assert stat.S_ISFIFO(fifo.mode)
    dev = r.do(m.Mknod(ROOT, b"c", stat.S_IFCHR | 0o600, 0, 0, rdev=0x0501)).attr
    assert stat.S_ISCHR(dev.mode) and dev.rdev == 0x0501
    link = r.do(m.Symlink(ROOT, b"l", b"/target/path", 0, 0)).attr
    assert stat.S_ISLNK(link.mode) and link.size == len(b"/target/path")
    assert r.ns.query(m.ReadLink(link.inode)).value == b"/target/path"
    f = r.mkfile(ROOT, b"f")
    assert r.do(m.Link(f, ROOT, b"g")).attr.nlink == 2
    d = r.mkdir(ROOT, b"d")
    r.fails(m.Link(d, ROOT, b"dd"), errno.EPERM)
    r.do(m.Unlink(ROOT, b"f"))
    assert r.ns.attr(r.ns.lookup(ROOT, b"g")).nlink == 1
    r.do(m.Unlink(ROOT, b"g"))
    assert f not in r.ns.nodes
    r.fails(m.Unlink(ROOT, b"d"), errno.EISDIR)
    r.fails(m.Unlink(ROOT, b"nope"), errno.ENOENT)


def test_rmdir_and_rename_edge_cases():
    r = Runner()
    r.do(m.SetTrashTime(ROOT, 0))
    a = r.mkdir(ROOT, b"a")
    b = r.mkdir(a, b"b")
    r.mkfile(b, b"f")
    e = r.mkdir(ROOT, b"empty")
    r.fails(m.Rmdir(ROOT, b"a"), errno.ENOTEMPTY)
    r.fails(m.Rename(ROOT, b"a", b, b"x"), errno.EINVAL)  # into its own subtree
    r.fails(m.Rename(ROOT, b"a", a, b"x"), errno.EINVAL)
    r.fails(m.Rename(ROOT, b"empty", ROOT, b"a"), errno.ENOTEMPTY)
    r.fails(m.Rename(b, b"f", ROOT, b"empty"), errno.EISDIR)
    r.fails(m.Rename(ROOT, b"empty", b, b"f"), errno.ENOTDIR)
    r.fails(m.Rename(ROOT, b"missing", ROOT, b"x"), errno.ENOENT)
    r.fails(m.Rename(ROOT, b"a", ROOT, b"empty", m.RENAME_NOREPLACE), errno.EEXIST)
    # A directory over an empty directory replaces it, and link counts follow.
    r.do(m.Rename(a, b"b", ROOT, b"empty"))
    assert r.ns.lookup(ROOT, b"empty").inode == b
    assert e not in r.ns.nodes
    assert r.ns.nodes[a].nlink == 2 and r.ns.nodes[ROOT].nlink == 4
    assert r.ns.nodes[b].parent == ROOT
    # Onto itself: nothing happens.
    v = r.ns.version
    r.do(m.Rename(b, b"f", b, b"f"))
    assert r.ns.lookup(b, b"f")
    # A file over another file frees the replaced one.
    g = r.mkfile(b, b"g")
    r.do(m.Rename(b, b"f", b, b"g"))
    assert g not in r.ns.nodes and list(r.ns.nodes[b].children) == [b"g"]
    # Exchange swaps.
    h = r.mkfile(ROOT, b"h")
    r.do(m.Rename(ROOT, b"h", ROOT, b"a", m.RENAME_EXCHANGE))
    assert r.ns.lookup(ROOT, b"a").inode == h and r.ns.lookup(ROOT, b"h").inode == a
    r.do(m.Rmdir(ROOT, b"h"))
    assert r.ns.version > v


def test_setattr_times_and_suid_clearing():
    r = Runner()
    f = r.mkfile(ROOT, b"f", 0o6755)
    attr = r.do(m.SetAttr(f, m.SET_UID | m.SET_GID, uid=7, gid=8)).attr
    assert attr.uid == 7 and attr.gid == 8
    assert not attr.mode & (stat.S_ISUID | stat.S_ISGID)
    attr = r.do(m.SetAttr(f, m.SET_ATIME | m.SET_MTIME, atime_ns=5, mtime_ns=6)).attr
    assert (attr.atime_ns, attr.mtime_ns) == (5, 6)
    attr = r.do(m.SetAttr(f, m.SET_MTIME_NOW)).attr
    assert attr.mtime_ns == r.ts and attr.ctime_ns == r.ts and attr.atime_ns == 5
    attr = r.do(m.SetAttr(f, m.SET_MODE, mode=0o640)).attr
    assert stat.S_IMODE(attr.mode) == 0o640 and stat.S_ISREG(attr.mode)


def test_xattrs():
    r = Runner()
    f = r.mkfile(ROOT, b"f")
    r.do(m.SetXattr(f, b"user.a", b"1"))
    r.fails(m.SetXattr(f, b"user.a", b"2", m.XATTR_CREATE), errno.EEXIST)
    r.fails(m.SetXattr(f, b"user.b", b"2", m.XATTR_REPLACE), errno.ENODATA)
    assert r.ns.query(m.GetXattr(f, b"user.a")).value == b"1"
    assert r.ns.query(m.ListXattr(f)).names == [b"user.a"]
    r.do(m.RemoveXattr(f, b"user.a"))
    r.fails(m.RemoveXattr(f, b"user.a"), errno.ENODATA)
    with pytest.raises(FsError):
        r.ns.query(m.GetXattr(f, b"user.a"))


def test_goal_inherited_and_recursive():
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    r.do(m.SetGoal(d, 3))
    sub = r.mkdir(d, b"sub")
    f = r.mkfile(sub, b"f")
    assert r.ns.nodes[f].goal == 3
    r.do(m.SetGoal(d, 1, recursive=True))
    assert r.ns.nodes[f].goal == 1 and r.ns.nodes[sub].goal == 1
    r.fails(m.SetGoal(d, 10), errno.EINVAL)


def test_a_file_has_at_most_max_chunks():
    """A write at the far end of a sparse file makes room for every chunk before it: the
    limit bounds what one request can cost the master."""
    from elkfs.proto.layout import CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE

    r = Runner()
    f = r.mkfile(ROOT, b"f")
    r.fails(m.WriteChunk(f, MAX_CHUNKS), errno.EFBIG)
    r.fails(m.Truncate(f, MAX_FILE_SIZE + 1), errno.EFBIG)
    last = r.do(m.WriteChunk(f, MAX_CHUNKS - 1))
    r.do(m.WriteChunkEnd(f, MAX_CHUNKS - 1, last.chunk_id, MAX_FILE_SIZE))
    assert r.ns.nodes[f].length == MAX_FILE_SIZE == MAX_CHUNKS * CHUNK_SIZE
    assert len(r.ns.nodes[f].chunks) == MAX_CHUNKS


def test_chunks_truncate_and_delete_effects():
    r = Runner()
    f = r.mkfile(ROOT, b"f")
    c0 = r.do(m.WriteChunk(f, 0))
    assert (c0.chunk_id, c0.version) == (1, 1)
    again = r.do(m.WriteChunk(f, 0))
    assert (again.chunk_id, again.version) == (1, 2)
    c2 = r.do(m.WriteChunk(f, 2))
    r.do(m.WriteChunkEnd(f, 2, c2.chunk_id, 2 * (64 << 20) + 100))
    assert r.ns.nodes[f].length == 2 * (64 << 20) + 100
    assert list(r.ns.nodes[f].chunks) == [1, 0, 2]
    r.ns.effects.clear()
    r.do(m.Truncate(f, 1000))
    assert list(r.ns.nodes[f].chunks) == [1]
    assert r.ns.effects == [DeleteChunkEffect(2, 1), TruncateChunkEffect(1, 2, 3, 1000)]
    r.ns.effects.clear()
    r.do(m.Unlink(ROOT, b"f"))  # to the trash: chunks kept
    assert r.ns.effects == [] and f in r.ns.trash and r.ns.chunks
    r.do(m.PurgeTrash([f]))
    assert r.ns.effects == [DeleteChunkEffect(1, 3)] and not r.ns.chunks and f not in r.ns.nodes


def test_open_unlinked_file_lives_until_released():
    r = Runner()
    r.do(m.SetTrashTime(ROOT, 0))
    f = r.mkfile(ROOT, b"f")
    r.do(m.Acquire(f))
    r.do(m.Unlink(ROOT, b"f"))
    assert f in r.ns.nodes and r.ns.nodes[f].nlink == 0
    r.do(m.Release(f))
    assert f not in r.ns.nodes


def test_release_many_frees_what_it_closes_and_skips_what_is_not_open():
    r = Runner()
    r.do(m.SetTrashTime(ROOT, 0))
    f, g, h = (r.mkfile(ROOT, n) for n in (b"f", b"g", b"h"))
    r.do(m.Acquire(f))
    r.do(m.Acquire(g))
    r.do(m.Acquire(g))  # opened twice
    r.do(m.Unlink(ROOT, b"f"))
    r.do(m.Unlink(ROOT, b"g"))
    r.do(m.ReleaseMany([f, g, h, 999]))  # h and 999 are not open: skipped, not an error
    assert f not in r.ns.nodes  # its last open is gone: freed
    assert g in r.ns.nodes  # still open once
    r.do(m.ReleaseMany([g]))
    assert g not in r.ns.nodes and h in r.ns.nodes


def test_mknod_with_acquire_opens_the_new_file():
    r = Runner()
    r.do(m.SetTrashTime(ROOT, 0))
    f = r.do(m.Mknod(ROOT, b"f", 0o100644, 0, 0, acquire=True)).attr.inode
    r.do(m.Unlink(ROOT, b"f"))
    assert f in r.ns.nodes  # open by the creator: alive though unlinked
    r.do(m.Release(f))
    assert f not in r.ns.nodes


def test_changes_return_the_attributes_a_mount_caches():
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    out = r.do(m.Mknod(d, b"f", 0o100644, 0, 0))
    assert out.parent.inode == d and out.parent.mtime_ns == r.ns.nodes[d].mtime
    assert not out.attr.has_xattrs
    r.do(m.SetXattr(out.attr.inode, b"user.x", b"1"))
    assert r.ns.attr(r.ns.nodes[out.attr.inode]).has_xattrs
    r.do(m.Link(out.attr.inode, ROOT, b"g"))
    changed = r.do(m.Unlink(d, b"f"))  # still linked as /g: its nlink comes back
    assert {a.inode: a.nlink for a in changed.attrs} == {d: 2, out.attr.inode: 1}
    changed = r.do(m.Rename(ROOT, b"g", d, b"g2"))
    assert {a.inode for a in changed.attrs} == {ROOT, d, out.attr.inode}
    changed = r.do(m.Unlink(d, b"g2"))  # its last name: it lives on in the trash
    assert {a.inode: a.nlink for a in changed.attrs} == {d: 2, out.attr.inode: 0}
    assert [a.inode for a in r.do(m.Rmdir(ROOT, b"d")).attrs] == [ROOT]


def test_trash_time_inherited_unlink_to_trash_and_undelete():
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    assert r.ns.nodes[d].trashtime == 86400
    r.do(m.SetTrashTime(d, 3600))
    sub = r.mkdir(d, b"sub")
    f = r.mkfile(sub, b"f")
    assert r.ns.attr(r.ns.nodes[f]).trashtime == 3600
    r.fails(m.SetTrashTime(d, -1), errno.EINVAL)
    c = r.do(m.WriteChunk(f, 0))
    r.do(m.Unlink(sub, b"f"))
    expire, path = r.ns.trash[f]
    assert path == b"d/sub/f" and expire == r.ts + 3600 * 10**9
    assert r.ns.nodes[f].nlink == 0 and c.chunk_id in r.ns.chunks
    out = r.ns.query(m.ListTrash())
    assert [(e.inode, e.path) for e in out.entries] == [(f, b"d/sub/f")] and out.next_offset == -1
    r.fails(m.Link(f, ROOT, b"x"), errno.ENOENT)
    # Restore after its directories went: they are made again.
    r.do(m.Rmdir(d, b"sub"))
    r.do(m.Undelete(f))
    assert r.ns.lookup(r.ns.lookup(d, b"sub").inode, b"f").inode == f
    assert f not in r.ns.trash and r.ns.nodes[f].nlink == 1
    r.fails(m.Undelete(f), errno.ENOENT)
    # A name in the way blocks the restore.
    r.do(m.Unlink(r.ns.lookup(d, b"sub").inode, b"f"))
    r.mkfile(r.ns.lookup(d, b"sub").inode, b"f")
    r.fails(m.Undelete(f), errno.EEXIST)
    # Replaced by a rename: the replaced file goes to the trash too.
    g = r.mkfile(ROOT, b"g")
    r.mkfile(ROOT, b"h")
    r.do(m.Rename(ROOT, b"h", ROOT, b"g"))
    assert r.ns.trash[g][1] == b"g"
    # Trash time 0: freed at once.
    r.do(m.SetTrashTime(ROOT, 0))
    z = r.mkfile(ROOT, b"z")
    r.do(m.Unlink(ROOT, b"z"))
    assert z not in r.ns.nodes and z not in r.ns.trash
    # Purged while open: freed at the last release.
    r.do(m.Acquire(g))
    r.do(m.PurgeTrash([g, 12345]))
    assert g in r.ns.nodes and g not in r.ns.trash
    r.do(m.Release(g))
    assert g not in r.ns.nodes


def test_snapshot_shares_chunks_and_copies_on_write():
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    f = r.mkfile(d, b"f")
    r.do(m.SetXattr(f, b"user.k", b"v"))
    r.do(m.Symlink(d, b"l", b"f", 0, 0))
    c0 = r.do(m.WriteChunk(f, 0))
    c1 = r.do(m.WriteChunk(f, 1))
    r.do(m.WriteChunkEnd(f, 1, c1.chunk_id, (64 << 20) + 500))
    top = r.do(m.Snapshot(d, ROOT, b"snap")).attr
    snap_f = r.ns.lookup(top.inode, b"f")
    assert snap_f.inode != f and list(snap_f.chunks) == [c0.chunk_id, c1.chunk_id]
    assert snap_f.length == (64 << 20) + 500 and snap_f.xattrs == {b"user.k": b"v"}
    assert r.ns.lookup(top.inode, b"l").target == b"f"
    assert r.ns.chunks[c0.chunk_id].refs == 2 and r.ns.nodes[ROOT].nlink == 4
    r.fails(m.Snapshot(d, d, b"inside"), errno.EINVAL)
    r.fails(m.Snapshot(d, ROOT, b"snap"), errno.EEXIST)
    # Writing the copy: a new chunk for it, the original keeps its chunk and version.
    w = r.do(m.WriteChunk(snap_f.inode, 0))
    assert w.chunk_id not in (c0.chunk_id, c1.chunk_id) and w.version == 1
    assert r.ns.nodes[f].chunks[0] == c0.chunk_id and r.ns.chunks[c0.chunk_id].version == 1
    assert r.ns.chunks[c0.chunk_id].refs == 1
    # Writing the original now only bumps the version (no longer shared).
    assert r.do(m.WriteChunk(f, 0)).chunk_id == c0.chunk_id
    # A truncate inside a shared chunk cuts a private copy.
    r.ns.effects.clear()
    r.do(m.Truncate(f, (64 << 20) + 100))
    new = r.ns.nodes[f].chunks[1]
    assert new != c1.chunk_id and r.ns.chunks[new].version == 2
    assert r.ns.effects == [DuplicateChunkEffect(c1.chunk_id, 1, new, 1, 100, 2)]
    assert snap_f.chunks[1] == c1.chunk_id and r.ns.chunks[c1.chunk_id].refs == 1
    # Removing one side keeps the chunks of the other.
    r.do(m.SetTrashTime(ROOT, 0, recursive=True))
    r.ns.effects.clear()
    r.do(m.Unlink(top.inode, b"f"))
    assert r.ns.effects == [DeleteChunkEffect(w.chunk_id, 1), DeleteChunkEffect(c1.chunk_id, 1)]
    assert c0.chunk_id in r.ns.chunks


def test_checkpoint_round_trip(tmp_path):
    rnd = random.Random(7)
    live = Runner()
    random_ops(live, rnd, 600)
    path = str(tmp_path / checkpoint.checkpoint_name(live.ns.version))
    checkpoint.write(live.ns, path)
    assert state(checkpoint.read(path)) == state(live.ns)


def test_exactly_once_results_are_kept():
    r = Runner()
    result = r.do(m.Mkdir(ROOT, b"d", 0o755, 0, 0))
    done, stored = r.ns.duplicate_result(SESSION, r.seq)
    assert done and stored == result
    assert r.ns.duplicate_result(SESSION, r.seq + 1) == (False, None)


def test_unknown_session_rejected():
    r = Runner()
    with pytest.raises(FsError):
        r.do(m.Mkdir(ROOT, b"d", 0o755, 0, 0), session=b"x" * 16)


def random_ops(r: Runner, rnd: random.Random, count: int):
    """A seeded workload over a small tree; failures are expected and must change nothing."""
    names = [b"a", b"b", b"c", b"d"]
    for _ in range(count):
        dirs = [i for i, n in r.ns.nodes.items() if n.is_dir]
        files = [i for i, n in r.ns.nodes.items() if not n.is_dir]
        parent = rnd.choice(dirs)
        name = rnd.choice(names)
        choice = rnd.randrange(16)
        if choice == 0:
            op = m.Mkdir(parent, name, 0o755, 0, 0)
        elif choice == 1:
            op = m.Mknod(parent, name, stat.S_IFREG | 0o644, 0, 0)
        elif choice == 2:
            op = m.Unlink(parent, name)
        elif choice == 3:
            op = m.Rmdir(parent, name)
        elif choice == 4:
            op = m.Rename(parent, name, rnd.choice(dirs), rnd.choice(names), rnd.choice([0, 0, 1, 2]))
        elif choice == 5 and files:
            op = m.Link(rnd.choice(files), parent, name)
        elif choice == 6 and files:
            op = m.WriteChunk(rnd.choice(files), rnd.randrange(3))
        elif choice == 7 and files:
            op = m.Truncate(rnd.choice(files), rnd.randrange(3 * (64 << 20)))
        elif choice == 8 and files:
            f = rnd.choice(files)
            op = m.WriteChunkEnd(f, 0, 1, rnd.randrange(1 << 28))
        elif choice == 9:
            op = m.SetXattr(rnd.choice(dirs), name, b"v", rnd.randrange(3))
        elif choice == 10:
            op = m.SetGoal(rnd.choice(dirs), rnd.randrange(1, 11), rnd.random() < 0.5)
        elif choice == 11:
            op = m.SetTrashTime(rnd.choice(dirs + files), rnd.choice([0, 0, 60, 86400]),
                                rnd.random() < 0.5)
        elif choice == 12:
            op = m.Snapshot(rnd.choice(dirs + files), parent, name)
        elif choice == 13 and r.ns.trash:
            op = m.Undelete(rnd.choice(list(r.ns.trash)))
        elif choice == 14 and r.ns.trash:
            trashed = list(r.ns.trash)
            op = m.PurgeTrash(rnd.sample(trashed, rnd.randrange(1, len(trashed) + 1)))
        elif choice == 15 and files:
            op = m.Acquire(rnd.choice(files)) if rnd.random() < 0.5 else m.Release(rnd.choice(files))
        else:
            op = m.Symlink(parent, name, b"t", 0, 0)
        before = state(r.ns)
        try:
            r.do(op)
        except FsError:
            r.seq -= 0
            assert state(r.ns) == before, f"failed {op} changed the state"


@pytest.mark.parametrize("seed", range(20))
def test_replay_equals_live_state(seed):
    rnd = random.Random(seed)
    live = Runner()
    random_ops(live, rnd, 400)
    replayed = Namespace()
    for rec in live.records:
        replayed.apply(rec)
    assert state(replayed) == state(live.ns)


def test_snapshot_master_time_of_a_big_file_and_a_1000_file_tree():
    import time

    r = Runner()
    big = r.mkfile(ROOT, b"big")
    for index in range(4):  # 200 MiB: 4 chunks
        r.do(m.WriteChunk(big, index))
    r.do(m.WriteChunkEnd(big, 3, r.ns.nodes[big].chunks[3], 200 << 20))
    tree = r.mkdir(ROOT, b"tree")
    for d in range(10):
        sub = r.mkdir(tree, b"d%d" % d)
        for i in range(100):
            f = r.mkfile(sub, b"f%d" % i)
            r.do(m.WriteChunk(f, 0))
    started = time.perf_counter()
    r.do(m.Snapshot(big, ROOT, b"big-snap"))
    r.do(m.Snapshot(tree, ROOT, b"tree-snap"))
    took = time.perf_counter() - started
    print(f"snapshot apply time: {took * 1000:.2f} ms")
    assert took < 1.0  # typically a few ms; generous for a busy machine
    snap = r.ns.lookup(ROOT, b"tree-snap")
    assert sum(len(r.ns.nodes[c].children) for c in snap.children.values()) == 1000
    assert all(c.refs == 2 for c in r.ns.chunks.values())


def test_chunk_versions_are_of_the_record_term():
    """With HA a version is (term << 32 | counter): a change of a newer term raises it
    above anything an older term handed out; without HA (term 0) it counts as before."""
    from elkfs.consensus.fencing import version_term
    from elkfs.master.records import Record

    ns = Namespace()
    apply = lambda op, term: ns.apply(Record(ns.version + 1, 1, b"", 0, op, term))
    f = apply(m.Mknod(ROOT, b"f", 0o100644, 0, 0, 0), 0).attr.inode
    assert apply(m.WriteChunk(f, 0), 0).version == 1
    assert apply(m.WriteChunk(f, 0), 0).version == 2
    v = apply(m.WriteChunk(f, 0), 7).version
    assert version_term(v) == 7 and v == (7 << 32) | 3
    assert apply(m.WriteChunk(f, 1), 7).version == (7 << 32) | 1
    assert ns.last_term == 7
    with pytest.raises(ValueError):  # an older term never lowers a version
        apply(m.WriteChunk(f, 0), 6)
