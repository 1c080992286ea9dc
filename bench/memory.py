#!/usr/bin/env python3
"""Bytes of master memory per file: builds a namespace of N files (in directories of
1000, each file with one chunk) through the real state machine and measures the
process's resident memory before and after.

    .venv/bin/python bench/memory.py [N]
"""

from __future__ import annotations

import gc
import os
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elkfs.master.namespace import ROOT, Namespace  # noqa: E402
from elkfs.master.records import Record  # noqa: E402
from elkfs.proto import messages as m  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    ns = Namespace()
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    version = 0

    def apply(op):
        nonlocal version
        version += 1
        return ns.apply(Record(version, version, b"", 0, op))

    directory = ROOT
    for i in range(n):
        if i % 1000 == 0:
            directory = apply(m.Mkdir(ROOT, b"dir%07d" % (i // 1000), 0o755, 0, 0)).attr.inode
        inode = apply(m.Mknod(directory, b"file-%07d.dat" % i, stat.S_IFREG | 0o644, 1000, 1000)).attr.inode
        apply(m.WriteChunk(inode, 0))
        apply(m.WriteChunkEnd(inode, 0, 0, 12345))
    elapsed = time.perf_counter() - started
    gc.collect()
    used = rss_bytes() - before
    print(f"{n} files (+{n // 1000} dirs), one chunk each: {used / 1e6:.0f} MB resident, "
          f"{used / n:.0f} bytes per file (name, node, chunk, directory entry); "
          f"{3 * n / elapsed:.0f} records applied per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
