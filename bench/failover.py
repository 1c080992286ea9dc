#!/usr/bin/env python3
"""Failover as applications feel it: faults on the leader of a three-master cluster under a
steady workload through a real mount, and the longest stall each fault caused.

    .venv/bin/python bench/failover.py [--kills 20] [--stepdowns 20] [--stops 10]
                                       [--partitions 10]

The workload (elkfs.testing.history): an appender that writes and fsyncs one record at a
time, and a create-write-rename loop, both on the mount, recorded operation by operation.
For each fault the figure is the longest time one of their system calls took among
those running around the fault ("the longest stall an application saw"); at the end the
whole history is checked: failed system calls, and appends lost or doubled.

Faults, with the shipped defaults (2 s lease): kill -9 of the leader (restarted after the
failover), `mfscli -C SD` (step-down), SIGSTOP of the leader for three leases, and an
iptables partition cutting the leader off from every other daemon (healed after the
failover). Each fault waits until all masters are in sync again before the next.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from elkfs.testing.faults import Firewall, converged, wait_until  # noqa: E402
from elkfs.testing.history import (Appender, History, Renamer, check_appends,  # noqa: E402
                                   check_renames)
from tests.fuse.mounted import MountedCluster  # noqa: E402

BIN = os.path.dirname(sys.executable)
LEASE_S = 2.0
WINDOW_S = 20.0  # operations started up to this long after a fault count toward it


def kill(c):
    old = c.leader()
    c.kill(old)
    c.wait_leader(60, other_than=old)
    c.start_daemon(old)


def step_down(c, mnt):
    old = c.leader()
    out = subprocess.run([os.path.join(BIN, "mfscli"), "-C", "SD", mnt], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    c.wait_leader(30, other_than=old)


def sigstop(c):
    old = c.leader()
    c.signal(old, signal.SIGSTOP)
    try:
        c.wait_leader(60, other_than=old)
        time.sleep(max(0.0, 3 * LEASE_S - 2.5))
    finally:
        c.signal(old, signal.SIGCONT)


def partition(c):
    old = c.leader()
    Firewall.isolate(old.host, [d.host for d in c.masters + c.chunkservers if d is not old])
    try:
        c.wait_leader(60, other_than=old)
        time.sleep(1.0)
    finally:
        Firewall.heal_all()


def stall_after(history: History, t0: float, processes=("appender", "renamer")) -> float:
    """The longest system call of the workload that was running at or started after `t0`
    (within WINDOW_S)."""
    worst = 0.0
    for op in history.ops:
        if op.process in processes and op.completed is not None and \
                op.completed >= t0 and op.invoked <= t0 + WINDOW_S:
            worst = max(worst, op.completed - max(op.invoked, t0))
    return worst


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--stepdowns", type=int, default=20)
    p.add_argument("--stops", type=int, default=10)
    p.add_argument("--partitions", type=int, default=10)
    p.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="elkfs-failover-")
    os.chmod(base, 0o755)
    mc = MountedCluster(base, "127.0.47", masters=3, ha=True)
    stalls: dict[str, list[float]] = {}
    history = History()
    try:
        mc.start()
        c = mc.cluster
        c.wait_leader(30)
        work = os.path.join(mc.mnt, "work")
        os.mkdir(work)
        path = os.path.join(work, "log")
        workers = [Appender(history, path), Renamer(history, work)]
        for w in workers:
            w.pause_s = 0.005
            w.start()
        plan = ([("kill", lambda: kill(c))] * a.kills
                + [("step-down", lambda: step_down(c, mc.mnt))] * a.stepdowns
                + [("sigstop", lambda: sigstop(c))] * a.stops
                + [("partition", lambda: partition(c))] * a.partitions)
        try:
            for i, (kind, fault) in enumerate(plan, 1):
                time.sleep(1.0)
                t0 = time.monotonic()
                fault()
                wait_until(lambda: converged(c, quiet=False), 60, "all masters in sync")
                time.sleep(0.5)
                stall = stall_after(history, t0)
                stalls.setdefault(kind, []).append(stall)
                print(f"  {i:>3}/{len(plan)} {kind:<10} stall {stall:6.3f}s", flush=True)
        finally:
            for w in workers:
                w.stop()
        failed = history.failed()
        problems = []
        for check in (lambda: check_appends(history, path), lambda: check_renames(history, work)):
            try:
                check()
            except AssertionError as e:
                problems.append(str(e))
    finally:
        Firewall.heal_all()
        mc.stop()
        if a.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    ops = len(history.ops)
    print(f"\nfailover under load through the mount (3 masters, 3 chunkservers, lease "
          f"{LEASE_S:.0f} s, {os.cpu_count()} CPUs); longest application stall per fault")
    print(f"{'fault':<10} {'n':>3} {'p50':>8} {'p99':>8} {'max':>8} {'mean':>8}")
    for kind, values in stalls.items():
        print(f"{kind:<10} {len(values):>3} {pct(values, .5):7.3f}s {pct(values, .99):7.3f}s "
              f"{max(values):7.3f}s {statistics.mean(values):7.3f}s")
    print(f"operations: {ops}, failed system calls: {len(failed)}, "
          f"lost or doubled operations: {len(problems)}"
          + (f" ({'; '.join(problems)})" if problems else ""))
    if failed:
        print(f"first failures: {failed[:3]}")
    return 0 if not failed and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
