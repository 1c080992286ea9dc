#!/usr/bin/env python3
"""Where a metabench operation's CPU goes, process by process (the probe behind issue 16).

    .venv/bin/python bench/cpu_per_op.py [N] [--rounds R] [--spy PHASE] [--dir DIR]

Starts one ElkFS cluster (1 master, 3 chunkservers, goal 2) and a mount with the default
options, then runs metabench's phases (mkdir, create, stat, write4k, read4k, rename,
unlink, rmdir) R times over N files and prints, for each phase, ops/s and the CPU time
per operation of the mount, the master and the chunkservers (together), median of the
rounds. On a shared machine ops/s moves with the neighbours; CPU per op moves much less.
--spy PHASE records py-spy flame data (raw, collapsed stacks) of the mount and the master
during that phase of the last round into DIR/{mount,master}.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.cputime import CpuMeter  # noqa: E402
from tests.fuse.mounted import MountedCluster  # noqa: E402

PHASES = ("mkdir", "create", "stat", "write4k", "read4k", "rename", "unlink", "rmdir")
BLOB = os.urandom(4096)


def phase_ops(phase: str, names: list[str], dirs: list[str]):
    if phase == "mkdir":
        return len(dirs), lambda: [os.mkdir(x) for x in dirs]
    if phase == "create":
        return len(names), lambda: [os.close(os.open(x, os.O_CREAT | os.O_WRONLY, 0o644))
                                    for x in names]
    if phase == "stat":
        return len(names), lambda: [os.stat(x) for x in names]
    if phase == "write4k":
        def w():
            for x in names:
                fd = os.open(x, os.O_WRONLY)
                os.write(fd, BLOB)
                os.close(fd)
        return len(names), w
    if phase == "read4k":
        def r():
            for x in names:
                fd = os.open(x, os.O_RDONLY)
                assert os.read(fd, 8192) == BLOB
                os.close(fd)
        return len(names), r
    if phase == "rename":
        return len(names), lambda: [os.rename(x, x + ".r") for x in names]
    if phase == "unlink":
        return len(names), lambda: [os.unlink(x + ".r") for x in names]
    if phase == "rmdir":
        return len(dirs), lambda: [os.rmdir(x) for x in dirs]
    raise ValueError(phase)


def spied_pid(who: dict[str, list[int]], name: str) -> int:
    """The process --spy-who names: mount, master, cs1 (the first chunkserver) or
    follower1 (the first follower, with --ha)."""
    if name == "cs1":
        return who["chunkservers"][0]
    if name == "follower1":
        return who["followers"][0]
    return who[name][0]


def master_ops(url: str) -> dict[str, int]:
    """The master's count of metadata operations by type (its /metrics page)."""
    counts = {}
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("elkfs_master_ops_total{"):
                op = line.split('op="')[1].split('"')[0]
                counts[op] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("n", nargs="?", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--spy", choices=PHASES)
    p.add_argument("--dir", default="/tmp/elkfs-cpu-per-op")
    p.add_argument("--net", default="127.0.43")
    p.add_argument("--mount-options", default="")
    p.add_argument("--perf", choices=PHASES, help="perf record -a during that phase "
                   "(last round) into DIR-spy/perf.data")
    p.add_argument("--spy-who", default="mount,master", help="of mount, master, cs1, follower1")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--ha", action="store_true", help="three masters with HA: the leader's "
                   "CPU as master, the two followers' together as followers")
    args = p.parse_args()
    results: dict[str, list[tuple[float, float, float, float]]] = {ph: [] for ph in PHASES}
    ha = {"masters": 3, "ha": True} if args.ha else {}
    with MountedCluster(args.dir, net=args.net, goal=2,
                        mount_options=args.mount_options, **ha) as mc:
        time.sleep(3)  # let the chunkservers make their stock of empty chunk files
        leader = mc.cluster.wait_leader() if args.ha else mc.cluster.masters[0]
        who = {"mount": [mc.pid], "master": [leader.pid()],
               "chunkservers": [d.pid() for d in mc.cluster.chunkservers]}
        if args.ha:
            who["followers"] = [d.pid() for d in mc.cluster.masters if d is not leader]
        meters = {k: CpuMeter(v) for k, v in who.items()}
        url = mc.cluster.web_url(leader, "/metrics")
        requests: dict[str, dict[str, float]] = {}
        for rnd in range(args.rounds):
            d = os.path.join(mc.mnt, f"round{rnd}")
            os.mkdir(d)
            names = [os.path.join(d, f"f{i:06d}") for i in range(args.n)]
            dirs = [os.path.join(d, f"d{i:06d}") for i in range(args.n // 4)]
            for phase in PHASES:
                count, fn = phase_ops(phase, names, dirs)
                spies = []
                if args.spy == phase and rnd == args.rounds - 1:
                    os.makedirs(args.dir + "-spy", exist_ok=True)
                    for k in args.spy_who.split(","):
                        spies.append(subprocess.Popen(
                            [os.path.join(os.path.dirname(sys.executable), "py-spy"),
                             "record", "-r", "500", "-f", "raw", "-p", str(spied_pid(who, k)),
                             *(["--native"] if args.native else []),
                             "-o", os.path.join(args.dir + "-spy", f"{k}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    time.sleep(1.0)
                if args.perf == phase and rnd == args.rounds - 1:
                    os.makedirs(args.dir + "-spy", exist_ok=True)
                    pids = ",".join(str(x) for v in who.values() for x in v)
                    spies.append(subprocess.Popen(
                        ["perf", "record", "-g", "-p", pids, "-o",
                         os.path.join(args.dir + "-spy", "perf.data")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    time.sleep(1.0)
                ops_before = master_ops(url)
                before = {k: mt.seconds() for k, mt in meters.items()}
                t = time.perf_counter()
                fn()
                dt = time.perf_counter() - t
                after = {k: mt.seconds() for k, mt in meters.items()}
                ops_after = master_ops(url)
                requests[phase] = {op: (n - ops_before.get(op, 0)) / count
                                   for op, n in ops_after.items()
                                   if n - ops_before.get(op, 0) > 0}
                for s in spies:
                    s.send_signal(2)
                for s in spies:
                    s.wait(30)
                us = [(after[k] - before[k]) * 1e6 / count for k in who]
                results[phase].append((count / dt, *us))
    print(f"N={args.n}, {args.rounds} rounds, median; load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    heads = [f"{k} us" for k in who]
    print(f"{'op':>8} {'ops/s':>7} " + " ".join(f"{h:>12}" for h in heads) + f" {'total us':>9}")
    for phase in PHASES:
        rows = results[phase]
        ops, *us = (statistics.median(r[i] for r in rows) for i in range(len(who) + 1))
        print(f"{phase:>8} {ops:7.0f} " + " ".join(f"{u:12.0f}" for u in us) + f" {sum(us):9.0f}")
    print("master requests per operation (last round):")
    for phase in PHASES:
        print(f"{phase:>8} " + ", ".join(f"{op} {n:.2f}" for op, n in
                                         sorted(requests[phase].items(), key=lambda x: -x[1])))


if __name__ == "__main__":
    main()
