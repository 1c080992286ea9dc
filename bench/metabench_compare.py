#!/usr/bin/env python3
"""/work/shared/bench/metabench.py on an ElkFS mount and on a local directory, side by side,
in the same minute.

    .venv/bin/python bench/metabench_compare.py [N] [--runs K] [--metabench PATH]

With --runs K it alternates K runs on each and prints the best of each line (the machine's
speed drifts; the best run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.fuse.mounted import MountedCluster  # noqa: E402

DEFAULT = "/work/shared/bench/metabench.py"


def wait_stock(cluster, files: int = 1024, timeout: float = 90.0) -> None:
    """Until every chunkserver has made its stock of empty chunk files (HDD_STOCK_FILES,
    made by a thread at start): a long-running chunkserver has it, and making it takes
    both cores for some seconds on this machine's disk."""
    deadline = time.monotonic() + timeout
    for cs in cluster.chunkservers:
        free = os.path.join(cs.data_dir, "hdd1", ".free")
        while time.monotonic() < deadline:
            try:
                if len(os.listdir(free)) >= files:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.2)


def run(metabench: str, root: str, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, metabench, root, str(n)], capture_output=True,
                         text=True, check=True).stdout
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^\s*(\w+):\s+([0-9.]+) ops/s", out, re.M)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", nargs="?", type=int, default=2000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--metabench", default=DEFAULT)
    p.add_argument("-o", dest="mount_options", default="", help="mount options, as mfsmount -o")
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-metabench-")
    local = tempfile.mkdtemp(prefix="elkfs-metabench-local-")
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    try:
        with MountedCluster(base, "127.0.41", goal=2, mount_options=a.mount_options) as mc:
            wait_stock(mc.cluster)
            for _ in range(a.runs):
                for best, root in ((ours, mc.mnt), (theirs, local)):
                    for k, v in run(a.metabench, root, a.n).items():
                        best[k] = max(best.get(k, 0.0), v)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(local, ignore_errors=True)
    runs = f", best of {a.runs} runs" if a.runs > 1 else ""
    print(f"metabench N={a.n} ({os.cpu_count()} CPUs{runs}), ops/s")
    print(f"{'op':>10} {'ElkFS mount':>12} {'local dir':>12}")
    for k in ours:
        print(f"{k:>10} {ours[k]:12.0f} {theirs.get(k, 0):12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
