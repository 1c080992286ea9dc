"""Checkpoints keep everything: a namespace with every kind of node and state is saved,
loaded and compared field by field (every slot of every node, the directories' name
order and form, chunks, sessions with their results, trash, chunkservers, locks,
snapshots in steps), in the current format and from a checkpoint the previous format
wrote. And loading leaves the garbage collector on, even when it fails."""

import gc
import os
import stat
import zlib
from array import array

import msgspec
import pytest

from elkfs import access
from elkfs.master import checkpoint, direntries
from elkfs.master.direntries import _Spread
from elkfs.master.filelocks import F_RDLCK, F_WRLCK, LOCK_FLOCK, LOCK_POSIX
from elkfs.master.journal import JournalCorrupt, list_segments
from elkfs.master.namespace import ROOT, Namespace
from elkfs.master.nodes import CHUNK_PAGE, ChunkTable, DirNode, FileNode
from elkfs.master.records import (KnowChunkserver, OpenSession, SessionGone, SetMaintenance,
                                  SnapshotBegin)
from elkfs.master.store import MetadataStore
from elkfs.proto import messages as m

from .test_namespace import SESSION, Runner

OTHER = b"o" * 16


@pytest.fixture
def small_spread(monkeypatch):
    monkeypatch.setattr(direntries, "SPREAD_AT", 40)
    monkeypatch.setattr(direntries, "SHRINK_AT", 10)


def slots(cls) -> list[str]:
    return [name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())]


def node_fields(node) -> dict:
    """Every slot of a node, its entries as (name, inode) in name order, and in which
    form they are kept."""
    out = {"type": type(node)}
    for name in slots(type(node)):
        value = getattr(node, name)
        if name == "children":
            value = (sorted(value.items()), [n for block in value._blocks for n in block],
                     value._maxes, len(value))
        elif name == "chunks":
            value = list(value)
        out[name] = value
    return out


def everything(ns: Namespace) -> dict:
    return {
        "counters": (ns.version, ns.next_inode, ns.next_chunk_id, ns.last_term),
        "nodes": {inode: node_fields(node) for inode, node in ns.nodes.items()},
        "count": len(ns.nodes),
        "chunks": sorted((c.chunk_id, c.version, c.refs) for c in ns.chunks.values()),
        "sessions": {sid: (s.info, s.opened_ts, s.open_files, s.writable, s.results, s.gone_ns)
                     for sid, s in ns.sessions.items()},
        "trash": dict(ns.trash),
        "chunkservers": dict(ns.chunkservers),
        "locks": sorted(map(repr, ns.locks.rows())),
        "building": dict(ns.building),
    }


def acl(*entries) -> bytes:
    return access.encode(list(entries))


def every_kind(r: Runner, spread_names: int) -> None:
    """Directories (nested, SGID, with a default ACL, one spread into shards), files
    with chunks and holes and xattrs and an access ACL, hard links, symlinks, FIFOs and
    devices, differing owners, modes, goals and trash times (consecutive nodes differ,
    as `_nodes_from` keeps the last value), trash, a sustained file, snapshots (one in
    one step, one in steps still building), locks, chunkservers, a second session that
    went away."""
    r.do(OpenSession(OTHER, "other"), session=b"")
    top = r.mkdir(ROOT, b"top", 0o2775)
    sub = r.mkdir(top, b"sub")
    r.do(m.SetXattr(sub, access.DEFAULT, acl((access.USER_OBJ, 7, 0), (access.GROUP_OBJ, 5, 0),
                                             (access.OTHER, 0, 0))))
    inherited = r.mkfile(sub, b"inherits-acl")
    for i in range(12):
        inode = r.do(m.Mknod(top, b"f%02d" % i, stat.S_IFREG | (0o600 + i), 1000 + i % 3,
                             2000 + i % 2)).attr.inode
        if i % 2:
            r.do(m.SetGoal(inode, 1 + i % 4))
            r.do(m.SetTrashTime(inode, 3600 * i))
        if i % 3 == 0:
            w = r.do(m.WriteChunk(inode, i % 3 + 2))  # a file with holes before its chunk
            r.do(m.WriteChunkEnd(inode, i % 3 + 2, w.chunk_id, (64 << 20) * 2 + 7 * i))
    f = r.mkfile(top, b"data")
    for index in (0, 1):
        w = r.do(m.WriteChunk(f, index))
        r.do(m.WriteChunkEnd(f, index, w.chunk_id, (64 << 20) * index + 1234))
    r.do(m.SetXattr(f, b"user.note", b"\x00\xffbytes"))
    r.do(m.SetXattr(f, b"user.empty", b""))
    r.do(m.SetXattr(f, access.ACCESS, acl((access.USER_OBJ, 6, 0), (access.USER, 4, 1234),
                                          (access.GROUP_OBJ, 4, 0), (access.MASK, 4, 0),
                                          (access.OTHER, 0, 0))))
    r.do(m.SetAttr(f, m.SET_ATIME | m.SET_MTIME, atime_ns=5, mtime_ns=7))  # times differ
    r.do(m.Link(f, ROOT, b"hardlink"))
    r.do(m.Symlink(top, b"link", b"../somewhere/else", 0, 0))
    r.do(m.Mknod(top, b"fifo", stat.S_IFIFO | 0o640, 3, 4))
    r.do(m.Mknod(top, b"dev", stat.S_IFCHR | 0o600, 0, 0, rdev=0x0801))
    # Trash: an unlinked file kept for its trash time.
    gone = r.mkfile(top, b"to-trash")
    r.do(m.WriteChunk(gone, 0))
    r.do(m.Unlink(top, b"to-trash"))
    # Sustained: open in a session, unlinked with no trash time.
    held = r.mkfile(top, b"held-open")
    r.do(m.SetTrashTime(held, 0))
    r.do(m.Acquire(held))
    r.do(m.Unlink(top, b"held-open"))
    assert held in r.ns.nodes and held not in r.ns.trash
    # Snapshots: one in one step (shares chunks), one in steps, still building.
    r.do(m.Snapshot(top, ROOT, b"snap"))
    r.do(SnapshotBegin(top, ROOT, b"building"), session=b"")
    assert r.ns.building
    # A directory spread into shards, renamed directories.
    big = r.mkdir(ROOT, b"big")
    for i in range(spread_names):
        r.do(m.Mknod(big, b"n%05d" % (i * 7919 % spread_names), stat.S_IFREG | 0o644, 0, 0))
    r.do(m.Rename(top, b"sub", ROOT, b"moved-sub"))
    # Locks, chunkservers, a session that went away.
    r.do(m.SetLock(f, 7, LOCK_POSIX, F_WRLCK, 0, 99, pid=42))
    r.do(m.SetLock(f, 3, LOCK_FLOCK, F_RDLCK, 0, 0), OTHER)
    r.do(KnowChunkserver(b"c" * 16, "127.0.0.1:9422"), session=b"")
    r.do(SetMaintenance(b"c" * 16, 123456789), session=b"")
    r.do(SessionGone(OTHER, True), session=b"")


def saved_and_loaded(r: Runner, tmp_path) -> Namespace:
    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    return checkpoint.read(path)


def test_every_field_survives_a_checkpoint(tmp_path, small_spread):
    r = Runner()
    every_kind(r, spread_names=100)
    big = r.ns.nodes[r.ns.nodes[ROOT].children[b"big"]]
    assert type(big.children) is _Spread
    loaded = saved_and_loaded(r, tmp_path)
    assert everything(loaded) == everything(r.ns)
    # Directories know their names and parents, also those moved and the building copy.
    for node in loaded.nodes.values():
        if type(node) is DirNode and node.inode != ROOT and node.inode not in loaded.building:
            assert loaded.nodes[node.parent].children[node.name] == node.inode
    assert loaded.nodes[next(iter(loaded.building))].name == b"building"
    # Repeated values are shared again (one int object per distinct mode, uid, ...).
    files = [n for n in loaded.nodes.values() if type(n) is FileNode and n.uid == 1000]
    assert len({id(n.uid) for n in files}) == 1
    # The loaded namespace goes on as the saved one: the same ops give the same state.
    for ns in (r.ns, loaded):
        r2 = Runner.__new__(Runner)
        r2.ns, r2.records, r2.ts, r2.seq = ns, [], r.ts, r.seq
        r2.do(m.Rename(ROOT, b"moved-sub", ROOT, b"again"))
        r2.mkfile(r2.ns.nodes[ROOT].children[b"big"], b"one-more")
        r2.do(m.Release(next(iter(ns.sessions[SESSION].open_files))))
    assert everything(loaded) == everything(r.ns)


OLD_CHECKPOINT = os.path.join(os.path.dirname(__file__), "data",
                              "metadata-before-names-and-pages.elk")


def test_checkpoint_written_by_the_previous_format_loads_the_same(small_spread):
    """`data/metadata-before-names-and-pages.elk` was written by the master before
    directories carried their names and before the chunk table went as pages (commit
    c64f7e5), of the namespace `every_kind` builds: loaded now, it is that namespace,
    field by field (directories named from their parents' entries; the snapshot copy
    still being built, in no directory yet, had no name to find)."""
    r = Runner()
    every_kind(r, spread_names=60)
    loaded = checkpoint.read(OLD_CHECKPOINT)
    expected = everything(r.ns)
    for inode in r.ns.building:
        expected["nodes"][inode]["name"] = b""
    assert everything(loaded) == expected


def test_a_bad_chunk_page_is_refused(tmp_path):
    """A chunk page whose versions and references disagree (written wrong, CRC and all)
    is an error naming the file, never a half-loaded table."""
    r = Runner()
    f = r.mkfile(ROOT, b"f")
    r.do(m.WriteChunk(f, 0))
    path = str(tmp_path / checkpoint.checkpoint_name(r.ns.version))
    checkpoint.write(r.ns, path)
    with open(path, "rb") as src:
        data = src.read()
    out = bytearray(data[:checkpoint.HEADER.size])
    pos = checkpoint.HEADER.size
    while pos < len(data):
        length, _, kind = checkpoint.SECTION.unpack_from(data, pos)
        payload = data[pos + checkpoint.SECTION.size:pos + checkpoint.SECTION.size + length]
        if kind == checkpoint.K_CHUNK_PAGES:
            pages = msgspec.msgpack.decode(payload)
            refs = bytearray(pages[0][2])
            refs[4 * 4095] = 1  # a reference on a free row
            pages[0][2] = bytes(refs)
            payload = msgspec.msgpack.encode(pages)
        out += checkpoint.SECTION.pack(len(payload), zlib.crc32(payload), kind) + payload
        pos += checkpoint.SECTION.size + length
    with open(path, "wb") as dst:
        dst.write(out)
    with pytest.raises(checkpoint.CheckpointError, match="disagree"):
        checkpoint.read(path)


async def test_loading_leaves_the_collector_on(tmp_path):
    store = MetadataStore(str(tmp_path))
    store.load()
    assert gc.isenabled()
    store.change(OpenSession(SESSION, "t"), 1)
    for i in range(20):
        store.change(m.Mkdir(ROOT, b"d%d" % i, 0o755, 0, 0), 10 + i, SESSION, i + 1)
    store.flush()
    assert await store.checkpoint()
    store.change(m.Mkdir(ROOT, b"after", 0o755, 0, 0), 100, SESSION, 99)
    store.close(checkpoint=False)
    again = MetadataStore(str(tmp_path))
    again.load()
    assert gc.isenabled() and b"after" in again.ns.nodes[ROOT].children
    again.close(checkpoint=False)
    # A corrupt journal stops the load: the collector is on again all the same.
    newest = list_segments(str(tmp_path))[-1][1]
    with open(newest, "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff")
        f.seek(0, 2)
        f.write(b"\x00" * 4 + b"more data after the damage")
    broken = MetadataStore(str(tmp_path))
    with pytest.raises(JournalCorrupt):
        broken.load()
    assert gc.isenabled()


def test_chunk_pages_round_trip_and_refuse_what_is_no_page(monkeypatch):
    """The chunk table as pages: the same table back (full pages, pages with free rows,
    far apart ids), as little-endian bytes on any machine; pages that are not the
    table's are refused."""
    table = ChunkTable()
    ids = [1, 2, 3, 4095, 4096, 9000, 5 * CHUNK_PAGE + 17, 10**9]
    for n, chunk_id in enumerate(ids):
        table.add(chunk_id, 7 + n, 1 + n % 3)
    for chunk_id in range(3 * CHUNK_PAGE, 4 * CHUNK_PAGE):  # one page full
        table.add(chunk_id, 2, 1)
    del table[2]
    rows = sorted((c.chunk_id, c.version, c.refs) for c in table.values())
    for little in (True, False):  # as written on this machine, and on a big-endian one
        monkeypatch.setattr(checkpoint, "_LITTLE", little)
        again = ChunkTable()
        for first, versions, refs in table.pages():
            data = checkpoint._le_bytes(versions), checkpoint._le_bytes(refs)
            assert (data[0] == versions.tobytes()) == little
            again.load_page(first, checkpoint._le_array("Q", data[0]),
                            checkpoint._le_array("I", data[1]))
        assert sorted((c.chunk_id, c.version, c.refs) for c in again.values()) == rows
        assert len(again) == len(table)
    monkeypatch.setattr(checkpoint, "_LITTLE", True)
    first, versions, refs = next(iter(table.pages()))
    with pytest.raises(ValueError, match="loaded twice"):
        again.load_page(first, array("Q", versions), array("I", refs))
    for bad in ((first + 1, versions, refs), (first, versions[:-1], refs[:-1]),
                (first, array("Q", bytes(8 * CHUNK_PAGE)), array("I", bytes(4 * CHUNK_PAGE)))):
        with pytest.raises(ValueError):
            ChunkTable().load_page(*bad)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint._le_array("Q", b"\x00" * 12)
    # The rows of checkpoints written before pages: the same checks as `add`.
    for bad_rows in ([(5, 0, 1)], [(5, 1, 0)], [(5, 1, 1), (5, 2, 1)]):
        with pytest.raises((ValueError, KeyError)):
            ChunkTable().fill(bad_rows)
    filled = ChunkTable()
    filled.fill(rows)
    assert sorted((c.chunk_id, c.version, c.refs) for c in filled.values()) == rows
    assert len(filled) == len(rows)
