#!/usr/bin/env python3
"""Metadata operations per second with many concurrent clients through the client library:
creates (each client in its own directory) and getattrs, with 1, 8 and 50 clients, on one
master and on three masters in HA.

Each client is a session of its own with one request in flight at a time (as a process
doing system calls one after another); the clients are spread over a few worker processes
so that the clients' own CPU is not what is measured alone. Printed: total ops/s and the
slowest client's share of the fastest's (fairness).

    /work/bin/nsrun <ns> .venv/bin/python bench/manyclients.py [--seconds S] [--clients 1,8,50] [--ha]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import stat
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from elkfs.client.client import Client  # noqa: E402
from elkfs.master.namespace import ROOT  # noqa: E402
from elkfs.proto import messages as m  # noqa: E402
from elkfs.testing.cluster import Cluster  # noqa: E402

WORKERS_MAX = 4


async def _clients(client_args: dict, first: int, count: int, run: str, phase: str,
                   seconds: float) -> list[int]:
    clients = [await Client.connect(**client_args, info=f"manyclients {first + i}")
               for i in range(count)]
    try:
        dirs = []
        for i, c in enumerate(clients):
            name = b"%s-c%03d" % (run.encode(), first + i)
            try:
                dirs.append((await c.op(m.Mkdir(ROOT, name, 0o755, 0, 0))).attr.inode)
            except Exception:
                dirs.append((await c.lookup(ROOT, name)).inode)
        deadline = time.monotonic() + seconds

        async def work(c: Client, directory: int) -> int:
            done = 0
            while time.monotonic() < deadline:
                if phase == "create":
                    await c.op(m.Mknod(directory, b"f%07d" % done, stat.S_IFREG | 0o644, 0, 0))
                else:
                    await c.op(m.GetAttr(directory))
                done += 1
            return done

        return list(await asyncio.gather(*(work(c, d) for c, d in zip(clients, dirs))))
    finally:
        for c in clients:
            await c.close()


def _worker(args) -> list[int]:
    return asyncio.run(_clients(*args))


def measure(client_args: dict, clients: int, run: str, phase: str, seconds: float):
    workers = min(clients, WORKERS_MAX)
    shares = [clients // workers + (1 if i < clients % workers else 0) for i in range(workers)]
    starts = [sum(shares[:i]) for i in range(workers)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        per_client = [n for part in pool.map(_worker, [
            (client_args, s, k, run, phase, seconds) for s, k in zip(starts, shares)])
            for n in part]
    total = sum(per_client) / seconds
    fairness = min(per_client) / max(per_client) if max(per_client) else 0.0
    return total, fairness


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", default="1,8,50")
    ap.add_argument("--ha", action="store_true", help="three masters in HA")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-manyclients-")
    cluster = (Cluster(base, "127.0.71", masters=3, chunkservers=1, ha=True) if a.ha
               else Cluster(base, "127.0.70", chunkservers=1))
    try:
        cluster.start()
        if a.ha:
            cluster.wait_leader(30)
        client_args = cluster.client_args()
        print(f"{'3 masters, HA' if a.ha else 'one master'}; {os.cpu_count()} CPUs, load "
              f"{os.getloadavg()[0]:.1f}; {a.seconds:.0f} s per figure", flush=True)
        print(f"{'clients':>8} {'creates/s':>10} {'fair':>5} {'getattr/s':>10} {'fair':>5}",
              flush=True)
        for n in (int(x) for x in a.clients.split(",")):
            creates, cf = measure(client_args, n, f"r{n}", "create", a.seconds)
            getattrs, gf = measure(client_args, n, f"r{n}", "getattr", a.seconds)
            print(f"{n:>8} {creates:>10.0f} {cf:>5.2f} {getattrs:>10.0f} {gf:>5.2f}",
                  flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
