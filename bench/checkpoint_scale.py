#!/usr/bin/env python3
"""Checkpoint and start-up of a large namespace, as the master does them.

Builds N files (directories of 1000, one chunk each) through a real `MetadataStore`
(journaled), then:
  - checkpoint: forks and writes from the child as `MetadataStore.checkpoint` does; the
    figure is its time and the child's private (copied or new) memory at its end, against
    the parent's resident size: the extra memory a checkpoint costs the machine;
  - start-up: journals 10 % more changes after the checkpoint, then a fresh process loads
    the checkpoint and replays the journal tail (`MetadataStore.load`): time, and its
    resident size at the end and at its peak.

    .venv/bin/python bench/checkpoint_scale.py [N]
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elkfs.master import checkpoint as ckpt  # noqa: E402
from elkfs.master.namespace import ROOT  # noqa: E402
from elkfs.master.store import MetadataStore  # noqa: E402
from elkfs.proto import messages as m  # noqa: E402


def status_kb(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def private_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith(("Private_Dirty:", "Private_Clean:")))


def build(store: MetadataStore, first: int, count: int) -> None:
    ts = time.time_ns()
    for i in range(first, first + count):
        if i % 1000 == 0:
            d = store.change(m.Mkdir(ROOT, b"dir%07d" % (i // 1000), 0o755, 1000, 1000), ts)
            directory = d[0].attr.inode
        elif i == first:
            directory = store.ns.lookup(ROOT, b"dir%07d" % (i // 1000)).inode
        inode = store.change(m.Mknod(directory, b"file-%07d.dat" % i, stat.S_IFREG | 0o644,
                                     1000, 1000), ts)[0].attr.inode
        store.change(m.WriteChunk(inode, 0), ts)
        store.change(m.WriteChunkEnd(inode, 0, 0, 12345), ts)
        if i % 10_000 == 0:
            store.flush()
    store.flush()


def fork_checkpoint(store: MetadataStore) -> tuple[float, int]:
    """(seconds, private KiB of the child at its end), as MetadataStore.checkpoint."""
    store.flush()
    store.journal.rotate()
    path = os.path.join(store.data_dir, ckpt.checkpoint_name(store.ns.version))
    r, w = os.pipe()
    started = time.monotonic()
    gc.freeze()  # and not unfrozen after, as MetadataStore.checkpoint
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ckpt.write(store.ns, path)
            os.write(w, str(private_kb()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    elapsed = time.monotonic() - started
    child_kb = int(os.read(r, 100) or b"0")
    os.close(r)
    if status:
        raise SystemExit(f"checkpoint child failed ({status})")
    return elapsed, child_kb


LOAD = """
import logging, sys, time
sys.path.insert(0, %r)
logging.basicConfig(level=logging.INFO, format="  %%(message)s")  # its two parts' times
from elkfs.master.store import MetadataStore
started, cpu = time.monotonic(), time.process_time()
s = MetadataStore(%r)
s.load()
took, cpu = time.monotonic() - started, time.process_time() - cpu
rss = hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"): rss = int(line.split()[1])
    if line.startswith("VmHWM:"): hwm = int(line.split()[1])
print(took, len(s.ns.nodes), rss, hwm, cpu)
"""


async def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    data_dir = tempfile.mkdtemp(prefix="elkfs-ckpt-bench-")
    try:
        store = MetadataStore(data_dir)
        store.load()
        started = time.monotonic()
        build(store, 0, n)
        gc.collect()
        print(f"built {n} files in {time.monotonic() - started:.0f} s; master RSS "
              f"{status_kb('VmRSS') / 1024:.0f} MiB", flush=True)
        rss_kb = status_kb("VmRSS")
        await asyncio.sleep(0)
        took, child_kb = fork_checkpoint(store)
        size = max(os.path.getsize(p) for _, p in ckpt.list_checkpoints(data_dir))
        print(f"checkpoint: {took:.1f} s, {size / 1e6:.0f} MB on disk; the writing child's "
              f"private memory {child_kb / 1024:.0f} MiB = {100 * child_kb / rss_kb:.0f} % of "
              f"the master's {rss_kb / 1024:.0f} MiB", flush=True)
        build(store, n, n // 10)  # a journal tail to replay
        await asyncio.sleep(0)  # the flushes `change` scheduled
        store.close(checkpoint=False)
        out = subprocess.run([sys.executable, "-c", LOAD % (
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), data_dir)],
            check=True, capture_output=True, text=True)
        for line in out.stderr.splitlines():
            if "loaded checkpoint" in line or "replayed" in line:
                print(line, flush=True)
        out = out.stdout.split()
        took, nodes, rss, hwm = float(out[0]), int(out[1]), int(out[2]), int(out[3])
        cpu = float(out[4])
        print(f"start-up (checkpoint of {n} files + journal of {3 * (n // 10)} records): "
              f"{took:.1f} s ({cpu:.1f} s of CPU) for {nodes} inodes; RSS {rss / 1024:.0f} MiB, peak "
              f"{hwm / 1024:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
