#!/usr/bin/env python3
"""`ls -l` through the mount: N empty files made through a fresh mount, then `ls -l` of
their directory three times, two seconds apart (the listing and attributes are fetched
anew each time: the caches' times are one second). Prints entries per second.

    /work/bin/nsrun <ns> .venv/bin/python bench/ls_long.py [N]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.fuse.mounted import MountedCluster  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    base = tempfile.mkdtemp(prefix="elkfs-lsl-")
    os.chmod(base, 0o755)
    try:
        with MountedCluster(base, "127.0.65", goal=1, chunkservers=1) as mc:
            d = os.path.join(mc.mnt, "x")
            os.mkdir(d)
            for i in range(n):
                os.close(os.open(os.path.join(d, f"f{i:06d}"), os.O_CREAT | os.O_WRONLY, 0o644))
            for _ in range(3):
                time.sleep(2)
                t = time.perf_counter()
                subprocess.run(["ls", "-l", d], capture_output=True, check=True)
                dt = time.perf_counter() - t
                print(f"ls -l of {n} entries: {dt:.2f} s, {n / dt:.0f} entries/s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
