"""A directory's ordered entries, and listing a directory in pages while it changes."""

import random
import stat
import sys

import pytest

from elkfs.master import direntries
from elkfs.master.direntries import SHARDS, DirEntries, _Spread
from elkfs.master.namespace import ROOT
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

from .test_namespace import Runner


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(direntries, "BLOCK", 4)  # many blocks, splits and merges


@pytest.fixture
def small_spread(monkeypatch):
    """A directory spreads past 40 names and is gathered again below 10."""
    monkeypatch.setattr(direntries, "SPREAD_AT", 40)
    monkeypatch.setattr(direntries, "SHRINK_AT", 10)


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


@pytest.mark.parametrize("seed", range(6))
def test_answers_as_a_dict_and_sorted_list_across_the_spread_both_ways(small_blocks,
                                                                      small_spread, seed):
    """Grow past SPREAD_AT and shrink below SHRINK_AT, again and again, by random adds,
    changes, removals and popitem(); every answer is the model's (a dict, and its names
    sorted); a checkpoint's reload answers the same whichever form it comes back in."""
    rng = random.Random(seed)
    d, model = DirEntries(), {}
    forms = [type(d)]
    for i in range(8000):
        growing = (i // 1000) % 2 == 0
        name = b"%d" % rng.randrange(150)
        what = rng.random()
        if what < (0.3 if growing else 0.8):
            if model and rng.random() < 0.3:
                greatest = max(model)  # the same entry on every replica
                assert d.popitem() == (greatest, model.pop(greatest))
            elif name in model:
                del d[name], model[name]
            else:
                with pytest.raises(KeyError):
                    del d[name]
        else:
            d[name] = model[name] = i
        if type(d) is not forms[-1]:
            forms.append(type(d))
        assert len(d) == len(model) and bool(d) == bool(model)
        assert d.get(name) == model.get(name) and (name in d) == (name in model)
        assert d.get(name, -1) == model.get(name, -1)
        if name in model:
            assert d[name] == model[name]
        else:
            with pytest.raises(KeyError):
                d[name]  # noqa: B018
        if i % 37 == 0:
            d.check()
            assert dict(d) == model and d == model and not d != model
            assert sorted(d) == sorted(d.keys()) == sorted(model)
            assert sorted(d.items()) == sorted(model.items())
            assert sorted(d.values()) == sorted(model.values())
            after = rng.choice([b"", b"0", b"1", b"120", b"99", b"5"])
            assert list(d.names_after(after)) == sorted(n for n in model if n > after)
            skip = rng.randrange(160)
            assert list(d.names_from(skip)) == sorted(model)[skip:]
            some = rng.sample(sorted(model), min(len(model), 20))
            assert d.inodes_of(some) == [model[n] for n in some]
            rebuilt = DirEntries(d.items())  # as a checkpoint loads it
            rebuilt.check()
            assert rebuilt == model
            assert (type(rebuilt) is _Spread) == (len(model) > direntries.SPREAD_AT)
    assert forms.count(_Spread) >= 3 and forms.count(DirEntries) >= 4, forms
    while model:  # emptied by popitem, through the gather, in name order
        greatest = max(model)
        assert d.popitem() == (greatest, model.pop(greatest))
    assert type(d) is DirEntries and len(d) == 0
    with pytest.raises(KeyError):
        d.popitem()


def test_a_spread_directory_clears_and_refuses_what_it_does_not_keep(small_spread):
    d = DirEntries((b"%d" % i, i) for i in range(100))
    assert type(d) is _Spread
    d[b"new"] = 1
    for change in (lambda: d.setdefault(b"x", 1), lambda: d.update({b"x": 1}),
                   lambda: d.pop(b"1"), lambda: d.copy()):
        with pytest.raises(TypeError):
            change()
    d.check()
    d.clear()
    assert type(d) is DirEntries and len(d) == 0 and list(d.names_after(b"")) == []
    d[b"a"] = 1
    d.check()
    assert d == {b"a": 1}


def test_a_small_directory_keeps_its_size():
    """The common directory (up to SPREAD_AT names) is the dict it was, plus the two
    slots of its order: no more memory, and lookups are the dict's own."""
    names = [b"file-%07d.dat" % i for i in range(1000)]
    d, plain = DirEntries(), {}
    for i, name in enumerate(names):
        d[name] = plain[name] = i
    assert type(d) is DirEntries
    assert DirEntries().__sizeof__() == {}.__sizeof__() + 2 * 8
    assert d.__sizeof__() == plain.__sizeof__() + 2 * 8
    assert DirEntries.get is dict.get and DirEntries.__getitem__ is dict.__getitem__
    assert DirEntries.__contains__ is dict.__contains__


def test_a_huge_directory_grows_a_few_shards_at_a_time():
    """One dict of all names would copy itself whole as it passes 174,762 and 349,525
    names (and 699,050, 1,398,101...). Spread, the names held when it spread never grow
    again, and the shards grow at different moments: count those that grew within each
    thousand inserts (64 if they filled evenly)."""
    d = DirEntries()
    shard_sizes = frozen_size = None
    most = 0
    for start in range(0, 400_000, 1000):
        for i in range(start, start + 1000):
            d[b"file-%07d.dat" % i] = i
        if type(d) is not _Spread:
            continue
        now = [sys.getsizeof(shard) for shard in d._shards()]
        if frozen_size is not None:
            assert dict.__sizeof__(d) == frozen_size, "the frozen names' dict grew"
            if start > 200_000:  # (small shards grow often, and cheaply)
                most = max(most, sum(a != b for a, b in zip(shard_sizes, now)))
        shard_sizes, frozen_size = now, dict.__sizeof__(d)
    assert type(d) is _Spread and len(d) == 400_000
    assert most <= SHARDS // 8, f"{most} of {SHARDS} shards grew within one thousand inserts"
    loaded = DirEntries(d.items())  # from a checkpoint: built as if grown
    assert type(loaded) is _Spread and dict.__len__(loaded) == direntries.SPREAD_AT + 1
    loaded.check()


def test_spreading_does_not_grow_the_dict():
    d = DirEntries((b"%d" % i, i) for i in range(direntries.SPREAD_AT))
    size = dict.__sizeof__(d)
    assert type(d) is DirEntries
    d[b"one more"] = 0
    assert type(d) is _Spread and dict.__sizeof__(d) == size


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


@pytest.fixture(params=["one dict", "spread"])
def either_form(request, monkeypatch):
    if request.param == "spread":  # the directories of these tests spread
        monkeypatch.setattr(direntries, "SPREAD_AT", 40)
        monkeypatch.setattr(direntries, "SHRINK_AT", 10)


def test_pages_resume_after_a_name_under_changes(small_blocks, either_form):
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


def copied_and_reloaded(r: Runner, d: int, tmp_path) -> tuple[int, tuple]:
    """Snapshot directory `d` to /copy, then save and load a checkpoint: (the copy's
    inode, (the namespace, the one loaded from its checkpoint))."""
    from elkfs.master import checkpoint

    r.do(m.Snapshot(d, ROOT, b"copy"))
    copy = r.ns.nodes[ROOT].children[b"copy"]
    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    return copy, (r.ns, checkpoint.read(path))


def test_snapshot_and_checkpoint_keep_the_order(tmp_path):
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    for i in (5, 3, 9, 1):
        r.do(m.Mknod(d, b"x%d" % i, stat.S_IFREG | 0o644, 0, 0))
    copy, namespaces = copied_and_reloaded(r, d, tmp_path)
    for ns in namespaces:
        for inode in (d, copy):
            ns.nodes[inode].children.check()
            assert list(ns.nodes[inode].children.names_after(b"x1")) == [b"x3", b"x5", b"x9"]


def test_a_spread_directory_is_copied_saved_loaded_and_gathered(small_spread, tmp_path):
    r = Runner()
    d = r.mkdir(ROOT, b"d")
    names = [b"f%03d" % i for i in range(100)]
    for name in reversed(names):
        r.mkfile(d, name)
    assert type(r.ns.nodes[d].children) is _Spread
    copy, namespaces = copied_and_reloaded(r, d, tmp_path)
    for ns in namespaces:
        for inode in (d, copy):
            children = ns.nodes[inode].children
            children.check()
            assert type(children) is _Spread and list(children.names_after(b"")) == names
            assert ns.lookup(inode, b"f042").inode == children[b"f042"]
    for name in names[5:]:
        r.do(m.Unlink(d, name))
    children = r.ns.nodes[d].children
    children.check()
    assert type(children) is DirEntries and sorted(children) == names[:5]
    assert [e.name for e in r.ns.readdir(d, 0, 10).entries] == names[:5]


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
