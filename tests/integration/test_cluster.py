"""Real processes on loopback: one master, three chunkservers, the client library.

Files of many sizes written in pieces at random offsets and read back byte-exact; a master
killed with SIGKILL keeps every acknowledged change; a restarted chunkserver serves its
data again; a flipped byte is caught by the CRC, the read still succeeds from another
copy and the bad copy is reported to the master.
"""

import asyncio
import errno
import glob
import os
import random

import pytest

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError
from elkfs.testing.cluster import Cluster

NET = "127.0.5"
CHUNK = 64 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("cluster")), net=NET, chunkservers=3)
    c.start()
    yield c
    c.destroy()


async def connect(cluster) -> Client:
    return await Client.connect(*cluster.master_addr, info="integration test")


SIZES = [0, 1, 65535, 65536, 65537, CHUNK - 1, CHUNK + 1, 150 << 20]


@pytest.mark.parametrize("size", SIZES)
async def test_write_random_offsets_read_back(cluster, size):
    rnd = random.Random(size)
    data = rnd.randbytes(size)
    # Cut the file into pieces of random sizes and write them in random order.
    cuts = sorted({0, size, *(rnd.randrange(size + 1) for _ in range(min(size, 12)))})
    pieces = list(zip(cuts, cuts[1:]))
    rnd.shuffle(pieces)
    client = await connect(cluster)
    try:
        path = f"/sizes-{size}"
        f = await client.create(path)
        for start, end in pieces:
            await f.write(start, data[start:end])
        await f.close()
        assert (await client.stat(path)).size == size
        assert await client.read_file(path) == data
        f = await client.open(path)
        for _ in range(10):  # random ranges, some past the end
            start = rnd.randrange(size + 10)
            length = rnd.randrange(1, 3 << 20)
            assert await f.read(start, length) == data[start:start + length]
        await f.close()
    finally:
        await client.close()


async def test_overwrite_and_sparse_holes(cluster):
    client = await connect(cluster)
    try:
        f = await client.create("/sparse")
        await f.write(CHUNK * 2 + 10, b"tail")  # chunks 0 and 1 are holes
        await f.write(100, b"head")
        await f.write(102, b"XY")  # overwrite inside a written range
        await f.close()
        data = await client.read_file("/sparse")
        assert len(data) == CHUNK * 2 + 14
        assert data[100:104] == b"heXY" and data[-4:] == b"tail"
        assert data[:100] == bytes(100) and data[CHUNK:CHUNK + 4096] == bytes(4096)
        await client.truncate("/sparse", 102)
        assert await client.read_file("/sparse") == bytes(100) + b"he"
        await client.truncate("/sparse", 200)  # extended: zeros, not the old bytes
        assert await client.read_file("/sparse") == bytes(100) + b"he" + bytes(98)
    finally:
        await client.close()


async def test_master_sigkill_keeps_acknowledged_changes(cluster):
    client = await connect(cluster)
    try:
        await client.mkdir("/acked")
        payload = os.urandom(300_000)
        for i in range(200):
            await client.mkdir(f"/acked/d{i}")
        await client.write_file("/acked/file", payload)
        await client.rename("/acked/d0", "/acked/renamed")
        await client.setxattr("/acked/file", b"user.k", b"v")
        cluster.kill(cluster.masters[0])  # SIGKILL: nothing flushed, no checkpoint
        cluster.start_daemon(cluster.masters[0])
        # The same client goes on: it reconnects and resumes its session.
        names = set(await client.listdir("/acked"))
        assert {f"d{i}" for i in range(1, 200)} <= names
        assert "renamed" in names and "d0" not in names
        assert await client.getxattr("/acked/file", b"user.k") == b"v"
        cluster.wait_chunkservers_registered()
        assert await client.read_file("/acked/file") == payload
        await client.mkdir("/acked/after-restart")
    finally:
        await client.close()


async def test_chunkserver_restart_serves_its_data_again(cluster):
    client = await connect(cluster)
    try:
        await client.mkdir("/one-copy")
        await client.setgoal("/one-copy", 1)
        data = os.urandom(5 << 20)
        await client.write_file("/one-copy/f", data)
        [chunk] = await client.fileinfo("/one-copy/f")
        [copy] = chunk.copies
        cs = next(d for d in cluster.chunkservers if d.host == copy.addr[0])
        cluster.restart(cs)
        cluster.wait_chunkservers_registered()
        assert await client.read_file("/one-copy/f") == data
    finally:
        await client.close()


def chunk_file(cluster, host: str, chunk_id: int) -> str:
    cs = next(d for d in cluster.chunkservers if d.host == host)
    [path] = glob.glob(os.path.join(cs.data_dir, "hdd1", "*", f"chunk_{chunk_id:016X}_*"))
    return path


async def test_flipped_byte_read_from_other_copy_and_reported(cluster):
    client = await connect(cluster)
    try:
        await client.mkdir("/two-copies")
        await client.setgoal("/two-copies", 2)
        data = os.urandom(3 << 20)
        await client.write_file("/two-copies/f", data)
        f = await client.open("/two-copies/f")
        first = (await client.op(m.ReadChunk(f.inode, 0))).locations[0]
        [chunk] = await client.fileinfo("/two-copies/f")
        path = chunk_file(cluster, first[0], chunk.chunk_id)
        with open(path, "r+b") as raw:  # flip one byte of data block 5
            raw.seek(8192 + 5 * 65536 + 123)
            byte = raw.read(1)
            raw.seek(8192 + 5 * 65536 + 123)
            raw.write(bytes([byte[0] ^ 0x01]))
        assert await f.read(0, len(data)) == data
        await f.close()
        # The master heard about the bad copy.
        for _ in range(50):
            [chunk] = await client.fileinfo("/two-copies/f")
            bad = [c for c in chunk.copies if not c.valid]
            if bad:
                break
            await asyncio.sleep(0.1)
        assert [c.addr for c in bad] == [tuple(first)]
    finally:
        await client.close()


async def test_many_clients_concurrently(cluster):
    clients = [await connect(cluster) for _ in range(4)]
    try:
        await clients[0].mkdir("/concurrent")

        async def work(i, client):
            blobs = {}
            for j in range(10):
                blobs[j] = os.urandom(random.randrange(1, 200_000))
                await client.write_file(f"/concurrent/c{i}-{j}", blobs[j])
            for j, blob in blobs.items():
                assert await client.read_file(f"/concurrent/c{i}-{j}") == blob

        await asyncio.gather(*(work(i, c) for i, c in enumerate(clients)))
        assert len(await clients[0].listdir("/concurrent")) == 40
    finally:
        for c in clients:
            await c.close()


async def test_two_writers_on_one_chunk_are_serialised(cluster):
    """Each writer's session on the chunk is whole: the result is all A or all B, never
    a mix, because the master lets one writer at a time hold the chunk."""
    a, b = await connect(cluster), await connect(cluster)
    try:
        await (await a.create("/contended")).close()
        blobs = {a: os.urandom(1 << 20) * 4, b: os.urandom(1 << 20) * 4}

        async def write(client):
            f = await client.open("/contended")
            for i in range(4):
                await f.write(i << 20, blobs[client][i << 20:(i + 1) << 20])
                await asyncio.sleep(0)
            await f.close()

        for _ in range(3):
            await asyncio.gather(write(a), write(b))
            assert await a.read_file("/contended") in (blobs[a], blobs[b])
    finally:
        await a.close()
        await b.close()


async def wait_for(predicate, timeout=30.0, interval=0.1):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def test_lost_server_and_stale_copy_detected(cluster):
    client = await connect(cluster)
    try:
        await client.mkdir("/stale")
        await client.setgoal("/stale", 2)
        first = os.urandom(2 << 20)
        await client.write_file("/stale/f", first)
        [chunk] = await client.fileinfo("/stale/f")
        holder = next(d for d in cluster.chunkservers if d.host == chunk.copies[0].addr[0])
        cluster.kill(holder)

        async def lost():
            info = await client.cluster_info()
            return any(s["address"].startswith(holder.host) and not s["connected"]
                       for s in info["chunkservers"])

        await wait_for(lost)
        # Written while the holder is down: the other copy moves to a new version.
        second = os.urandom(2 << 20)
        f = await client.open("/stale/f")
        await f.write(0, second)
        await f.close()
        cluster.start_daemon(holder)
        cluster.wait_chunkservers_registered()

        async def stale_seen():
            [c] = await client.fileinfo("/stale/f")
            old = [x for x in c.copies if x.addr[0] == holder.host]
            return old and not old[0].valid and old[0].version < c.version

        await wait_for(stale_seen)
        assert await client.read_file("/stale/f") == second
    finally:
        await client.close()


async def test_session_expires_after_sustain_time(tmp_path):
    c = Cluster(str(tmp_path), net="127.0.9", chunkservers=1,
                master_options={"SESSION_SUSTAIN_TIME": 1})
    c.start()
    try:
        watcher = await connect(c)
        leaver = await connect(c)
        await leaver.write_file("/kept-open", b"x" * 1000)
        await leaver.open("/kept-open")  # held open, never released
        await leaver.settrashtime("/kept-open", 0)  # freed, not kept in the trash
        await leaver.unlink("/kept-open")  # open, so the file lives on
        sessions_before = (await watcher.cluster_info())["sessions"]
        inodes_before = (await watcher.cluster_info())["inodes"]
        leaver.link.conn.close()  # the client vanishes without releasing

        async def expired():
            info = await watcher.cluster_info()
            return info["sessions"] < sessions_before and info["inodes"] < inodes_before

        await wait_for(expired)
        await watcher.close()
    finally:
        c.destroy()


async def test_posted_change_is_retried_after_a_broken_connection_and_applied_once(cluster):
    """`MasterLink.post` (how the mount sends Acquire/Release): the connection breaks right
    after the send; the retry carries the same sequence number, so the open is counted
    exactly once whether or not the master saw the first send."""
    import errno
    import stat

    c = await connect(cluster)
    try:
        await c.mkdir("/posted")
        await c.settrashtime("/posted", 0)
        for i in range(6):
            attr = await c.mknod(f"/posted/f{i}", stat.S_IFREG | 0o644)
            if i % 2:  # broken right after the send
                c.link.post(m.Acquire(attr.inode))
                c.link.send_posted()  # else it leaves at the end of this loop step
                c.link.conn.transport.abort()
            else:  # broken before: the post waits for the reconnection
                c.link.conn.transport.abort()
                await asyncio.sleep(0.05)
                c.link.post(m.Acquire(attr.inode))
            await c.link.drain_posted(timeout=30)
            await c.unlink(f"/posted/f{i}")
            assert (await c.getattr_inode(attr.inode)).nlink == 0  # open: kept
            await c.op(m.Release(attr.inode))  # fails (EBADF) if the open was lost
            with pytest.raises(FsError) as e:  # still there if it was counted twice
                await c.getattr_inode(attr.inode)
            assert e.value.errno == errno.ENOENT
    finally:
        await c.close()


async def test_posted_change_goes_before_a_request_made_after_it(cluster):
    """A post leaves at the end of the event-loop step, but a request made in the same
    step must not overtake it: here an open (Acquire) then an unlink of the file."""
    import stat

    c = await connect(cluster)
    try:
        parent = (await c.mkdir("/order")).inode
        await c.settrashtime("/order", 0)
        attr = await c.mknod("/order/f", stat.S_IFREG | 0o644)
        c.link.post(m.Acquire(attr.inode))
        await c.op(m.Unlink(parent, b"f"))
        assert (await c.getattr_inode(attr.inode)).nlink == 0  # open first: kept
        await c.op(m.Release(attr.inode))
    finally:
        await c.close()


def chunk_files(cluster, chunk_id: int) -> list[str]:
    return sorted(p for d in cluster.chunkservers for p in glob.glob(
        os.path.join(d.data_dir, "hdd1", "*", f"chunk_{chunk_id:016X}_*")))


async def _handed_out(client: Client, directory: str) -> tuple[int, m.ChunkOut]:
    """`directory/f`, a new file at goal 2, and the WriteChunk of its first chunk."""
    await client.mkdir(directory)
    await client.setgoal(directory, 2)
    inode = (await client.create(f"{directory}/f")).inode
    chunk = await client.op(m.WriteChunk(inode, 0))
    assert chunk.create and chunk.version == 1 and len(chunk.locations) == 2
    return inode, chunk


async def _session(chunk: m.ChunkOut, data: bytes, once: bool) -> None:
    """A whole write session on the chunk's chain (which makes the chunk on each
    chunkserver), without the WriteChunkEnd: WriteInit, WriteData and WriteEnd, or
    (`once`) one WriteOnce, as a small file's close sends it."""
    from elkfs.client.chunkio import ChunkWriter

    writer = ChunkWriter(chunk.locations, chunk.chunk_id, chunk.version, create=True,
                         token=chunk.token)
    if once:
        await writer.write_once(0, data, sync=False)
        return
    await writer.open()
    await writer.write(0, data)
    await writer.finish(sync=False)


both_ways = pytest.mark.parametrize("once", [False, True], ids=["session", "once"])


async def test_a_new_chunk_is_made_by_its_first_write_session(cluster):
    """The master hands out a new chunk without making it on the chunkservers; the write
    session makes it on each one of its chain, and its copies count from WriteChunkEnd."""
    client = await connect(cluster)
    try:
        inode, chunk = await _handed_out(client, "/made")
        assert chunk_files(cluster, chunk.chunk_id) == []  # not made yet
        await client.op(m.WriteChunkEnd(inode, 0, chunk.chunk_id, 0, ok=False))
        data = os.urandom(300_000)
        await client.write_file("/made/f", data)
        [desc] = await client.fileinfo("/made/f")
        assert len([c for c in desc.copies if c.valid]) == 2
        assert len(chunk_files(cluster, desc.chunk_id)) == 2
        assert await client.read_file("/made/f") == data
    finally:
        await client.close()


@both_ways
async def test_a_failed_new_chunk_session_leaves_no_copies(cluster, once):
    """WriteChunkEnd(ok=False) after a session that made the chunk: its files are deleted
    before the answer, and the next write makes the chunk anew (a higher version)."""
    client = await connect(cluster)
    try:
        inode, chunk = await _handed_out(client, f"/failed{int(once)}")
        await _session(chunk, b"never acknowledged" * 100, once)
        assert len(chunk_files(cluster, chunk.chunk_id)) == 2
        await client.op(m.WriteChunkEnd(inode, 0, chunk.chunk_id, 0, ok=False))
        assert chunk_files(cluster, chunk.chunk_id) == []
        assert (await client.stat(f"/failed{int(once)}/f")).size == 0
        data = os.urandom(100_000)
        await client.write_file(f"/failed{int(once)}/f", data)
        [desc] = await client.fileinfo(f"/failed{int(once)}/f")
        assert desc.chunk_id == chunk.chunk_id and desc.version > 1
        assert len(chunk_files(cluster, chunk.chunk_id)) == 2
        assert await client.read_file(f"/failed{int(once)}/f") == data
    finally:
        await client.close()


@both_ways
async def test_a_writer_gone_mid_creation_leaves_no_copies(cluster, once):
    """The writer's connection closes between WriteChunk and WriteChunkEnd: the master
    deletes what the session made before anyone else may write the chunk."""
    gone = await connect(cluster)
    _, chunk = await _handed_out(gone, f"/gone{int(once)}")
    await _session(chunk, b"never acknowledged" * 100, once)
    assert len(chunk_files(cluster, chunk.chunk_id)) == 2
    await gone.close()
    client = await connect(cluster)
    try:
        data = os.urandom(70_000)
        f = await client.open(f"/gone{int(once)}/f")
        await f.write(0, data)  # waits for the lock, which waits for the deletions
        await f.close()
        [desc] = await client.fileinfo(f"/gone{int(once)}/f")
        assert desc.chunk_id == chunk.chunk_id and desc.version > 1
        files = chunk_files(cluster, chunk.chunk_id)
        assert files and all(not p.endswith("_00000001.elk") for p in files)
        assert await client.read_file(f"/gone{int(once)}/f") == data
    finally:
        await client.close()


@both_ways
async def test_a_new_chunk_made_after_a_master_restart_is_counted(cluster, once):
    """The master restarts between handing out a new chunk and its WriteChunkEnd, and the
    session makes the chunk only then: the chunkservers report what they made
    (CsChunkMade), so the new master knows the copies and the data reads back."""
    client = await connect(cluster)
    try:
        inode, chunk = await _handed_out(client, f"/restarted{int(once)}")
        cluster.kill(cluster.masters[0])
        cluster.start_daemon(cluster.masters[0])
        cluster.wait_chunkservers_registered()
        data = os.urandom(200_000)
        await _session(chunk, data, once)
        await client.op(m.WriteChunkEnd(inode, 0, chunk.chunk_id, len(data)))
        for _ in range(100):  # the reports and the WriteChunkEnd come on different links
            [desc] = await client.fileinfo(f"/restarted{int(once)}/f")
            if len([c for c in desc.copies if c.valid]) == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(c.addr for c in desc.copies if c.valid) == sorted(chunk.locations)
        assert await client.read_file(f"/restarted{int(once)}/f") == data
    finally:
        await client.close()


async def test_a_small_write_does_not_wait_for_the_chunk(cluster):
    """The master's answer to WriteChunk is not waited for by a small write: another
    client holds the chunk, and the write returns anyway; the close waits for the chunk
    and then writes, so nothing is lost and the other writer's session stays whole."""
    a, b = await connect(cluster), await connect(cluster)
    try:
        inode, held = await _handed_out(a, "/deferred")
        f = await b.open("/deferred/f")
        await asyncio.wait_for(f.write(0, b"second writer"), 2.0)  # the chunk is still held
        closing = asyncio.ensure_future(f.close())
        await asyncio.sleep(0.3)
        assert not closing.done()  # the close waits for the chunk
        first = b"first writer, a whole session"
        await _session(held, first, once=True)
        await a.op(m.WriteChunkEnd(inode, 0, held.chunk_id, len(first)))
        await asyncio.wait_for(closing, 10.0)
        assert await a.read_file("/deferred/f") == b"second writer" + first[13:]
    finally:
        await a.close()
        await b.close()


async def test_a_refused_chunk_is_the_close_error_and_loses_nothing_else(tmp_path):
    """With no chunkserver, the chunk a small write needs cannot be had: the write itself
    returns, the error comes at the close (as write-back errors do), the file keeps its
    length, and the File is not stuck: the next write tries again."""
    cluster = Cluster(str(tmp_path), net="127.0.46", chunkservers=0)
    cluster.start()
    try:
        client = await Client.connect(*cluster.master_addr, info="no chunkservers",
                                      retry_s=1.0)
        try:
            f = await client.create("/f")
            await asyncio.wait_for(f.write(0, b"x" * 100), 0.5)
            with pytest.raises(FsError):
                await f.close()
            assert (await client.stat("/f")).size == 0
            assert not f.dirty
            await asyncio.wait_for(f.write(0, b"y"), 0.5)
            with pytest.raises(FsError):
                await f.flush()
        finally:
            await client.close()
    finally:
        cluster.destroy()


async def test_a_write_past_the_largest_file_size_is_refused_at_once(cluster):
    from elkfs.proto.layout import MAX_FILE_SIZE

    client = await connect(cluster)
    try:
        f = await client.create("/huge")
        for offset in (MAX_FILE_SIZE - 1, MAX_FILE_SIZE):
            with pytest.raises(FsError) as e:
                await f.write(offset, b"xy")
            assert e.value.errno == errno.EFBIG
        await f.write(MAX_FILE_SIZE - 2, b"xy")  # the last two bytes a file can have
        await f.close()
        assert (await client.stat("/huge")).size == MAX_FILE_SIZE
    finally:
        await client.close()
