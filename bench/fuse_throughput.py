#!/usr/bin/env python3
"""Throughput through the FUSE mount: `dd bs=1M conv=fsync` write and a cold read.

    .venv/bin/python bench/fuse_throughput.py [--size-mib 1024] [--goal 2] [--chunkservers 3]
                                              [-o MOUNT_OPTIONS]

Starts its own cluster + mount on 127.0.40.x, writes SIZE MiB with dd (conv=fsync: the
time includes getting every byte onto the chunkservers' disks), remounts and drops the
page cache, then reads the file back with dd. Prints MB/s (dd's own figures).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.fuse.mounted import MountedCluster  # noqa: E402


def dd(*args: str) -> str:
    r = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    line = r.stderr.strip().splitlines()[-1]
    m = re.search(r"copied, ([0-9.]+) s, ([0-9.]+ [kMG]?B/s)", line)
    return f"{m.group(2):>10}  ({m.group(1)} s)" if m else line


def dd_mb_s(*args: str) -> float:
    """dd's bytes over its seconds, in MB/s."""
    r = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.]+) s", r.stderr, re.M)
    return int(m.group(1)) / float(m.group(2)) / 1e6


def write_then_cold_read(path: str, size_mib: int, remount) -> tuple[float, float]:
    """dd `size_mib` MiB into `path` (bs=1M conv=fsync), remount, drop the page cache and
    read it back: (write MB/s, read MB/s)."""
    if os.path.exists(path):
        os.unlink(path)
    w = dd_mb_s("if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mib}", "conv=fsync")
    remount()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    r = dd_mb_s(f"if={path}", "of=/dev/null", "bs=1M")
    os.unlink(path)
    return w, r


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--goal", type=int, default=2)
    p.add_argument("--chunkservers", type=int, default=3)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("-o", dest="mount_options", default="", help="mount options, as mfsmount -o")
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-bench-")
    try:
        with MountedCluster(base, "127.0.40", chunkservers=a.chunkservers, goal=a.goal,
                            mount_options=a.mount_options) as mc:
            path = os.path.join(mc.mnt, "ddfile")
            print(f"ElkFS mount, goal {a.goal}, {a.chunkservers} chunkservers, {a.size_mib} MiB, "
                  f"{os.cpu_count()} CPUs" + (f", -o {a.mount_options}" if a.mount_options else ""))
            for run in range(1, a.runs + 1):
                if os.path.exists(path):
                    os.unlink(path)
                w = dd("if=/dev/zero", f"of={path}", "bs=1M", f"count={a.size_mib}", "conv=fsync")
                mc.remount()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3")
                r = dd(f"if={path}", "of=/dev/null", "bs=1M")
                print(f" run {run}: write (conv=fsync) {w}   cold read {r}")
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the 1 GiB file's chunks
    return 0


if __name__ == "__main__":
    sys.exit(main())
