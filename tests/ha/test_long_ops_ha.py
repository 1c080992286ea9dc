"""A snapshot done in steps (elkfs/master/longops.py) with three HA masters: the step
records replicate like any change, so after the leader is killed the new leader holds
the whole copy, and a snapshot cut short by the kill is freed by the new leader."""

from __future__ import annotations

import asyncio
import json

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.testing.bigtree import count_entries, make_big_dir
from elkfs.testing.faults import converged, wait_until

NET = "127.0.86"
ENTRIES = 6000  # over the one-step budget (2,000): done in steps


def test_snapshot_in_steps_survives_a_failover(ha_cluster):
    c = ha_cluster.cluster

    async def run():
        client = await Client.connect(**c.client_args(), info="ha long ops", retry_s=120)
        try:
            big = await make_big_dir(client, "/big", ENTRIES)
            dst = await client.mkdir("/snaps")
            top = (await client.op(m.Snapshot(big, dst.inode, b"one", client.uid,
                                              client.gid))).attr
            assert await count_entries(client, top.inode) == ENTRIES
            old = c.leader()
            # Cut the next one short: kill the leader while it runs.
            call = asyncio.ensure_future(client.op(m.Snapshot(big, dst.inode, b"two",
                                                              client.uid, client.gid)))
            await asyncio.sleep(0.2)
            c.kill(old)
            two = (await call).attr  # resent to the new leader
            assert c.leader() is not old
            assert await count_entries(client, two.inode) == ENTRIES
            assert await count_entries(client, (await client.stat("/snaps/one")).inode) \
                == ENTRIES
            # Nothing else is left: root, /big and its entries, /snaps, two copies.
            expected = 1 + 1 + ENTRIES + 1 + 2 * (ENTRIES + 1)
            for _ in range(300):
                inodes = json.loads((await client.op(m.ClusterInfo())).text)["inodes"]
                if inodes == expected:
                    break
                await asyncio.sleep(0.2)
            assert inodes == expected
            return old
        finally:
            await client.close()

    old = asyncio.run(run())
    c.start_daemon(old)
    wait_until(lambda: converged(c), 60, "masters in sync")
    assert all(c.status(d)["metadata_version"] == c.status(c.leader())["metadata_version"]
               for d in c.masters)
