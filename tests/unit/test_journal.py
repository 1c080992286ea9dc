"""Journal and checkpoints: replay after a crash, torn tails, corruption, checkpoint + replay."""

import asyncio
import os
import random
import stat

import pytest

from elkfs.master import checkpoint as ckpt
from elkfs.master.journal import JournalCorrupt, list_segments
from elkfs.master.namespace import ROOT
from elkfs.master.records import OpenSession
from elkfs.master.store import MetadataStore
from elkfs.proto import messages as m

from .test_namespace import random_ops, state, Runner

SESSION = b"s" * 16


async def fill(store: MetadataStore, count: int, start: int = 0) -> None:
    if SESSION not in store.ns.sessions:
        store.change(OpenSession(SESSION, "t"), 1)
    for i in range(start, start + count):
        store.change(m.Mkdir(ROOT, b"d%d" % i, 0o755, 0, 0), 10 + i, SESSION, i + 1)
    store.flush()


def reopen(path) -> MetadataStore:
    store = MetadataStore(str(path))
    store.load()
    return store


def names(store: MetadataStore) -> set:
    return set(store.ns.nodes[ROOT].children)


async def test_crash_without_checkpoint_replays_journal(tmp_path):
    store = reopen(tmp_path)
    await fill(store, 50)
    expected = state(store.ns)
    # No close(): as after kill -9, only the journal is on disk.
    again = reopen(tmp_path)
    assert state(again.ns) == expected
    assert len(names(again)) == 50


async def test_checkpoint_plus_journal(tmp_path):
    store = reopen(tmp_path)
    await fill(store, 30)
    assert await store.checkpoint()
    await fill(store, 20, start=30)
    expected = state(store.ns)
    assert ckpt.list_checkpoints(str(tmp_path))[-1][0] == 31
    again = reopen(tmp_path)
    assert state(again.ns) == expected


async def test_damaged_newest_checkpoint_falls_back(tmp_path):
    store = reopen(tmp_path)
    await fill(store, 10)
    assert await store.checkpoint()
    await fill(store, 10, start=10)
    assert await store.checkpoint()
    await fill(store, 5, start=20)
    expected = state(store.ns)
    newest = ckpt.list_checkpoints(str(tmp_path))[-1][1]
    with open(newest, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff\xff")
    again = reopen(tmp_path)
    assert state(again.ns) == expected


async def test_torn_tail_is_dropped(tmp_path, caplog):
    store = reopen(tmp_path)
    await fill(store, 10)
    path = store.journal.path
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # cut the last record in half
        f.truncate(size - 5)
    again = reopen(tmp_path)
    assert len(names(again)) == 9
    assert "torn record" in caplog.text
    # The journal goes on cleanly after the torn record.
    await fill(again, 1, start=100)
    third = reopen(tmp_path)
    assert len(names(third)) == 10


async def test_torn_tail_with_garbage_crc(tmp_path):
    store = reopen(tmp_path)
    await fill(store, 10)
    path = store.journal.path
    with open(path, "r+b") as f:  # last record's payload damaged in place
        f.seek(os.path.getsize(path) - 2)
        f.write(b"\x00\x01")
    again = reopen(tmp_path)
    assert len(names(again)) == 9


async def test_corruption_in_the_middle_stops_start(tmp_path):
    store = reopen(tmp_path)
    await fill(store, 10)
    path = store.journal.path
    with open(path, "r+b") as f:
        f.seek(60)
        byte = f.read(1)
        f.seek(60)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(JournalCorrupt) as e:
        reopen(tmp_path)
    assert os.path.basename(path) in str(e.value)
    assert "metadata version" in str(e.value)


async def test_gap_between_segments_is_corruption(tmp_path):
    store = reopen(tmp_path)
    await fill(store, 5)
    store.journal.rotate()
    await fill(store, 5, start=5)
    segments = list_segments(str(tmp_path))
    assert len(segments) == 2
    os.unlink(segments[0][1])
    with pytest.raises(JournalCorrupt, match="gap"):
        reopen(tmp_path)


async def test_fsync_mode_acknowledges_after_sync(tmp_path):
    store = MetadataStore(str(tmp_path), save_mode=1)
    store.load()
    syncer = asyncio.create_task(store.sync_loop())
    try:
        _, version = store.change(OpenSession(SESSION, "t"), 1)
        await asyncio.wait_for(store.wait_durable(version), 5)
        assert store.journal.synced_version >= version
    finally:
        syncer.cancel()


@pytest.mark.parametrize("seed", range(5))
async def test_random_workload_survives_checkpoints_and_restarts(tmp_path, seed):
    """Checkpoint at random points of a random workload; every restart sees it all."""
    rnd = random.Random(seed)
    runner = Runner()
    random_ops(runner, rnd, 300)
    store = reopen(tmp_path)
    for rec in runner.records:
        store.change(rec.op, rec.ts_ns, rec.session, rec.seq)
        if rnd.random() < 0.02:
            assert await store.checkpoint()
    store.flush()
    assert state(store.ns) == state(runner.ns)
    assert state(reopen(tmp_path).ns) == state(runner.ns)
    store.close(checkpoint=True)
    assert state(reopen(tmp_path).ns) == state(runner.ns)


async def test_prune_keeps_what_replay_needs(tmp_path):
    store = MetadataStore(str(tmp_path), back_logs=0)
    store.load()
    for i in range(5):
        await fill(store, 3, start=i * 3)
        assert await store.checkpoint()
    assert len(ckpt.list_checkpoints(str(tmp_path))) == 2
    expected = state(store.ns)
    # Even with the newest checkpoint gone, the older one plus the journal suffice.
    os.unlink(ckpt.list_checkpoints(str(tmp_path))[-1][1])
    assert state(reopen(tmp_path).ns) == expected


def test_checkpoint_roundtrip_of_every_node_kind(tmp_path):
    runner = Runner()
    runner.mkdir(ROOT, b"d")
    f = runner.mkfile(ROOT, b"f")
    runner.do(m.Mknod(ROOT, b"p", stat.S_IFIFO | 0o600, 1, 2))
    runner.do(m.Symlink(ROOT, b"l", b"target", 0, 0))
    runner.do(m.SetXattr(f, b"user.x", b"\x00\x01"))
    runner.do(m.WriteChunk(f, 1))
    runner.do(m.Acquire(f))
    path = str(tmp_path / "metadata.elk")
    ckpt.write(runner.ns, path)
    loaded = ckpt.read(path)
    assert state(loaded) == state(runner.ns)
    assert loaded.duplicate_result(SESSION, runner.seq)[0]
