#!/usr/bin/env python3
"""The floor under metabench's mkdir and rmdir lines on this machine: a FUSE file system
in C that does nothing but one loopback TCP round trip to an echo "master" per change
(bench/fuse_floor.c), beside an ElkFS mount and a local directory, in the same minutes.

    .venv/bin/python bench/fuse_floor.py [N] [--runs K]

Needs gcc and libfuse3-dev (`apt-get install gcc libfuse3-dev pkg-config`). Builds the C
file system in a temporary directory, runs N mkdirs then N rmdirs on each in turn, K
times, and prints the best of each. Any file system that answers a change only once its
metadata server has it pays at least what the C one does: the kernel's FUSE requests
(a LOOKUP and a MKDIR for each mkdir), the TCP round trip and the processes' wake-ups.
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

from tests.fuse.mounted import MountedCluster  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_PORT = 19425


def build(out_dir: str) -> str:
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                           text=True, check=True).stdout.split()
    binary = os.path.join(out_dir, "fuse_floor")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, os.path.join(HERE, "fuse_floor.c"),
                    *flags], check=True)
    return binary


def mkdir_rmdir(root: str, n: int, tag: str) -> tuple[float, float]:
    paths = [os.path.join(root, f"{tag}_{i}") for i in range(n)]
    t = time.perf_counter()
    for p in paths:
        os.mkdir(p)
    made = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in paths:
        os.rmdir(p)
    return made, n / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", nargs="?", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-floor-")
    floor_mnt = os.path.join(base, "floor")
    local = os.path.join(base, "local")
    os.makedirs(floor_mnt)
    os.makedirs(local)
    proc = None
    try:
        binary = build(base)
        proc = subprocess.Popen([binary, floor_mnt, str(ECHO_PORT)], stdout=subprocess.PIPE,
                                text=True)
        if proc.stdout.readline().strip() != "mounted":
            raise SystemExit("fuse_floor did not mount")
        best: dict[str, list[float]] = {}
        with MountedCluster(os.path.join(base, "elkfs"), "127.0.47", goal=2) as mc:
            time.sleep(3)  # the chunkservers' start-up work settles
            roots = {"C floor": floor_mnt, "ElkFS": mc.mnt, "local dir": local}
            for run in range(a.runs):
                for name, root in roots.items():
                    got = mkdir_rmdir(root, a.n, f"r{run}")
                    best[name] = [max(x, y) for x, y in zip(best.get(name, [0, 0]), got)]
                print(f"run {run + 1}/{a.runs} done", file=sys.stderr)
        print(f"mkdir and rmdir, N={a.n} (2 CPUs, best of {a.runs} runs), ops/s")
        print(f"{'':>10}" + "".join(f"{name:>12}" for name in best))
        for i, op in enumerate(("mkdir", "rmdir")):
            print(f"{op:>10}" + "".join(f"{v[i]:12.0f}" for v in best.values()))
    finally:
        if proc is not None:
            subprocess.run(["fusermount3", "-u", floor_mnt], capture_output=True)
            proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
