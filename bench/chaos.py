#!/usr/bin/env python3
"""A randomized nemesis against a real HA cluster for a number of minutes, with the
recorded workload of bench/failover.py and the same checks and figures.

    .venv/bin/python bench/chaos.py --minutes N [--seed S]       (make chaos MINUTES=N)

Faults, chosen at random (seeded): kill -9 of the leader or of a follower (restarted a
little later), SIGSTOP of the leader past its lease or of a follower briefly, an iptables
partition of the leader or of a follower (both ways or one way), a chunkserver killed and
restarted, a step-down. Between faults the cluster must get back to one leader with every
master in sync. At the end: failed system calls, appends lost or doubled, and per kind of
fault the longest stall an application saw.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.failover import LEASE_S, pct, stall_after, step_down  # noqa: E402
from elkfs.testing.faults import Firewall, converged, wait_until  # noqa: E402
from elkfs.testing.history import (Appender, History, Renamer, check_appends,  # noqa: E402
                                   check_renames)
from tests.fuse.mounted import MountedCluster  # noqa: E402


def faults(c, mnt, rng: random.Random):
    """name -> callable doing one fault and undoing it."""

    def follower():
        leader = c.leader()
        return rng.choice([d for d in c.masters if d is not leader])

    def kill_leader():
        old = c.leader()
        c.kill(old)
        c.wait_leader(60, other_than=old)
        time.sleep(rng.uniform(0, 2))
        c.start_daemon(old)

    def kill_follower():
        d = follower()
        c.kill(d)
        time.sleep(rng.uniform(0.5, 4))
        c.start_daemon(d)

    def stop_leader():
        old = c.leader()
        c.signal(old, signal.SIGSTOP)
        try:
            c.wait_leader(60, other_than=old)
            time.sleep(rng.uniform(0, 2 * LEASE_S))
        finally:
            c.signal(old, signal.SIGCONT)

    def stop_follower():
        d = follower()
        c.signal(d, signal.SIGSTOP)
        time.sleep(rng.uniform(0.2, 3))
        c.signal(d, signal.SIGCONT)

    def cut(target, both_ways):
        others = [d.host for d in c.masters + c.chunkservers if d is not target]
        Firewall.isolate(target.host, others, both_ways=both_ways)

    def partition_leader():
        old = c.leader()
        cut(old, rng.random() < 0.5)
        try:
            c.wait_leader(60, other_than=old)
            time.sleep(rng.uniform(0, 2))
        finally:
            Firewall.heal_all()

    def partition_follower():
        cut(follower(), rng.random() < 0.5)
        time.sleep(rng.uniform(0.5, 4))
        Firewall.heal_all()

    def restart_chunkserver():
        cs = rng.choice(c.chunkservers)
        c.kill(cs)
        time.sleep(rng.uniform(0, 2))
        c.start_daemon(cs)

    return {"kill-leader": kill_leader, "kill-follower": kill_follower,
            "stop-leader": stop_leader, "stop-follower": stop_follower,
            "cut-leader": partition_leader, "cut-follower": partition_follower,
            "restart-cs": restart_chunkserver, "step-down": lambda: step_down(c, mnt)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--only", default=None, help="one kind of fault only (e.g. restart-cs)")
    p.add_argument("--keep", action="store_true", help="keep the cluster's directory")
    a = p.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"chaos for {a.minutes} minutes, seed {seed} (replay: --seed {seed})", flush=True)
    base = tempfile.mkdtemp(prefix="elkfs-chaos-")
    os.chmod(base, 0o755)
    mc = MountedCluster(base, "127.0.48", masters=3, ha=True)
    history = History()
    stalls: dict[str, list[float]] = {}
    problems: list[str] = []
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
        table = faults(c, mc.mnt, rng)
        end = time.monotonic() + a.minutes * 60
        n = 0
        try:
            while time.monotonic() < end:
                time.sleep(rng.uniform(0.5, 3))
                kind = a.only or rng.choice(sorted(table))
                n += 1
                t0 = time.monotonic()
                table[kind]()
                wait_until(lambda: converged(c, quiet=False), 90, "one leader and all masters in sync")
                stall = stall_after(history, t0)
                stalls.setdefault(kind, []).append(stall)
                print(f"  {n:>3} {kind:<14} stall {stall:6.3f}s", flush=True)
        finally:
            for w in workers:
                w.stop()
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
    failed = history.failed()
    print(f"\n{'fault':<14} {'n':>3} {'p50':>8} {'p99':>8} {'max':>8}")
    for kind in sorted(stalls):
        v = stalls[kind]
        print(f"{kind:<14} {len(v):>3} {pct(v, .5):7.3f}s {pct(v, .99):7.3f}s {max(v):7.3f}s")
    print(f"operations: {len(history.ops)}, failed system calls: {len(failed)}, "
          f"lost or doubled operations: {len(problems)}" +
          (f" ({'; '.join(problems)})" if problems else "") + f"; seed {seed}")
    for op in failed[:5]:
        print(f"  failed: {op}")
    return 0 if not failed and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
