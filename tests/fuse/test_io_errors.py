"""Errors as documented (docs/mount.md): with every chunkserver down, reads and writes
fail with EIO once the `mfsioretries` window has passed (one window, not one per retry
of the kernel's), and "no chunkserver" is EIO, not ENOSPC; after a real ENOSPC the mount
shows what the master holds, not what it had cached."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile
import time

import pytest

from elkfs.client import Client

from ..integration.small_disk import small_disk
from .mounted import MountedCluster

WINDOW_S = 10  # mfsioretries: what these tests are about


@pytest.fixture
def base():
    path = tempfile.mkdtemp(prefix="elkfs-ioerrors-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_no_chunkserver_is_eio_after_one_window(base):
    with MountedCluster(base, "127.0.152", chunkservers=1,
                        mount_options=f"mfsioretries={WINDOW_S}") as mc:
        # written through the library: the mount has none of its pages
        client = await Client.connect(*mc.cluster.master_addr, info="io errors")
        try:
            await client.write_file("/a", os.urandom(1 << 20))
        finally:
            await client.close()
        mc.cluster.stop_daemon(mc.cluster.chunkservers[0])

        started = time.monotonic()
        with pytest.raises(OSError) as e:
            with open(os.path.join(mc.mnt, "a"), "rb") as f:
                f.read()
        took = time.monotonic() - started
        assert e.value.errno == errno.EIO
        # one window (the kernel's second try of a failed read-ahead fails at once)
        assert took < WINDOW_S * 1.6, f"read failed after {took:.1f} s"

        started = time.monotonic()
        with pytest.raises(OSError) as e:
            with open(os.path.join(mc.mnt, "b"), "wb") as f:
                f.write(os.urandom(1 << 20))
        took = time.monotonic() - started
        assert e.value.errno == errno.EIO, "no chunkserver is not ENOSPC"
        assert took < WINDOW_S * 1.6, f"write failed after {took:.1f} s"
        # the file keeps what the master holds: nothing
        assert os.stat(os.path.join(mc.mnt, "b")).st_size == 0


async def test_after_enospc_the_mount_shows_what_the_master_holds(base):
    mc = MountedCluster(base, "127.0.153", chunkservers=1, cs_options={"HDD_TEST_SPEED": 0})
    os.makedirs(mc.mnt)
    with small_disk(mc.cluster):
        try:
            mc.cluster.start()
            mc.mount()
            client = await Client.connect(*mc.cluster.master_addr, info="enospc")
            try:
                await client.setgoal("/", 1)
                full = None
                # Files of 30 MiB: the master lets a chunk be made while the server has
                # more than 64 MiB free as it last reported (every few seconds), so one
                # runs out in the middle of a chunk.
                for i in range(6):
                    path = os.path.join(mc.mnt, f"f{i}")
                    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
                    try:
                        for _ in range(30):
                            os.write(fd, os.urandom(1 << 20))
                        os.close(fd)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
                        full = f"f{i}"
                        break
                assert full is not None, "the 100 MiB disk never filled"
                # Still open: the size and data shown are the master's, not what the
                # failed writes left in the mount's and the kernel's caches.
                held = await client.stat("/" + full)
                assert os.fstat(fd).st_size == held.size
                assert os.stat(os.path.join(mc.mnt, full)).st_size == held.size
                shown = os.pread(fd, held.size + (8 << 20), 0)
                assert shown == await client.read_file("/" + full)
                try:
                    os.close(fd)
                except OSError:
                    pass
            finally:
                await client.close()
        finally:
            mc.stop()
