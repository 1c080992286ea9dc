"""ENOSPC when every chunkserver is full: at once, not after the client's retry window
(which is for chunkservers that are away, not for a cluster that has no room)."""

from __future__ import annotations

import errno
import os
import time

import pytest

from elkfs.client import Client
from elkfs.proto.errors import FsError
from elkfs.testing.cluster import Cluster

from .small_disk import small_disk


async def test_full_cluster_gives_enospc_quickly(tmp_path):
    cluster = Cluster(str(tmp_path / "cluster"), net="127.0.44", chunkservers=1,
                      cs_options={"HDD_TEST_SPEED": 0})
    with small_disk(cluster):
        try:
            cluster.start()
            client = await Client.connect(*cluster.master_addr, info="enospc test")
            try:
                await client.setgoal("/", 1)
                first = os.urandom(60 << 20)
                await client.write_file("/first", first)  # fits
                started = time.monotonic()
                with pytest.raises(FsError) as e:
                    for i in range(3):  # the chunkserver reports its space every few seconds
                        await client.write_file(f"/more{i}", os.urandom(60 << 20))
                assert e.value.errno == errno.ENOSPC, e.value
                assert time.monotonic() - started < 20  # not the 30 s retry window
                assert await client.read_file("/first") == first  # nothing lost
            finally:
                await client.close()
        finally:
            cluster.stop()
    cluster.destroy()
