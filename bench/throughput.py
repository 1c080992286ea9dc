#!/usr/bin/env python3
"""Sequential write and read throughput through the client library.

Starts a local cluster (1 master, 3 chunkservers on 127.0.7.x), writes a file of SIZE
(default 1 GiB) with goal 2 in 1 MiB application writes, closes it (data acknowledged by
both copies, length journaled), then reads it back in 8 MiB reads (three in flight) and checks it.

    .venv/bin/python bench/throughput.py [--size-mib 1024] [--goal 2] [--runs 2] [--auth off]

`--auth off` runs the cluster without AUTH_CODE (no chunk tokens) and with the CRCs
checked by the chunkservers instead of the client: the figures without the security of
docs/security.md, to compare with the default (`--auth on`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cputime import CpuMeter  # noqa: E402
from elkfs.client import Client  # noqa: E402
from elkfs.testing.cluster import Cluster  # noqa: E402


async def run(cluster: Cluster, size: int, goal: int, runs: int) -> None:
    client = await Client.connect(*cluster.master_addr, info="throughput bench")
    # CPU seconds of the daemons and this client per GiB moved: steadier than MB/s on a
    # machine shared with other work.
    meter = CpuMeter([d.pid() for d in cluster.masters + cluster.chunkservers] + [os.getpid()])
    block = os.urandom(1 << 20)
    await client.mkdir("/bench")
    await client.setgoal("/bench", goal)
    for run_no in range(runs):
        path = f"/bench/file{run_no}"
        start, cpu0 = time.perf_counter(), meter.seconds()
        f = await client.create(path)
        for i in range(size >> 20):
            await f.write(i << 20, block)
        await f.close()
        write_s, write_cpu = time.perf_counter() - start, meter.seconds() - cpu0
        os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
        start, cpu0 = time.perf_counter(), meter.seconds()
        f = await client.open(path)
        ok = True
        read_bytes = 0
        step = 8 << 20
        # An async application keeps a few reads in flight (its own read-ahead).
        ahead = [asyncio.ensure_future(f.read(off, step)) for off in range(0, min(size, 3 * step), step)]
        next_off = 3 * step
        while ahead:
            data = await ahead.pop(0)
            if next_off < size:
                ahead.append(asyncio.ensure_future(f.read(next_off, step)))
                next_off += step
            # Every MiB of the file is `block`: comparing is a memcmp, cheap next to hashing.
            ok = ok and all(data[i:i + (1 << 20)] == block for i in range(0, len(data), 1 << 20))
            read_bytes += len(data)
        await f.close()
        read_s, read_cpu = time.perf_counter() - start, meter.seconds() - cpu0
        ok = ok and read_bytes == size
        gib = size / (1 << 30)
        print(f"run {run_no + 1}: write {size / write_s / 1e6:7.1f} MB/s "
              f"({write_cpu / gib:5.2f} CPU s/GiB)   "
              f"read {size / read_s / 1e6:7.1f} MB/s ({read_cpu / gib:5.2f} CPU s/GiB, "
              f"cold page cache)   {'verified' if ok else 'DATA MISMATCH'}", flush=True)
        await client.unlink(path)
    await client.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--goal", type=int, default=2)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--chunkservers", type=int, default=3)
    p.add_argument("--auth", choices=("on", "off"), default="on",
                   help="off: no AUTH_CODE, no tokens, CRCs checked by the chunkservers only")
    args = p.parse_args()
    if args.auth == "off":
        from elkfs.client import chunkio

        chunkio.END_TO_END_CRC = False
    with tempfile.TemporaryDirectory(prefix="elkfs-bench-", dir=os.environ.get("BENCH_DIR")) as base:
        cluster = Cluster(base, net="127.0.7", chunkservers=args.chunkservers,
                          auth_code=None if args.auth == "on" else "")
        cluster.start()
        try:
            print(f"{args.size_mib} MiB file, goal {args.goal}, {args.chunkservers} chunkservers, "
                  f"{os.cpu_count()} cores, "
                  + ("AUTH_CODE, chunk tokens, CRCs checked by the client" if args.auth == "on"
                     else "no AUTH_CODE, no tokens, CRCs checked by the chunkservers"))
            asyncio.run(run(cluster, args.size_mib << 20, args.goal, args.runs))
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
