#!/usr/bin/env python3
"""Long operations on a huge directory while another client keeps asking.

Starts a local cluster (1 master, 1 chunkserver on 127.0.71.x), makes a directory of
ENTRIES empty files through the client library, then runs, one after another, a
snapshot of it, a recursive setgoal, mfsdirinfo's DirStats and a recursive settrashtime,
while a second client does GetAttr after GetAttr. Prints, for each operation, how long it
took, the worst GetAttr latency meanwhile (how long the master was held), how many
GetAttrs were answered, and the master's resident memory before and after.

With `--as-user UID` the directory is made by, and the operations run as, that user (not
root): the master then also checks, in steps, that the user may have every entry (its
own files for setgoal/settrashtime, readable ones for the snapshot) before it changes or
copies anything; the figures show what that walk costs.

    .venv/bin/python bench/bigsnapshot.py [--entries 1000000] [--net 127.0.71] [--as-user 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elkfs.client import Client  # noqa: E402
from elkfs.proto import messages as m  # noqa: E402
from elkfs.testing.bigtree import LatencyWatch, count_entries, make_big_dir, rss_of  # noqa: E402
from elkfs.testing.cluster import Cluster  # noqa: E402

NET = "127.0.71"


async def run(cluster: Cluster, entries: int, uid: int) -> None:
    pid = cluster.masters[0].pid()
    if uid:
        root = await Client.connect(*cluster.master_addr, info="bigsnapshot root")
        for path in ("/big", "/snaps"):  # the user's, in root's directory
            await root.mkdir(path)
            await root.chown(path, uid, uid)
        await root.close()
    worker = await Client.connect(*cluster.master_addr, info="bigsnapshot bench", uid=uid,
                                  gid=uid)
    asker = await Client.connect(*cluster.master_addr, info="bigsnapshot asker")
    try:
        started = time.perf_counter()
        inode = await make_big_dir(worker, "/big", entries, exists=bool(uid))
        print(f"made /big with {entries} entries in {time.perf_counter() - started:.1f}s; "
              f"master RSS {rss_of(pid) / 2**20:.0f} MiB")
        root = await worker.stat("/")
        dst = (await worker.stat("/snaps") if uid else await worker.mkdir("/snaps")).inode
        ops = [
            ("snapshot", m.Snapshot(inode, dst, b"big", worker.uid, worker.gid)),
            ("setgoal -r", m.SetGoal(inode, 3, True)),
            ("dirinfo", m.DirStats(inode)),
            ("settrashtime -r", m.SetTrashTime(inode, 3600, True)),
        ]
        print(f"as uid {uid}:")
        print(f"{'operation':16} {'took s':>8} {'worst stat ms':>14} {'stats':>7} "
              f"{'RSS before MiB':>15} {'after MiB':>10}")
        for name, op in ops:
            before = rss_of(pid)
            with LatencyWatch(asker, root.inode) as watch:
                await asyncio.sleep(0.05)
                started = time.perf_counter()
                await worker.op(op)
                took = time.perf_counter() - started
            print(f"{name:16} {took:8.2f} {watch.worst_s * 1000:14.1f} {watch.count:7d} "
                  f"{before / 2**20:15.0f} {rss_of(pid) / 2**20:10.0f}", flush=True)
        copy = (await worker.stat("/snaps/big")).inode
        print(f"snapshot holds {await count_entries(worker, copy)} entries")
    finally:
        await asker.close()
        await worker.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--net", default=NET, help="loopback /24 to run the cluster on")
    p.add_argument("--as-user", type=int, default=0, metavar="UID",
                   help="make the directory and run the operations as this user (and "
                        "group), not root: the master checks the tree in steps first")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="elkfs-bigsnap-") as base:
        cluster = Cluster(base, net=a.net, chunkservers=1)
        cluster.start()
        try:
            asyncio.run(run(cluster, a.entries, a.as_user))
        finally:
            log = os.path.join(cluster.masters[0].data_dir, "mfsmaster.log")
            with open(log) as f:
                for line in f:
                    if any(k in line for k in ("snapshot of inode", "garbage collection",
                                               "entries checked", "WARNING", "ERROR")):
                        print("master log:", line.rstrip())
            cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
