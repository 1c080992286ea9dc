"""The meta mount: trash entries listed as files, restored by moving them to undel/,
purged by removing them."""

import asyncio
import os
import shutil
import subprocess
import sys
import time

import pytest

from elkfs.client import Client
from elkfs.testing.cluster import Cluster

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:  # pragma: no cover
    pytest.skip("FUSE is not available", allow_module_level=True)

NET = "127.0.65"


@pytest.fixture
def meta(tmp_path):
    cluster = Cluster(str(tmp_path / "cluster"), net=NET, chunkservers=2)
    cluster.start()
    mnt = tmp_path / "meta"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "elkfs.mount.meta", str(mnt),
                             "-H", cluster.master_host], stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "meta.log", "wb"))
    try:
        assert proc.stdout.readline().strip() == b"mounted"
        deadline = time.monotonic() + 20
        while not os.path.isdir(mnt / "trash"):
            assert time.monotonic() < deadline, "meta mount did not come up"
            time.sleep(0.05)
        yield cluster, str(mnt)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        cluster.destroy()


async def test_restore_from_meta_mount_and_purge(meta):
    cluster, mnt = meta
    client = await Client.connect(*cluster.master_addr, info="meta mount test")
    try:
        await client.makedirs("/docs/old")
        data = os.urandom(300_000)
        await client.write_file("/docs/old/report.txt", data)
        inode = (await client.stat("/docs/old/report.txt")).inode
        await client.unlink("/docs/old/report.txt")
        await client.rmdir("/docs/old")
        trash = os.path.join(mnt, "trash")
        name = "%08X|docs|old|report.txt" % inode

        def listing():
            return sorted(os.listdir(trash))

        assert await asyncio.to_thread(listing) == sorted([name, "undel"])
        st = await asyncio.to_thread(os.stat, os.path.join(trash, name))
        assert st.st_size == len(data)
        await asyncio.to_thread(os.rename, os.path.join(trash, name),
                                os.path.join(trash, "undel", name))
        assert await client.read_file("/docs/old/report.txt") == data
        assert await asyncio.to_thread(listing) == ["undel"]
        # Removing an entry purges the file.
        await client.write_file("/gone", b"x" * 1000)
        inode = (await client.stat("/gone")).inode
        await client.unlink("/gone")
        await asyncio.to_thread(os.unlink, os.path.join(trash, "%08X|gone" % inode))
        assert not await client.list_trash()
    finally:
        await client.close()
