#!/usr/bin/env python3
"""Rebuild speed after losing a chunkserver.

Starts a local cluster (1 master, 4 chunkservers on 127.0.69.x), writes FILES files of
SIZE MiB with goal 2, kills one chunkserver with SIGKILL and measures:

- how long the cluster has endangered chunks (one copy left), from the kill;
- the rebuild itself, from the moment the master gives up on the server
  (REPLICATIONS_DELAY_DISCONNECT: 0 s by default) until no chunk is under its goal:
  MB/s and chunks/s of copies made.

Runs once with the default limits (CHUNKS_WRITE_REP_LIMIT 2, CHUNKS_READ_REP_LIMIT 10)
and once with raised ones.

    .venv/bin/python bench/rebuild.py [--files 48] [--size-mib 16]
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
from elkfs.testing.cluster import Cluster  # noqa: E402

NET = "127.0.69"


async def measure(cluster: Cluster, files: int, size: int, label: str) -> dict:
    client = await Client.connect(*cluster.master_addr, info="rebuild bench")
    try:
        await client.mkdir("/bench")
        await client.setgoal("/bench", 2)
        block = os.urandom(size)
        for i in range(files):
            await client.write_file(f"/bench/f{i}", block)
        victim = cluster.chunkservers[0]
        lost_chunks = lost_bytes = 0
        for i in range(files):
            for chunk in await client.fileinfo(f"/bench/f{i}"):
                if any(c.addr[0] == victim.host for c in chunk.copies):
                    lost_chunks += 1
                    lost_bytes += size
        info = await client.cluster_info()
        done_before = info["replications_done"]
        killed = time.monotonic()
        cluster.kill(victim)
        forgotten = endangered_until = None
        while True:
            info = await client.cluster_info()
            now = time.monotonic()
            me = [s for s in info["chunkservers"] if s["address"].startswith(victim.host + ":")]
            if forgotten is None and me and me[0]["lost"]:
                forgotten = now
            if forgotten is not None and endangered_until is None \
                    and info["endangered_chunks"] == 0 and info["replications_done"] > done_before:
                endangered_until = now
            if (forgotten is not None and info["undergoal_chunks"] == 0
                    and info["replications_done"] - done_before >= lost_chunks):
                finished = now
                break
            if now - killed > 600:
                raise TimeoutError("rebuild did not finish in 10 minutes")
            await asyncio.sleep(0.05)
        took = finished - forgotten
        result = {
            "label": label, "chunks": lost_chunks, "mb": lost_bytes / 1e6,
            "rebuild_s": took, "mb_s": lost_bytes / 1e6 / took, "chunks_s": lost_chunks / took,
            "endangered_s": (endangered_until or finished) - killed,
        }
        print(f"{label:>26}: {lost_chunks} chunks, {lost_bytes / 1e6:.0f} MB rebuilt in "
              f"{took:.2f} s = {result['mb_s']:.0f} MB/s, {result['chunks_s']:.1f} chunks/s; "
              f"endangered chunks for {result['endangered_s']:.2f} s after the kill "
              f"(with the default disconnect delay of 0 s)", flush=True)
        return result
    finally:
        await client.close()


def run_one(files: int, size: int, label: str, limits: dict) -> dict:
    base = tempfile.mkdtemp(prefix="elkfs-rebuild-")
    cluster = Cluster(base, net=NET, chunkservers=4,
                      master_options=limits)  # the shipped defaults but for the limits
    try:
        cluster.start()
        return asyncio.run(measure(cluster, files, size, label))
    finally:
        cluster.destroy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--size-mib", type=int, default=16)
    args = ap.parse_args()
    size = args.size_mib << 20
    print(f"{args.files} files of {args.size_mib} MiB, goal 2, 4 chunkservers; one killed")
    run_one(args.files, size, "default limits (2 / 10)", {})
    run_one(args.files, size, "raised limits (8 / 20)",
            {"CHUNKS_WRITE_REP_LIMIT": 8, "CHUNKS_READ_REP_LIMIT": 20})


if __name__ == "__main__":
    main()
