"""A directory's ordered entries, and listing a directory in pages while it changes."""

import random
import stat

import pytest

from elkfs.master import direntries
from elkfs.master.direntries import DirEntries
from elkfs.master.namespace import ROOT
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

from .test_namespace import Runner


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(direntries, "BLOCK", 4)  # many blocks, splits and merges


@pytest.mark.parametrize("seed", range(5))
def test_order_follows_random_changes(small_blocks, seed):
    rng = random.Random(seed)
    d, model = DirEntries(), {}
    for i in range(5000):
        name = b"%d" % rng.randrange(200)
        if name in model and rng.random() < 0.5:
            del d[name], model[name]
        else:
            d[name] = model[name] = i
        if i % 50 == 0:
            d.check()
            after = rng.choice([b"", b"0", b"1", b"150", b"99", b"999", b"5"])
            assert list(d.names_after(after)) == sorted(n for n in model if n > after)
            skip = rng.randrange(210)
            assert list(d.names_from(skip)) == sorted(model)[skip:]
    assert dict(d) == model
    rebuilt = DirEntries(model.items())  # as a checkpoint loads it
    rebuilt.check()
    assert dict(rebuilt) == model


def list_in_pages(r: Runner, inode: int, limit: int, between=None) -> list[bytes]:
    seen, after = [], b""
    while True:
        out = r.ns.readdir(inode, 0, limit, after)
        seen += [e.name for e in out.entries]
        if out.next_offset < 0:
            return seen
        after = out.entries[-1].name
        if between:
            between()


def test_pages_resume_after_a_name_under_changes(small_blocks):
    r = Runner()
    d = r.mkdir(ROOT, b"big")
    names = [b"f%05d" % i for i in range(2000)]
    rng = random.Random(7)
    rng.shuffle(names)
    for name in names:
        r.mkfile(d, name)
    staying = set(names)
    added = []

    def change():  # between pages: remove some, add some, rename some, anywhere
        for _ in range(5):
            victim = rng.choice(sorted(staying))
            staying.discard(victim)
            if rng.random() < 0.5:
                r.do(m.Unlink(d, victim))
            else:
                new = b"r" + victim
                r.do(m.Rename(d, victim, d, new))
                added.append(new)
            new = b"n%05d" % rng.randrange(100000)
            if new not in r.ns.nodes[d].children:
                r.mkfile(d, new)
                added.append(new)

    seen = list_in_pages(r, d, 37, change)
    assert len(seen) == len(set(seen)), "an entry came twice"
    assert staying <= set(seen), "an entry that stayed was skipped"
    assert set(seen) <= set(names) | set(added)
    assert seen == sorted(seen)


def test_names_only_pages_are_the_pages_without_attributes(small_blocks):
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    for i in range(50):
        if i % 3:
            r.mkfile(d, b"%02d" % i)
        else:
            r.mkdir(d, b"%02d" % i)
    for offset, limit, after in ((0, 7, b""), (0, 7, b"13"), (45, 7, b""), (0, 100, b"")):
        full = r.ns.readdir(d, offset, limit, after)
        light = r.ns.query(m.ReadDir(d, offset, limit, after, names_only=True))
        assert isinstance(light, m.DirNamesOut)
        assert light.names == [e.name for e in full.entries]
        assert light.inodes == [e.attr.inode for e in full.entries]
        assert light.modes == [e.attr.mode for e in full.entries]
        assert light.next_offset == full.next_offset


def test_offset_pages_and_bad_offset():
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    for i in range(25):
        r.mkfile(d, b"%02d" % i)
    out = r.ns.readdir(d, 20, 10)
    assert [e.name for e in out.entries] == [b"%02d" % i for i in range(20, 25)]
    assert out.next_offset == -1
    out = r.ns.readdir(d, 0, 10)
    assert out.next_offset == 10 and out.entries[-1].name == b"09"
    with pytest.raises(Exception):
        r.ns.readdir(d, -5, 10)


def test_snapshot_and_checkpoint_keep_the_order(tmp_path):
    from elkfs.master import checkpoint

    r = Runner()
    d = r.mkdir(ROOT, b"d")
    for i in (5, 3, 9, 1):
        r.do(m.Mknod(d, b"x%d" % i, stat.S_IFREG | 0o644, 0, 0))
    r.do(m.Snapshot(d, ROOT, b"copy"))
    copy = r.ns.nodes[ROOT].children[b"copy"]
    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    loaded = checkpoint.read(path)
    for ns in (r.ns, loaded):
        for inode in (d, copy):
            ns.nodes[inode].children.check()
            assert list(ns.nodes[inode].children.names_after(b"x1")) == [b"x3", b"x5", b"x9"]


def scanned_path(ns, inode: int) -> bytes:
    """The path of a directory found the slow way: its name in its parent's entries."""
    parts = []
    while inode != ROOT:
        parent = ns.nodes[ns.nodes[inode].parent]
        parts.append(next(n for n, c in parent.children.items() if c == inode))
        inode = parent.inode
    return b"/".join(reversed(parts))


def test_directories_know_their_names_through_renames(tmp_path):
    from elkfs.master import checkpoint

    r = Runner()
    rng = random.Random(3)
    dirs = [ROOT]
    for i in range(30):
        dirs.append(r.mkdir(rng.choice(dirs), b"d%d" % i))
    for i in range(60):
        a, b = rng.sample(dirs[1:], 2)
        parent_of = {inode: r.ns.nodes[inode].parent for inode in dirs[1:]}
        to = rng.choice(dirs)
        try:
            if rng.random() < 0.3:
                r.do(m.Rename(parent_of[a], r.ns.nodes[a].name, parent_of[b],
                              r.ns.nodes[b].name, m.RENAME_EXCHANGE))
            else:
                r.do(m.Rename(parent_of[a], r.ns.nodes[a].name, to, b"m%d" % i))
        except FsError:
            pass  # into its own subtree: refused, nothing changed
    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    for ns in (r.ns, checkpoint.read(path)):
        for inode in dirs[1:]:
            assert ns.path_of(inode) == scanned_path(ns, inode)


def test_a_cut_or_damaged_checkpoint_is_refused(tmp_path):
    from elkfs.master import checkpoint

    r = Runner()
    d = r.mkdir(ROOT, b"d")
    for i in range(3000):  # several node sections
        r.mkfile(d, b"f%d" % i)
    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    data = open(path, "rb").read()
    bad = str(tmp_path / "bad.elk")
    for cut in (3, 20, len(data) // 2, len(data) - 1):
        open(bad, "wb").write(data[:cut])
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.read(bad)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    open(bad, "wb").write(flipped)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.read(bad)
