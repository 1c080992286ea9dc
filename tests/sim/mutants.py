"""Run every deliberately broken variant and require the simulation to catch each one.

    python -m tests.sim.mutants [--seeds N] [--jobs J] [--only NAME]

Each mutation is either a flag read by the real classes (``HAConfig.mutations``) or a
broken shell / chunkserver of the test tree (``tests/sim/broken.py``), never a copy of the
core.  A mutant's run stops at its first failing seed; the exit status is 0 only if
every mutant was caught, and the report names the invariant that caught it.
"""
from __future__ import annotations

import argparse
import sys
import time

from elkfs.consensus.config import ALL_MUTATIONS

from .broken import SIM_MUTATIONS
from .run import replay_command, run_many, run_seed

EVERY_MUTATION = ALL_MUTATIONS + SIM_MUTATIONS

DEFAULT_SEEDS = 3000


# Mutants hunted with a narrower fault mix (faults.FOCUS_WEIGHTS): the whole mix dilutes
# the trace that shows them.
FOCUS_OF = {"epoch_only_order": "minority-records"}


def hunt(mutation: str, seeds: int, jobs: int = 2, first: int = 0):
    """Return the first failing Result for ``mutation`` within ``seeds`` seeds, or None."""
    for r in run_many(range(first, first + seeds), frozenset({mutation}), jobs,
                      stop_at_first=True, focus=FOCUS_OF.get(mutation)):
        if not r.ok:
            return r
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", action="append", default=[])
    a = ap.parse_args(argv)
    missed = []
    for m in a.only or EVERY_MUTATION:
        t0 = time.monotonic()
        r = hunt(m, a.seeds, a.jobs)
        took = time.monotonic() - t0
        if r is None:
            missed.append(m)
            print(f"MISSED  {m:<24} survived {a.seeds} seeds ({took:.1f}s)")
        elif not run_seed(r.seed, focus=FOCUS_OF.get(m)).ok:
            missed.append(m)
            print(f"BOGUS   {m:<24} seed {r.seed} fails without the mutation too")
        else:
            print(f"caught  {m:<24} seed {r.seed:<5} by {r.invariant:<24} ({took:.1f}s): "
                  f"{r.detail[:110]}")
            print(f"        replay: {replay_command(r.seed, [m], focus=FOCUS_OF.get(m))}")
        sys.stdout.flush()
    if missed:
        print(f"{len(missed)} mutant(s) survived: {' '.join(missed)}")
        return 1
    print(f"all {len(a.only or EVERY_MUTATION)} mutants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
