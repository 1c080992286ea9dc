"""Data safety on real processes: goals kept through a chunkserver loss, goal changes,
damaged copies replaced (scrub or read), disks drained, snapshots and trash.

Every test gets its own small cluster (loopback net 127.0.6x) with the shipped defaults,
and waits for conditions with generous deadlines (no timing assertions: the machine may be
busy).
"""

import asyncio
import glob
import os
import random
import subprocess
import sys
import time

import pytest

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError
from elkfs.testing.cluster import Cluster

from .small_disk import small_disk

CHUNK = 64 << 20
DEADLINE = 180.0


def make_cluster(tmp_path, net, cs_options=None, chunkservers=3, master_options=None):
    c = Cluster(str(tmp_path / "cluster"), net=net, chunkservers=chunkservers,
                master_options=master_options or {},
                cs_options=cs_options or {})
    c.start()
    return c


@pytest.fixture
def cluster_factory(tmp_path):
    made = []

    def make(net, **kw):
        c = make_cluster(tmp_path, net, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.destroy()


async def wait_for(what: str, check, timeout: float = DEADLINE, interval: float = 0.3):
    """Poll the async `check()` until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = await check()
        except FsError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


async def valid_copies(client, path) -> list[list[tuple]]:
    """Per chunk of the file: the addresses of its valid copies."""
    return [sorted(c.addr for c in chunk.copies if c.valid)
            for chunk in await client.fileinfo(path)]


async def all_at(client, paths, count) -> bool:
    for p in paths:
        for copies in await valid_copies(client, p):
            if len(copies) != count:
                return False
    return True


def chunk_files(cluster, d, chunk_id=None) -> list[str]:
    pattern = f"chunk_{chunk_id:016X}_*" if chunk_id else "chunk_*"
    return glob.glob(os.path.join(d.data_dir, "hdd*", "*", pattern))


async def write_files(client, base, sizes, seed=1) -> dict[str, bytes]:
    rnd = random.Random(seed)
    files = {}
    for i, size in enumerate(sizes):
        path = f"{base}/f{i}"
        files[path] = rnd.randbytes(size)
        await client.write_file(path, files[path])
    return files


async def read_all(client, files) -> None:
    for path, data in files.items():
        assert await client.read_file(path) == data, path


# ---------------------------------------------------------------- chunkserver loss


async def test_lost_chunkserver_rebuilt_then_extra_copies_removed(cluster_factory):
    cluster = cluster_factory("127.0.61")
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        await client.mkdir("/data")
        await client.setgoal("/data", 2)
        files = await write_files(client, "/data", [1, 300_000, 2 << 20, 5 << 20,
                                                     CHUNK + 4096] + [100_000] * 8)
        assert await all_at(client, files, 2)
        victim = cluster.chunkservers[0]
        held = [p for p in files
                if any(victim.host in [a[0] for a in cs] for cs in await valid_copies(client, p))]
        assert held, "the victim holds no chunk"
        cluster.kill(victim)
        # Reads work at once (the other copy), and after the rebuild.
        await read_all(client, files)

        async def rebuilt():
            info = await client.cluster_info()
            if info["undergoal_chunks"] or info["missing_chunks"]:
                return False
            for p in files:
                for copies in await valid_copies(client, p):
                    if len(copies) != 2 or any(a[0] == victim.host for a in copies):
                        return False
            return info

        info = await wait_for("every chunk back at 2 copies", rebuilt)
        assert info["endangered_chunks"] == 0 and info["replications_done"] > 0
        await read_all(client, files)
        # The victim comes back with its old copies: the extra ones are removed.
        cluster.start_daemon(victim)

        async def trimmed():
            info = await client.cluster_info()
            return (info["overgoal_chunks"] == 0 and info["replication_passes"] > 0
                    and await all_at(client, files, 2)
                    and any(s["connected"] and s["address"].startswith(victim.host + ":")
                            for s in info["chunkservers"]))

        await wait_for("extra copies removed", trimmed)
        await wait_for("victim's extra chunk files deleted",
                       lambda: _async(sum(len(chunk_files(cluster, d))
                                          for d in cluster.chunkservers) == 2 * 14))
        await read_all(client, files)
    finally:
        await client.close()


async def _async(value):
    return value


async def test_short_disconnect_causes_no_rebuild(cluster_factory):
    cluster = cluster_factory("127.0.62", master_options={"REPLICATIONS_DELAY_DISCONNECT": 600})
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        files = await write_files(client, "", [1 << 20] * 4)
        victim = cluster.chunkservers[1]
        cluster.kill(victim)
        info = await client.cluster_info()
        passes = info["replication_passes"]
        await wait_for("a few planner passes",
                       lambda: _passes_after(client, passes + 5))
        info = await client.cluster_info()
        assert info["replications_done"] == 0  # waited for the server, no storm
        cluster.start_daemon(victim)
        cluster.wait_chunkservers_registered()
        await wait_for("all copies counted again", lambda: all_at(client, files, 2))
        info = await wait_for("no chunk under goal", lambda: _undergoal_zero(client))
        assert info["replications_done"] == 0
    finally:
        await client.close()


async def test_maintenance_mode_waits_for_a_planned_restart(cluster_factory):
    """A chunkserver put in maintenance (`mfscli -C M1/...`) is waited for: no copy is
    rebuilt while it is away, its copies count again when it is back, and nothing gets
    a new copy on it meanwhile; M0 ends it. Without maintenance (the default) the same
    restart rebuilds at once."""
    cluster = cluster_factory("127.0.66")
    client = await Client.connect(*cluster.master_addr, info="replication test")
    mfscli = os.path.join(os.path.dirname(sys.executable), "mfscli")
    try:
        files = await write_files(client, "", [1 << 20] * 4)
        victim = cluster.chunkservers[1]
        target = f"{victim.host}:9422"
        on = subprocess.run([mfscli, "-H", cluster.master_host, "-C", f"M1/{target}"],
                            capture_output=True, text=True, timeout=60)
        assert on.returncode == 0 and "in maintenance" in on.stdout, on.stderr
        cluster.kill(victim)
        passes = (await client.cluster_info())["replication_passes"]
        await wait_for("a few planner passes", lambda: _passes_after(client, passes + 4))
        info = await client.cluster_info()
        assert info["replications_done"] == 0 and info["undergoal_chunks"] > 0
        state = next(s for s in info["chunkservers"] if s["address"] == target)
        assert not state["connected"] and state["maintenance_s"] > 0
        cluster.start_daemon(victim)
        await wait_for("all copies counted again", lambda: all_at(client, files, 2))
        assert (await client.cluster_info())["replications_done"] == 0
        off = subprocess.run([mfscli, "-H", cluster.master_host, "-C", f"M0/{target}"],
                             capture_output=True, text=True, timeout=60)
        assert off.returncode == 0 and "maintenance off" in off.stdout, off.stderr
        cluster.kill(victim)  # not in maintenance now: rebuilt at once

        async def rebuilt():
            info = await client.cluster_info()
            return info if info["replications_done"] > 0 and info["undergoal_chunks"] == 0 \
                else None

        await wait_for("the copies rebuilt elsewhere", rebuilt)
    finally:
        await client.close()


async def test_maintenance_mode_ends_by_itself(cluster_factory):
    """Maintenance ends after MAINTENANCE_MODE_TIMEOUT (the setting under test: 3 s):
    a server that is still away then has its copies rebuilt."""
    cluster = cluster_factory("127.0.67", master_options={"MAINTENANCE_MODE_TIMEOUT": 3})
    client = await Client.connect(*cluster.master_addr, info="replication test")
    from elkfs.client.masters import master_admin
    try:
        await write_files(client, "", [1 << 20] * 2)
        victim = cluster.chunkservers[0]
        await master_admin(cluster.master_host, "maintenance-on", f"{victim.host}:9422")
        cluster.kill(victim)
        started = time.monotonic()

        async def rebuilt():
            info = await client.cluster_info()
            return info if info["replications_done"] > 0 and info["undergoal_chunks"] == 0 \
                else None

        await wait_for("a rebuild once maintenance ran out", rebuilt)
        assert time.monotonic() - started >= 3.0
    finally:
        await client.close()


async def _undergoal_zero(client):
    info = await client.cluster_info()
    return info if info["undergoal_chunks"] == 0 else None


async def _passes_after(client, n):
    return (await client.cluster_info())["replication_passes"] >= n


async def test_goal_change_on_a_tree(cluster_factory):
    cluster = cluster_factory("127.0.63")
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        await client.makedirs("/tree/sub")
        await client.setgoal("/tree", 1, recursive=True)
        files = await write_files(client, "/tree", [1000, 2 << 20, 70 << 20])
        files.update(await write_files(client, "/tree/sub", [5000, 1 << 20], seed=2))
        assert await all_at(client, files, 1)
        await client.setgoal("/tree", 3, recursive=True)
        await wait_for("3 copies", lambda: all_at(client, files, 3))
        await read_all(client, files)
        await client.setgoal("/tree", 1, recursive=True)
        await wait_for("1 copy", lambda: all_at(client, files, 1))
        await read_all(client, files)
        info = await client.cluster_info()
        assert info["missing_chunks"] == 0
    finally:
        await client.close()


# ---------------------------------------------------------------- damaged copies


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


@pytest.mark.parametrize("where", ["data", "crc"])
async def test_damaged_copy_is_replaced(cluster_factory, where):
    cluster = cluster_factory("127.0.64",
                              cs_options={"HDD_TEST_SPEED": 50})
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        data = os.urandom(3 << 20)
        await client.write_file("/f", data)
        [chunk] = await client.fileinfo("/f")
        first = chunk.copies[0].addr
        cs = next(d for d in cluster.chunkservers if d.host == first[0])
        [path] = chunk_files(cluster, cs, chunk.chunk_id)
        if where == "data":
            flip(path, 8192 + 7 * 65536 + 99)
        else:
            flip(path, 4096 + 4 * 3 + 1)  # the CRC of block 3
        assert await client.read_file("/f") == data

        async def replaced():
            [c] = await client.fileinfo("/f")
            good = [x.addr for x in c.copies if x.valid]
            return (len(good) == 2 and len(c.copies) == 2 and tuple(first) not in good
                    and not os.path.exists(path))

        await wait_for("the damaged copy replaced", replaced)
        assert await client.read_file("/f") == data

        async def clean():
            info = await client.cluster_info()
            return info["damaged_copies"] == 0 and info["undergoal_chunks"] == 0

        await wait_for("no damaged copy counted", clean)
    finally:
        await client.close()


# ---------------------------------------------------------------- disk removal


async def test_disk_marked_for_removal_is_drained(cluster_factory):
    cluster = cluster_factory("127.0.66")
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        files = await write_files(client, "", [1 << 20] * 6 + [100] * 6)
        cs = cluster.chunkservers[0]
        on_disk = len(chunk_files(cluster, cs))
        assert on_disk > 0
        cluster.stop_daemon(cs)
        hdd2 = os.path.join(cs.data_dir, "hdd2")
        os.makedirs(hdd2)
        with open(os.path.join(cs.data_dir, "mfshdd.cfg"), "w") as f:
            f.write(f"*{os.path.join(cs.data_dir, 'hdd1')}\n{hdd2}\n")
        cluster.start_daemon(cs)

        async def drained():
            info = await client.cluster_info()
            [s] = [s for s in info["chunkservers"] if s["address"].startswith(cs.host + ":")]
            return (s["connected"] and s["marked_chunks"] == on_disk
                    and s["marked_chunks_needed"] == 0 and s["removal"] == "ready"
                    and info["undergoal_chunks"] == 0)

        await wait_for("the marked disk drained", drained)
        await read_all(client, files)
        # Without the marked disk's copies every chunk still has its 2 copies.
        assert len(chunk_files(cluster, cs)) == on_disk
        for p in files:
            for chunk in await client.fileinfo(p):
                others = [c for c in chunk.copies if c.valid and c.addr[0] != cs.host]
                ours = chunk_files(cluster, cs, chunk.chunk_id)
                assert len(others) + sum(1 for x in ours if "/hdd2/" in x) >= 2
    finally:
        await client.close()


# ---------------------------------------------------------------- snapshots


async def test_snapshot_of_big_file_and_tree_copy_on_write(cluster_factory):
    cluster = cluster_factory("127.0.67")
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        big = os.urandom(1 << 20) * 200  # 200 MiB: 4 chunks
        await client.write_file("/big", big)
        started = time.monotonic()
        await client.snapshot("/big", "/big-snap")
        took_file = time.monotonic() - started
        assert await client.fileinfo("/big-snap") == await client.fileinfo("/big")
        f = await client.open("/big-snap")
        await f.write(CHUNK + 5, b"changed")
        await f.write(3 * CHUNK - 1, b"XY")  # across two chunks
        await f.close()
        expect = bytearray(big)
        expect[CHUNK + 5:CHUNK + 12] = b"changed"
        expect[3 * CHUNK - 1:3 * CHUNK + 1] = b"XY"
        assert await client.read_file("/big-snap") == expect
        assert await client.read_file("/big") == big
        ids = [c.chunk_id for c in await client.fileinfo("/big")]
        snap_ids = [c.chunk_id for c in await client.fileinfo("/big-snap")]
        assert ids[0] == snap_ids[0]  # untouched: still shared
        assert all(ids[i] != snap_ids[i] for i in (1, 2, 3))
        # Truncating the original inside a shared chunk leaves the copy alone.
        await client.truncate("/big", 10)
        assert await client.read_file("/big") == big[:10]
        assert (await client.read_file("/big-snap"))[:CHUNK] == big[:CHUNK]
        # A tree of 1000 files.
        await client.mkdir("/tree")
        for i in range(10):
            await client.mkdir(f"/tree/d{i}")
        blobs = {}
        for i in range(1000):
            path = f"/tree/d{i % 10}/f{i}"
            if i % 100 == 0:
                blobs[path] = os.urandom(70_000)
                await client.write_file(path, blobs[path])
            else:
                await client.mknod(path, 0o100644)
        started = time.monotonic()
        await client.snapshot("/tree", "/tree-snap")
        took_tree = time.monotonic() - started
        print(f"snapshot round trips: 200 MiB file {took_file * 1000:.1f} ms, "
              f"1000-file tree {took_tree * 1000:.1f} ms")
        total = 0
        for i in range(10):
            total += len(await client.listdir(f"/tree-snap/d{i}"))
        assert total == 1000
        for path, blob in blobs.items():
            copy = path.replace("/tree/", "/tree-snap/")
            assert await client.read_file(copy) == blob
            await client.write_file(copy, b"new")
            assert await client.read_file(path) == blob
            assert await client.read_file(copy) == b"new"
    finally:
        await client.close()


# ---------------------------------------------------------------- trash


async def test_trash_restore_and_purge(cluster_factory):
    cluster = cluster_factory("127.0.68")
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        await client.makedirs("/keep/deep")
        assert await client.gettrashtime("/keep") == 86400
        data = os.urandom(2 << 20)
        await client.write_file("/keep/deep/f", data)
        [chunk] = await client.fileinfo("/keep/deep/f")
        await client.unlink("/keep/deep/f")
        assert not await client.exists("/keep/deep/f")
        [entry] = [e for e in await client.list_trash() if e.path == b"keep/deep/f"]
        assert entry.attr.size == len(data)
        await client.undelete(entry.inode)
        assert await client.read_file("/keep/deep/f") == data
        assert not await client.list_trash()
        # Trash time 0: the chunks are deleted at once.
        await client.settrashtime("/keep", 0, recursive=True)
        assert await client.gettrashtime("/keep/deep/f") == 0
        await client.unlink("/keep/deep/f")
        assert not await client.list_trash()
        await wait_for("chunk files deleted", lambda: _async(not any(
            chunk_files(cluster, d, chunk.chunk_id) for d in cluster.chunkservers)))
        # A short trash time: purged by the master when it expires.
        await client.settrashtime("/keep", 1)
        await client.write_file("/keep/g", data)
        [chunk] = await client.fileinfo("/keep/g")
        await client.unlink("/keep/g")
        assert [e.path for e in await client.list_trash()] == [b"keep/g"]
        await wait_for("trash purged", lambda: _async_not(client.list_trash()))
        await wait_for("chunk files deleted", lambda: _async(not any(
            chunk_files(cluster, d, chunk.chunk_id) for d in cluster.chunkservers)))
        # An explicit purge.
        await client.settrashtime("/keep", 3600)
        await client.write_file("/keep/h", b"h")
        await client.unlink("/keep/h")
        [entry] = await client.list_trash()
        await client.purge_trash([entry.inode])
        assert not await client.list_trash()
        with pytest.raises(FsError):
            await client.op(m.GetAttr(entry.inode))
    finally:
        await client.close()


async def _async_not(coro):
    return not await coro


# ---------------------------------------------------------------- full disks


async def test_full_chunkserver_gets_no_more_chunks(tmp_path):
    """One chunkserver's disk is a 100 MiB tmpfs: once it fills, new chunks (and their
    second copies) go to the others, and every file is written and kept at goal 2."""
    cluster = Cluster(str(tmp_path / "cluster"), net="127.0.68", chunkservers=3,
                      cs_options={})
    with small_disk(cluster) as small:
        try:
            cluster.start()
            client = await Client.connect(*cluster.master_addr, info="replication test")
            try:
                files = await write_files(client, "", [30 << 20] * 8)
                await read_all(client, files)
                await wait_for("every chunk at 2 copies", lambda: all_at(client, files, 2))
                info = await client.cluster_info()
                [s] = [s for s in info["chunkservers"]
                       if s["address"].startswith(small.host + ":")]
                assert s["chunks"] < 8  # it could not take a copy of everything
            finally:
                await client.close()
        finally:
            cluster.stop()
    cluster.destroy()


# ---------------------------------------------------------------- recycled chunk files

async def test_deleted_chunks_files_are_reused_for_new_chunks(cluster_factory):
    """Deleted chunks leave emptied files in each disk's .free; new chunks take them (same
    inodes), and the data written into them reads back, also after a chunkserver restart."""
    cluster = cluster_factory("127.0.45", chunkservers=2, cs_options={"HDD_STOCK_FILES": 0})
    client = await Client.connect(*cluster.master_addr, info="recycling test")

    def free_files():
        return {os.stat(p).st_ino for d in cluster.chunkservers
                for p in glob.glob(os.path.join(d.data_dir, "hdd1", ".free", "*"))}

    try:
        await client.mkdir("/r")
        await client.setgoal("/r", 2)
        await client.settrashtime("/r", 0)
        await client.mkdir("/r/old")
        await client.mkdir("/r/new")
        old = await write_files(client, "/r/old", [5000] * 10, seed=3)
        old_ids = [c.chunk_id for p in old for c in await client.fileinfo(p)]
        for p in old:
            await client.unlink(p)
        await wait_for("the chunks deleted", lambda: _async(not any(
            chunk_files(cluster, d, cid) for d in cluster.chunkservers for cid in old_ids)))
        freed = free_files()
        assert len(freed) == 2 * len(old_ids)
        new = await write_files(client, "/r/new", [7000] * 10, seed=4)
        assert free_files() == set()  # every new copy took a recycled file
        reused = {os.stat(path).st_ino for p in new for c in await client.fileinfo(p)
                  for d in cluster.chunkservers for path in chunk_files(cluster, d, c.chunk_id)}
        assert reused == freed
        await read_all(client, new)
        cluster.restart(cluster.chunkservers[0])
        await wait_for("both chunkservers back", lambda: all_at(client, new, 2))
        await read_all(client, new)
    finally:
        await client.close()


async def test_chunk_written_without_pause_is_rebuilt_meanwhile(cluster_factory):
    """A goal-2 chunk that lost a copy while a writer appends and fsyncs to it without a
    pause still gets its second copy: the next write waits for a replication in flight
    instead of raising the version under it (which would make every copy attempt fail
    and leave the chunk endangered for as long as the writer goes on)."""
    cluster = cluster_factory("127.0.69")
    client = await Client.connect(*cluster.master_addr, info="replication test")
    try:
        await client.write_file("/log", b"first record\n")
        holders = (await valid_copies(client, "/log"))[0]
        assert len(holders) == 2
        victim = next(d for d in cluster.chunkservers if (d.host, 9422) in holders)
        f = await client.open("/log")
        written = bytearray(b"first record\n")
        stop = asyncio.Event()

        async def appender():
            i = 0
            while not stop.is_set():
                record = f"record {i:08d}\n".encode() * 64
                await f.write(len(written), record)
                await f.fsync()
                written.extend(record)
                i += 1

        cluster.kill(victim)
        writer = asyncio.create_task(appender())
        try:
            async def two_copies():
                assert not writer.done(), writer.exception()
                copies = (await valid_copies(client, "/log"))[0]
                return len(copies) == 2 and (victim.host, 9422) not in copies

            await wait_for("a second copy while the writer goes on", two_copies, timeout=120)
            assert not writer.done()
        finally:
            stop.set()
            await writer
            await f.close()
        assert await client.read_file("/log") == bytes(written)
        await wait_for("two copies after the writer stopped",
                       lambda: all_at(client, ["/log"], 2))
    finally:
        await client.close()
