import errno
import os
import random
import struct
import zlib

import pytest

from elkfs.chunkserver import store as store_mod
from elkfs.chunkserver.store import (BLOCK, CHUNK_SIZE, CRC_OFFSET, CRC_ZERO, FREE_DIR,
                                     HEADER_SIZE, SESSION_FLUSH_MIN, ChunkStore, chunk_name)
from elkfs.proto.errors import CRC_ERROR, NO_CHUNK, WRONG_VERSION, FsError


@pytest.fixture
def store(disks):
    s = ChunkStore(disks, max_open=4)
    s.scan()
    yield s
    s.close()


def apply(model: bytearray, offset: int, data: bytes):
    end = offset + len(data)
    if end > len(model):
        model.extend(bytes(end - len(model)))
    model[offset:end] = data


def test_create_layout(store):
    store.create(0x1234, 7)
    assert store.info(0x1234) == (7, 0)
    c = store._index[0x1234]
    assert c.path.endswith(os.path.join("34", chunk_name(0x1234, 7)))
    assert os.path.basename(c.path) == "chunk_0000000000001234_00000007.elk"
    with open(c.path, "rb") as f:
        raw = f.read()
    assert len(raw) == HEADER_SIZE
    assert raw[:8] == b"ELKCHNK1"
    assert struct.unpack(">QQ", raw[8:24]) == (0x1234, 7)
    assert raw[24:4096] == bytes(4096 - 24)
    assert raw[4096:4100] == struct.pack(">I", CRC_ZERO)
    with pytest.raises(FsError) as e:
        store.create(0x1234, 8)
    assert e.value.status == errno.EEXIST


@pytest.mark.parametrize("offset", [0, 5000, BLOCK + 3])
def test_create_with_first_write(tmp_path, offset):
    s = ChunkStore([str(tmp_path)])
    data = os.urandom(4096)
    s.create(21, 3, offset, data)
    c = s._index[21]
    with open(c.path, "rb") as f:
        raw = f.read()
    # header, CRC table, then only the bytes written: a small file costs no whole block
    assert raw[:8] == b"ELKCHNK1" and len(raw) == HEADER_SIZE + offset + len(data)
    assert raw[HEADER_SIZE + offset:] == data and raw[HEADER_SIZE:HEADER_SIZE + offset] == bytes(offset)
    b = offset // BLOCK
    padded = raw[HEADER_SIZE + b * BLOCK:].ljust(BLOCK, b"\0")
    assert struct.unpack_from(">I", raw, CRC_OFFSET + 4 * b)[0] == zlib.crc32(padded)
    assert bytes(s.read(21, 3, offset - 10 if offset else 0, 5000)) == \
        (bytes(10) if offset else b"") + data + bytes(5000 - len(data) - (10 if offset else 0))
    # the same after a restart, and a later write inside the short last block
    s.close()
    s = ChunkStore([str(tmp_path)])
    s.scan()
    assert s.info(21) == (3, (b + 1) * BLOCK)
    s.write(21, 3, offset + 100, b"xyz")
    want = bytearray(data)
    want[100:103] = b"xyz"
    assert bytes(s.read(21, 3, offset, BLOCK)) == bytes(want) + bytes(BLOCK - len(want))
    assert s.scrub(21)[1] is None
    s.close()


def test_random_writes_and_reads(store):
    rng = random.Random(1)
    store.create(1, 1)
    model = bytearray()
    points = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, 5 * BLOCK - 7, CHUNK_SIZE // 2]
    for i in range(150):
        if i % 3 == 0:
            offset = rng.choice(points) + rng.randint(-3, 3)
            offset = max(0, offset)
        else:
            offset = rng.randrange(0, 2 << 20)
        size = rng.choice([1, 17, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK, 200_000,
                           rng.randrange(1, 1 << 20)])
        data = rng.randbytes(size)
        store.write(1, 1, offset, data)
        apply(model, offset, data)
        c = store._index[1]
        assert c.length % BLOCK == 0 and c.length >= len(model)
        # a few random reads, some past the end
        for _ in range(2):
            ro = rng.randrange(0, len(model) + BLOCK)
            rs = rng.randrange(0, 300_000)
            got = bytes(store.read(1, 1, ro, rs))
            want = bytes(model[ro:ro + rs])
            want += bytes(rs - len(want))
            assert got == want
    whole = bytes(store.read(1, 1, 0, len(model)))
    assert whole == bytes(model)
    # file layout: just the bytes written (the file ends where the furthest write did);
    # every CRC matches its block, zero-padded
    c = store._index[1]
    with open(c.path, "rb") as f:
        raw = f.read()
    assert len(raw) == HEADER_SIZE + len(model)
    for b in range(c.blocks):
        block = raw[HEADER_SIZE + b * BLOCK:HEADER_SIZE + (b + 1) * BLOCK].ljust(BLOCK, b"\0")
        assert struct.unpack_from(">I", raw, CRC_OFFSET + 4 * b)[0] == zlib.crc32(block)


def test_chunk_boundary(store):
    store.create(2, 1)
    store.write(2, 1, CHUNK_SIZE - 10, b"x" * 10)
    assert store.info(2) == (1, CHUNK_SIZE)
    assert bytes(store.read(2, 1, CHUNK_SIZE - 12, 12)) == b"\0\0" + b"x" * 10
    assert bytes(store.read(2, 1, 5 * BLOCK, 100)) == bytes(100)  # hole reads as zeros
    for off, size in [(CHUNK_SIZE - 9, 10), (CHUNK_SIZE, 1), (-1, 1), (0, CHUNK_SIZE + 1)]:
        with pytest.raises(FsError) as e:
            store.write(2, 1, off, b"y" * size) if size >= 0 else None
        assert e.value.status == errno.EINVAL
        with pytest.raises(FsError) as e:
            store.read(2, 1, off, size)
        assert e.value.status == errno.EINVAL
    assert bytes(store.read(2, 1, CHUNK_SIZE, 0)) == b""
    # a whole-chunk aligned write in one call
    data = os.urandom(CHUNK_SIZE)
    store.write(2, 1, 0, data)
    assert bytes(store.read(2, 1, 0, CHUNK_SIZE)) == data


def test_wrong_version_and_missing(store):
    store.create(3, 5)
    store.write(3, 5, 0, b"abc")
    for call in (lambda: store.read(3, 4, 0, 1), lambda: store.write(3, 6, 0, b"z"),
                 lambda: store.set_version(3, 4, 9), lambda: store.truncate(3, 4, 9, 0),
                 lambda: store.delete(3, 4), lambda: store.duplicate(3, 4, 30, 1),
                 lambda: store.check(3, 6)):
        with pytest.raises(FsError) as e:
            call()
        assert e.value.status == WRONG_VERSION
    for call in (lambda: store.read(99, 1, 0, 1), lambda: store.info(99),
                 lambda: store.delete(99, 1), lambda: store.fsync(99)):
        with pytest.raises(FsError) as e:
            call()
        assert e.value.status == NO_CHUNK
    assert bytes(store.read(3, 5, 0, 3)) == b"abc"


def _flip(path, pos):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("where", ["data", "crc"])
def test_crc_corruption_detected(disks, where):
    s = ChunkStore(disks)
    s.scan()
    s.create(4, 1)
    data = os.urandom(4 * BLOCK)
    s.write(4, 1, 0, data)
    path = s._index[4].path
    s.close()  # drop cached CRC tables: the next read must see the file
    if where == "data":
        _flip(path, HEADER_SIZE + 2 * BLOCK + 123)
    else:
        _flip(path, CRC_OFFSET + 4 * 2 + 1)
    s = ChunkStore(disks)
    s.scan()
    assert bytes(s.read(4, 1, 0, 2 * BLOCK)) == data[:2 * BLOCK]  # blocks 0-1 fine
    assert bytes(s.read(4, 1, 3 * BLOCK, BLOCK)) == data[3 * BLOCK:]
    for off, size in [(2 * BLOCK, 1), (0, 4 * BLOCK), (2 * BLOCK + 5000, 10)]:
        with pytest.raises(FsError) as e:
            s.read(4, 1, off, size)
        assert e.value.status == CRC_ERROR
    # a partial write into the damaged block must not paper over the damage
    with pytest.raises(FsError) as e:
        s.write(4, 1, 2 * BLOCK + 10, b"q")
    assert e.value.status == CRC_ERROR
    # a whole-block write replaces it
    s.write(4, 1, 2 * BLOCK, bytes(BLOCK))
    assert bytes(s.read(4, 1, 2 * BLOCK, BLOCK)) == bytes(BLOCK)
    s.close()


def test_truncate(store):
    store.create(5, 1)
    data = os.urandom(5 * BLOCK + 100)
    store.write(5, 1, 0, data)
    assert store.info(5) == (1, 6 * BLOCK)
    store.truncate(5, 1, 2, 2 * BLOCK + 10)
    assert store.info(5) == (2, 3 * BLOCK)
    assert bytes(store.read(5, 2, 0, 4 * BLOCK)) == data[:2 * BLOCK + 10] + bytes(2 * BLOCK - 10)
    # cut inside the last stored block, then extend
    store.truncate(5, 2, 3, 2 * BLOCK + 5)
    assert store.info(5) == (3, 3 * BLOCK)
    store.truncate(5, 3, 4, 10 * BLOCK + 1)
    assert store.info(5) == (4, 11 * BLOCK)
    assert bytes(store.read(5, 4, 0, 11 * BLOCK)) == data[:2 * BLOCK + 5] + bytes(9 * BLOCK - 5)
    store.truncate(5, 4, 5, 0)
    assert store.info(5) == (5, 0)
    assert bytes(store.read(5, 5, 0, 100)) == bytes(100)
    c = store._index[5]
    assert os.path.getsize(c.path) == HEADER_SIZE
    assert os.path.basename(c.path) == chunk_name(5, 5)


def test_set_version_and_duplicate(store, disks):
    store.create(6, 1)
    data = os.urandom(3 * BLOCK + 5)
    store.write(6, 1, 0, data)
    old_path = store._index[6].path
    store.set_version(6, 1, 0x1_0000_0002)  # versions are full u64s
    assert not os.path.exists(old_path)
    assert store.info(6) == (0x1_0000_0002, 4 * BLOCK)
    assert os.path.basename(store._index[6].path) == "chunk_0000000000000006_100000002.elk"
    assert bytes(store.read(6, 0x1_0000_0002, 0, len(data))) == data
    store.duplicate(6, 0x1_0000_0002, 60, 9)
    assert store.info(60) == (9, 4 * BLOCK)
    assert bytes(store.read(60, 9, 0, len(data))) == data
    store.write(60, 9, 0, b"new")
    assert bytes(store.read(6, 0x1_0000_0002, 0, 3)) == data[:3]
    with pytest.raises(FsError) as e:
        store.duplicate(6, 0x1_0000_0002, 60, 10)
    assert e.value.status == errno.EEXIST
    store.delete(6, 0x1_0000_0002)
    assert 6 not in store
    # after a restart the scan finds exactly what is left, with the right headers
    store.close()
    s2 = ChunkStore(disks)
    assert s2.scan() == 1
    assert s2.chunks() == [(60, 9)]
    assert bytes(s2.read(60, 9, 0, 3)) == b"new"
    assert bytes(s2.read(60, 9, 3, len(data) - 3)) == data[3:]


def test_restart_rescan(disks):
    s = ChunkStore(disks, max_open=2)
    s.scan()
    model = {}
    for cid in range(1, 40):
        s.create(cid * 977, cid)
        payload = os.urandom(cid * 1000)
        s.write(cid * 977, cid, cid * 100, payload)
        model[cid * 977] = (cid, cid * 100, payload)
    assert len(s._lru) <= 2  # the fd cache stays bounded
    per_disk = [d.chunk_count for d in s.disks]
    assert sum(per_disk) == 39
    s.close()
    # junk the scan must skip: bad header, wrong name, leftover temp file
    bad = os.path.join(disks[0], "AB")
    os.makedirs(bad, exist_ok=True)
    with open(os.path.join(bad, chunk_name(0xAB, 1)), "wb") as f:
        f.write(b"NOTACHNK" + bytes(8200))
    with open(os.path.join(bad, chunk_name(0x1AB, 3)), "wb") as f:  # header says version 4
        f.write(struct.pack(">8sQQ", b"ELKCHNK1", 0x1AB, 4) + bytes(8200))
    with open(os.path.join(bad, chunk_name(0x2AB, 1) + ".tmp"), "wb") as f:
        f.write(b"x")
    with open(os.path.join(bad, "README"), "w") as f:
        f.write("x")
    s2 = ChunkStore(disks)
    assert s2.scan() == 39
    assert sorted(s2.chunks()) == sorted((cid, v) for cid, (v, _, _) in model.items())
    assert not os.path.exists(os.path.join(bad, chunk_name(0x2AB, 1) + ".tmp"))
    for cid, (v, off, payload) in model.items():
        assert bytes(s2.read(cid, v, off, len(payload))) == payload
    s2.close()


def test_new_chunks_go_to_most_free_disk(disks, monkeypatch):
    s = ChunkStore(disks)
    s.scan()
    free = {disks[0]: 10 << 30, disks[1]: 20 << 30}
    for d in s.disks:
        monkeypatch.setattr(d, "space", lambda p=d.path: (100 << 30, free[p]))
    s.create(7, 1)
    assert s._index[7].disk.path == disks[1]
    free[disks[0]] = 30 << 30
    s.create(8, 1)
    assert s._index[8].disk.path == disks[0]
    s.disks[0].marked_for_removal = True
    s.create(9, 1)
    assert s._index[9].disk.path == disks[1]
    free[disks[1]] = 1 << 20
    with pytest.raises(FsError) as e:
        s.create(10, 1)
    assert e.value.status == errno.ENOSPC
    total, used = s.space()
    assert total == 100 << 30  # both disks on one file system: counted once
    s.close()


def test_replication_temp_commit(store):
    store.create(11, 1)
    store.write(11, 1, 0, b"old")
    tmp = store.create_temp(11, 3)
    assert store.info(11) == (1, BLOCK)  # not visible before commit
    data = os.urandom(2 * BLOCK + 9)
    store.write_temp(tmp, 0, data)
    store.commit_temp(tmp)
    assert store.info(11) == (3, 3 * BLOCK)
    assert bytes(store.read(11, 3, 0, len(data))) == data
    tmp = store.create_temp(12, 1)
    store.write_temp(tmp, 0, b"zz")
    store.abort_temp(tmp)
    assert 12 not in store
    assert not os.path.exists(tmp.chunk.path)


def test_write_behind_flush(disks):
    s = ChunkStore(disks, flush_bytes=2 * BLOCK)
    s.scan()
    s.create(13, 1)
    calls = []
    real = os.fdatasync
    try:
        os.fdatasync = lambda fd: (calls.append(fd), real(fd))
        for i in range(8):
            s.write(13, 1, i * BLOCK, os.urandom(BLOCK))
        s.write(13, 1, 8 * BLOCK, b"x")
        s.flush_soon(13)
        s.close()  # waits for the flusher
    finally:
        os.fdatasync = real
    assert 1 <= len(calls) <= 5
    assert s._index[13].users == 0 and s._index[13].fd is None


# ---------------------------------------------------------------- recycled chunk files

def free_dir(disk: str) -> str:
    return os.path.join(disk, FREE_DIR)


def test_deleted_chunk_file_is_emptied_and_reused(disks):
    s = ChunkStore(disks[:1])
    s.scan()
    s.create(0x10, 1)
    s.write(0x10, 1, 0, os.urandom(3 * BLOCK))
    old_ino = os.stat(s._index[0x10].path).st_ino
    s.delete(0x10, 1)
    [free] = os.listdir(free_dir(disks[0]))
    st = os.stat(os.path.join(free_dir(disks[0]), free))
    assert st.st_ino == old_ino and st.st_size == 0 and st.st_blocks == 0
    # The next chunk takes that file: no new inode, nothing of the old data.
    s.create(0x21, 5)
    path = s._index[0x21].path
    assert os.stat(path).st_ino == old_ino
    assert os.path.getsize(path) == HEADER_SIZE
    assert os.listdir(free_dir(disks[0])) == []
    assert s.info(0x21) == (5, 0)
    assert bytes(s.read(0x21, 5, 0, BLOCK)) == bytes(BLOCK)
    s.write(0x21, 5, 100, b"new")
    assert bytes(s.read(0x21, 5, 100, 3)) == b"new"
    s.close()
    s2 = ChunkStore(disks[:1])
    assert s2.scan() == 1 and s2.chunks() == [(0x21, 5)]
    s2.close()


def test_chunk_deleted_while_read_is_not_recycled(disks):
    """A reader holding the file keeps the old data: the file is unlinked, not reused."""
    s = ChunkStore(disks[:1])
    s.scan()
    s.create(0x30, 1)
    data = os.urandom(BLOCK)
    s.write(0x30, 1, 0, data)
    c = s._acquire(s._index[0x30])  # as a read in progress does
    s.delete(0x30, 1)
    assert not os.path.isdir(free_dir(disks[0])) or not os.listdir(free_dir(disks[0]))
    s.create(0x31, 1)
    s.write(0x31, 1, 0, b"x" * BLOCK)
    assert os.pread(c.fd, BLOCK, HEADER_SIZE) == data
    s._release(c)
    assert c.fd is None
    s.close()


def test_free_files_survive_a_restart(disks):
    s = ChunkStore(disks[:1])
    s.scan()
    assert len([d for d in os.listdir(disks[0]) if len(d) == 2]) == 256  # made at start
    for cid in (1, 2, 3):
        s.create(cid, 1)
        s.write(cid, 1, 0, b"abc")
    for cid in (1, 2, 3):
        s.delete(cid, 1)
    s.close()
    names = sorted(os.listdir(free_dir(disks[0])))
    assert len(names) == 3
    # A crash between the move and the truncation leaves data in a free file.
    with open(os.path.join(free_dir(disks[0]), names[0]), "wb") as f:
        f.write(b"leftover" * 1000)
    s2 = ChunkStore(disks[:1])
    assert s2.scan() == 0  # free files are not chunks
    assert all(os.path.getsize(os.path.join(free_dir(disks[0]), n)) == 0 for n in names)
    s2.create(7, 1)
    s2.create(8, 1)
    s2.delete(7, 1)
    # The new free file gets a name of its own (the old names are still in use).
    assert len(set(os.listdir(free_dir(disks[0])))) == 2
    assert set(names) & set(os.listdir(free_dir(disks[0])))
    for cid in (9, 10, 11):  # two recycled files and then a new one
        s2.create(cid, 1)
        assert s2.info(cid) == (1, 0)
    assert os.listdir(free_dir(disks[0])) == []
    s2.close()


def test_free_files_are_bounded(disks, monkeypatch):
    monkeypatch.setattr(store_mod, "MAX_FREE_FILES", 2)
    s = ChunkStore(disks[:1])
    s.scan()
    for cid in range(1, 6):
        s.create(cid, 1)
    for cid in range(1, 6):
        s.delete(cid, 1)
    assert len(os.listdir(free_dir(disks[0]))) == 2
    assert len(os.listdir(os.path.join(disks[0], "01"))) == 0
    s.close()


def test_small_session_end_leaves_flushing_to_the_kernel(disks):
    s = ChunkStore(disks[:1])
    s.scan()
    s.create(0x40, 1)
    s.write(0x40, 1, 0, b"small")
    s.flush_soon(0x40)
    assert not s._index[0x40].flush_queued
    s.write(0x40, 1, BLOCK, bytes(SESSION_FLUSH_MIN))
    s.flush_soon(0x40)
    assert s._index[0x40].flush_queued or s._index[0x40].unflushed == 0
    s.close()


def wait_until(check, timeout=20.0):
    import time
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_stock_of_empty_files_is_kept_for_new_chunks(disks):
    s = ChunkStore(disks[:1], stock=8)
    s.scan()
    disk = s.disks[0]
    wait_until(lambda: len(disk.free_files) == 8 and s._stocker is None)
    stocked = {os.stat(p).st_ino for p in disk.free_files}
    assert all(os.path.getsize(p) == 0 for p in disk.free_files)
    for cid in range(1, 6):
        s.create(cid, 1)
        s.write(cid, 1, 0, b"x" * 100)
    made = {os.stat(s._index[cid].path).st_ino for cid in range(1, 6)}
    assert made <= stocked  # every new chunk took a stocked file
    # Down to 3 of 8: below half, so the stock is topped up again.
    wait_until(lambda: len(disk.free_files) == 8 and s._stocker is None)
    assert len(os.listdir(os.path.join(disks[0], FREE_DIR))) == 8
    s.close()
    s2 = ChunkStore(disks[:1])  # no stock wanted: the files stay usable
    assert s2.scan() == 5 and len(s2.disks[0].free_files) == 8
    s2.create(9, 1)
    assert len(s2.disks[0].free_files) == 7
    s2.close()


def test_close_stops_the_stocking(disks):
    s = ChunkStore(disks[:1], stock=4096)
    s.scan()
    s.close()  # joins the thread, which stops at once
    assert s._stocker is None
    count = len(os.listdir(os.path.join(disks[0], FREE_DIR)))
    assert count == len(s.disks[0].free_files)  # every file made is accounted for
