"""Exports with HA: each master reads its own mfsexports.cfg, and a client is checked by
whichever master leads when it registers, so after a failover the new leader's file is
the one in force (docs/security.md: keep the files identical)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile

from elkfs.client import Client
from elkfs.testing.cluster import Cluster, run_sync

NET = "127.0.88"


def test_each_master_applies_its_own_exports():
    base = tempfile.mkdtemp(prefix="elkfs-ha-exports-")
    cluster = Cluster(os.path.join(base, "c"), net=NET, masters=2, chunkservers=3, ha=True)
    # Deliberately different files: root is mapped to nobody by one, kept by the other.
    for d, maproot in zip(cluster.masters, ("nobody", "0")):
        os.makedirs(d.data_dir)
        with open(os.path.join(d.data_dir, "mfsexports.cfg"), "w") as f:
            f.write(f"*  /  rw,alldirs,admin,maproot={maproot}\n")
    nobody = pwd.getpwnam("nobody").pw_uid
    cluster.start()
    try:
        first = cluster.wait_leader(30)
        expected = {cluster.masters[0].name: nobody, cluster.masters[1].name: 0}

        async def create(name: str) -> int:
            client = await Client.connect(**cluster.client_args(), info="ha exports",
                                          retry_s=60.0)
            try:
                client.uid = client.gid = 0
                return (await client.mkdir(f"/{name}")).uid
            finally:
                await client.close()

        assert run_sync(lambda: create("before")) == expected[first.name]
        cluster.kill(first)
        second = cluster.wait_leader(30, other_than=first)
        assert run_sync(lambda: create("after")) == expected[second.name]
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
