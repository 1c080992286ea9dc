"""Exports with HA: each master reads its own mfsexports.cfg, and a client is checked by
whichever master leads when it registers, so after a failover the new leader's file is
the one in force (docs/security.md: keep the files identical)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile

from elkfs.client import Client
from elkfs.proto.errors import FsError
from elkfs.testing.cluster import Cluster, run_sync

NET = "127.0.88"


def test_each_master_applies_its_own_exports():
    base = tempfile.mkdtemp(prefix="elkfs-ha-exports-")
    cluster = Cluster(os.path.join(base, "c"), net=NET, masters=2, chunkservers=3, ha=True)
    # Deliberately different files: goal 3 is refused by one, allowed by the other.
    for d, maxgoal in zip(cluster.masters, (2, 9)):
        os.makedirs(d.data_dir)
        with open(os.path.join(d.data_dir, "mfsexports.cfg"), "w") as f:
            f.write(f"*  /  rw,alldirs,admin,maproot=0,maxgoal={maxgoal}\n")
    cluster.start()
    try:
        first = cluster.wait_leader(30)
        allowed = {cluster.masters[0].name: False, cluster.masters[1].name: True}

        async def goal_three(name: str) -> bool:
            client = await Client.connect(**cluster.client_args(), info="ha exports",
                                          retry_s=60.0)
            try:
                await client.mkdir(f"/{name}")
                try:
                    await client.setgoal(f"/{name}", 3)
                except FsError as e:
                    assert e.status == errno.EPERM, e
                    return False
                return True
            finally:
                await client.close()

        assert run_sync(lambda: goal_three("before")) == allowed[first.name]
        cluster.kill(first)
        second = cluster.wait_leader(30, other_than=first)
        assert run_sync(lambda: goal_three("after")) == allowed[second.name]
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
