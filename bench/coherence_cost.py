#!/usr/bin/env python3
"""What coherence costs: the new default mount (no write-back cache, opens that ask the
master, recalls) against the old one (`mfswritecache=1`), on one cluster in the same
minutes, and global lock/unlock pairs per second across two clients.

    .venv/bin/python bench/coherence_cost.py [--n 2000] [--runs 2] [--dd-mib 1024]

Prints three tables: metabench (/work/shared/bench/metabench.py) ops/s, a `dd` write
(bs=1M, conv=fsync) and read of one file in MB/s, and flock and fcntl lock+unlock pairs
per second from one process on each of two mounts taking turns on one file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.metabench_compare import DEFAULT, run, wait_stock  # noqa: E402
from tests.fuse.lockers import start_mount, stop_mount  # noqa: E402
from tests.fuse.mounted import MountedCluster  # noqa: E402

MODES = (("new default", ""), ("old (mfswritecache=1)", "mfswritecache=1"))

LOCKLOOP = r'''
import fcntl, os, struct, sys, time
path, how, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
fd = os.open(path, os.O_RDWR)
pairs = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    if how == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_UNLCK, 0, 0, 0, 0))
    pairs += 1
print(pairs)
'''


def dd(mnt: str, mib: int) -> tuple[float, float]:
    path = os.path.join(mnt, "dd.bin")
    started = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}",
                    "conv=fsync"], check=True, capture_output=True)
    write = mib / (time.monotonic() - started)
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], capture_output=True)
    started = time.monotonic()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True,
                   capture_output=True)
    read = mib / (time.monotonic() - started)
    os.unlink(path)
    return write * 1.048576, read * 1.048576  # MB/s


def lock_pairs(paths: list[str], how: str, seconds: float) -> float:
    procs = [subprocess.Popen([sys.executable, "-c", LOCKLOOP, p, how, str(seconds)],
                              stdout=subprocess.PIPE, text=True) for p in paths]
    total = sum(int(p.communicate(timeout=seconds + 60)[0]) for p in procs)
    return total / seconds


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--dd-mib", type=int, default=1024)
    p.add_argument("--lock-seconds", type=float, default=5.0)
    p.add_argument("--metabench", default=DEFAULT)
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-coherence-")
    os.chmod(base, 0o755)
    meta: dict[str, dict[str, float]] = {name: {} for name, _ in MODES}
    io: dict[str, tuple[float, float]] = {}
    locks: dict[str, float] = {}
    try:
        with MountedCluster(base, "127.0.64", goal=2, chunkservers=2) as mc:
            wait_stock(mc.cluster)
            for _ in range(a.runs):
                for name, opts in MODES:
                    mc.mount_options = opts
                    mc.remount()
                    for k, v in run(a.metabench, mc.mnt, a.n).items():
                        meta[name][k] = max(meta[name].get(k, 0.0), v)
                    w, r = dd(mc.mnt, a.dd_mib)
                    old = io.get(name, (0.0, 0.0))
                    io[name] = (max(old[0], w), max(old[1], r))
            mc.mount_options = ""
            mc.remount()
            mnt_b, proc_b = start_mount(mc, "mnt_b")
            try:
                with open(os.path.join(mc.mnt, "lockfile"), "wb"):
                    pass
                paths = [os.path.join(mc.mnt, "lockfile"), os.path.join(mnt_b, "lockfile")]
                for how in ("flock", "fcntl"):
                    locks[how] = lock_pairs(paths, how, a.lock_seconds)
            finally:
                stop_mount(mnt_b, proc_b)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    names = [name for name, _ in MODES]
    print(f"metabench N={a.n}, ops/s (best of {a.runs} runs each, alternating)")
    print(f"{'op':>10} " + " ".join(f"{n:>22}" for n in names))
    for k in meta[names[0]]:
        print(f"{k:>10} " + " ".join(f"{meta[n].get(k, 0):22.0f}" for n in names))
    print(f"\ndd of {a.dd_mib} MiB (bs=1M), MB/s")
    print(f"{'':>10} " + " ".join(f"{n:>22}" for n in names))
    print(f"{'write':>10} " + " ".join(f"{io[n][0]:22.0f}" for n in names))
    print(f"{'read':>10} " + " ".join(f"{io[n][1]:22.0f}" for n in names))
    print(f"\nlock+unlock pairs per second, one process on each of two mounts, one file")
    for how, rate in locks.items():
        print(f"{how:>10} {rate:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
