#!/usr/bin/env python3
"""What HA costs: /work/shared/bench/metabench.py through a mount of a three-master HA
cluster and of a one-master cluster, side by side in the same minutes.

    .venv/bin/python bench/ha_metabench.py [N] [--runs K]

Both clusters run at once (three chunkservers each, goal 2, the shipped defaults); the
runs alternate between them and each line keeps its best run (the machine's speed
drifts). Printed: ops/s of each and HA / one master.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.metabench_compare import DEFAULT, run, wait_stock  # noqa: E402
from tests.fuse.mounted import MountedCluster  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("n", nargs="?", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--metabench", default=DEFAULT)
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-ha-metabench-")
    os.chmod(base, 0o755)
    best = {"one": {}, "ha": {}}
    one = MountedCluster(os.path.join(base, "one"), "127.0.49", goal=2)
    ha = MountedCluster(os.path.join(base, "ha"), "127.0.50", goal=2, masters=3, ha=True)
    try:
        for mc in (one, ha):
            mc.start()
            wait_stock(mc.cluster)
        ha.cluster.wait_leader(30)
        for i in range(a.runs):
            order = (("one", one), ("ha", ha)) if i % 2 == 0 else (("ha", ha), ("one", one))
            for name, mc in order:
                for k, v in run(a.metabench, mc.mnt, a.n).items():
                    best[name][k] = max(best[name].get(k, 0.0), v)
    finally:
        for mc in (one, ha):
            mc.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"metabench N={a.n}, best of {a.runs} alternating runs, ops/s "
          f"({os.cpu_count()} CPUs)")
    print(f"{'op':>10} {'one master':>11} {'3 masters HA':>13} {'HA / one':>9}")
    for k, v in best["one"].items():
        h = best["ha"].get(k, 0.0)
        print(f"{k:>10} {v:11.0f} {h:13.0f} {h / v if v else 0:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
