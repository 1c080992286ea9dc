#!/usr/bin/env python3
"""A directory's entries (elkfs/master/direntries.py) in one process: what a lookup and a
create cost in a directory of 1,000 entries (the common case, the hot path of every
operation), the longest single insert while one directory grows to N names (a stall
every other client would wait through), and a walk of such a directory (TreeWalk, as
setgoal -r and mfsdirinfo take it) a step at a time.

Small directory: ns per op, best of ROUNDS, for the entries alone (get, in, [], a new
name added then removed) and through the namespace's state machine (Lookup; Mknod then
Unlink, applied as the journal applies them).

    .venv/bin/python bench/direntries.py [--names 1000000] [--rounds 7] [--compare OLD.py]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import os
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elkfs.master.direntries import DirEntries  # noqa: E402
from elkfs.master.namespace import ROOT, Namespace  # noqa: E402
from elkfs.master.records import Record  # noqa: E402
from elkfs.proto import messages as m  # noqa: E402

SMALL = 1000


def best_ns_per_op(run, ops: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best * 1e9 / ops


def small_entries(rounds: int, cls=DirEntries, label: str = "") -> None:
    names = [b"file-%07d.dat" % i for i in range(SMALL)]
    others = [b"new-%07d.dat" % i for i in range(SMALL)]
    d = cls((n, i) for i, n in enumerate(names))
    get, reps = d.get, 200

    def lookups():
        for _ in range(reps):
            for n in names:
                get(n)

    def contains():
        for _ in range(reps):
            for n in names:
                n in d  # noqa: B015

    def subscripts():
        for _ in range(reps):
            for n in names:
                d[n]

    def create_remove():
        for _ in range(reps // 10):
            for i, n in enumerate(others):
                d[n] = i
            for n in others:
                del d[n]

    ops = reps * SMALL
    print(f"entries of a {SMALL}-entry directory{label}, ns per op (best of {rounds}):")
    print(f"  get {best_ns_per_op(lookups, ops, rounds):7.1f}   "
          f"in {best_ns_per_op(contains, ops, rounds):7.1f}   "
          f"[] {best_ns_per_op(subscripts, ops, rounds):7.1f}   "
          f"add+del {best_ns_per_op(create_remove, ops // 10, rounds):7.1f}")


def applier(ns: Namespace):
    """`apply(op)`: `op` as the namespace's next journal record; returns its result."""
    versions = itertools.count(1)

    def apply(op):
        version = next(versions)
        return ns.apply(Record(version, version, b"", 0, op))

    return apply


def small_namespace(rounds: int, cls=DirEntries, label: str = "") -> None:
    from elkfs.master import nodes

    nodes.DirEntries = cls  # what a new directory gets
    ns = Namespace()
    apply = applier(ns)
    directory = apply(m.Mkdir(ROOT, b"d", 0o755, 0, 0)).attr.inode
    names = [b"file-%07d.dat" % i for i in range(SMALL)]
    for n in names:
        apply(m.Mknod(directory, n, stat.S_IFREG | 0o644, 1000, 1000))
    others = [b"new-%07d.dat" % i for i in range(SMALL)]
    reps = 20

    def lookups():
        for _ in range(reps):
            for n in names:
                ns.lookup(directory, n)

    def create_unlink():
        for n in others:
            apply(m.Mknod(directory, n, stat.S_IFREG | 0o644, 1000, 1000))
        for n in others:
            apply(m.Unlink(directory, n))

    nodes.DirEntries = DirEntries
    print(f"namespace, {SMALL}-entry directory{label}, ns per op (best of {rounds}):")
    print(f"  lookup {best_ns_per_op(lookups, reps * SMALL, rounds):8.1f}   "
          f"mknod+unlink {best_ns_per_op(create_unlink, SMALL, rounds):9.1f}")


def growth(names: int) -> None:
    gc.disable()  # the figure is the entries' own stall, not a collection's
    d = DirEntries()
    worst_s, worst_at = 0.0, 0
    started = time.perf_counter()
    clock = time.perf_counter
    for i in range(names):
        name = b"file-%07d.dat" % i
        t = clock()
        d[name] = i
        took = clock() - t
        if took > worst_s:
            worst_s, worst_at = took, i + 1
    total = time.perf_counter() - started
    gc.enable()
    print(f"one directory grown to {names} names: {total:.1f}s, longest single insert "
          f"{worst_s * 1000:.1f} ms (name {worst_at})")


def walk(names: int) -> None:
    """A walk of the grown directory as setgoal -r takes it: STEP nodes a step."""
    from elkfs.master.treewalk import TreeWalk

    ns = Namespace()
    apply = applier(ns)
    directory = apply(m.Mkdir(ROOT, b"big", 0o755, 0, 0)).attr.inode
    for i in range(names):
        apply(m.Mknod(directory, b"file-%07d.dat" % i, stat.S_IFREG | 0o644, 0, 0))
    gc.collect()
    gc.disable()
    tree = TreeWalk(ns.nodes, directory)
    worst_s, steps = 0.0, 0
    started = time.perf_counter()
    while True:
        t = time.perf_counter()
        batch = tree.next_batch(STEP)
        worst_s = max(worst_s, time.perf_counter() - t)
        if not batch:
            break
        steps += 1
    total = time.perf_counter() - started
    gc.enable()
    print(f"tree walk of it ({type(ns.nodes[directory].children).__name__}), {STEP} a "
          f"step: {total:.2f}s in {steps} steps, longest step {worst_s * 1000:.1f} ms")


STEP = 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--compare", metavar="OLD_DIRENTRIES_PY",
                   help="another direntries.py (e.g. `git show main:elkfs/master/"
                        "direntries.py > /tmp/old.py`): the small-directory figures "
                        "alternate between the two in this process, three times")
    a = p.parse_args()
    if a.compare:
        spec = importlib.util.spec_from_file_location("old_direntries", a.compare)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        for _ in range(3):
            for cls, label in ((DirEntries, " (this)"), (old.DirEntries, " (--compare)")):
                small_entries(a.rounds, cls, label)
                small_namespace(a.rounds, cls, label)
        return 0
    small_entries(a.rounds)
    small_namespace(a.rounds)
    growth(a.names)
    walk(a.names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
