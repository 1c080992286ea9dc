"""Chunk store scrub (CRC check from disk) and failing-disk take-out."""

import errno
import os

import pytest

from elkfs.chunkserver.store import BLOCK, CRC_OFFSET, HEADER_SIZE, ChunkStore
from elkfs.chunkserver.hddcfg import HddEntry
from elkfs.proto.errors import NO_CHUNK, FsError


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))


def test_scrub_finds_bad_block_and_bad_crc_table(disks):
    store = ChunkStore(disks, max_open=4)
    store.scan()
    for cid in (1, 2, 3):
        store.create(cid, 1)
        store.write(cid, 1, 0, os.urandom(5 * BLOCK + 10))
    assert store.scrub(1) == (HEADER_SIZE + 6 * BLOCK, None)
    assert store.scrub(99) == (0, None)
    flip(store._index[2].path, HEADER_SIZE + 4 * BLOCK + 7)
    checked, problem = store.scrub(2)
    assert problem == "block 4 fails its CRC"
    flip(store._index[3].path, CRC_OFFSET + 4 * 1 + 2)  # while its CRCs are cached
    assert store.scrub(3)[1] == "CRC table on disk does not match"
    assert store.read(3, 1, 0, 10)  # reads use the CRCs the writes made
    store.close()


def test_disk_taken_out_after_io_errors(disks, monkeypatch):
    store = ChunkStore([HddEntry(disks[0]), HddEntry(disks[1])], max_open=4, max_errors=2)
    store.scan()
    store.create(1, 1)
    store.write(1, 1, 0, b"x" * 100)
    bad_disk = store._index[1].disk
    lost = []
    store.on_disk_failed = lambda disk, chunks: lost.append((disk, chunks))
    real = os.preadv

    def failing(fd, bufs, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing)
    for _ in range(2):
        with pytest.raises(OSError):
            store.read(1, 1, 0, 100)
    monkeypatch.setattr(os, "preadv", real)
    assert lost == [(bad_disk, [(1, 1)])]
    assert bad_disk.failed and 1 not in store
    with pytest.raises(FsError) as e:
        store.read(1, 1, 0, 100)
    assert e.value.status == NO_CHUNK
    store.create(2, 1)  # new chunks go to the good disk
    assert store._index[2].disk is not bad_disk
    total_before = store.space()[0]
    assert total_before > 0
    store.close()


def test_enospc_is_not_a_disk_failure(disks, monkeypatch):
    store = ChunkStore(disks, max_open=4, max_errors=1)
    store.scan()
    store.create(1, 1)
    disk = store._index[1].disk
    store.io_error(disk, OSError(errno.ENOSPC, "full"))
    assert not disk.failed and 1 in store
    store.close()
