"""Run the deterministic HA simulation over many seeds.

    python -m tests.sim.run --seeds N [--first F] [--seed S] [--verbose] [--jobs J]
                            [--mutation NAME]

A failing seed prints the violated invariant, the last events of its trace and the one
command that replays it alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool

from .faults import FOCUS_WEIGHTS
from .oracle import Violation
from .world import SimParams, World


@dataclass
class Result:
    seed: int
    ok: bool
    invariant: str = ""
    detail: str = ""
    trace: str = ""
    sim_s: float = 0.0
    events: int = 0


def run_seed(seed: int, mutations=frozenset(), verbose: bool = False,
             faulty_s: float = 10.0, healed_s: float = 8.0, unfair=frozenset(),
             focus: str | None = None) -> Result:
    p = SimParams.from_seed(seed, mutations, faulty_s=faulty_s, healed_s=healed_s,
                            unfair=unfair)
    if focus is not None:  # one of faults.FOCUS_WEIGHTS instead of the seed's own mix
        p.weights = dict(FOCUS_WEIGHTS[focus])
    w = World(p, verbose=verbose)
    try:
        w.run()
    except Violation as v:
        lines = [w.fmt(x) for x in list(w.trace)[-120:]]
        if verbose:
            print("\n".join(w.fmt(x) for x in w.trace))
        return Result(seed, False, v.invariant, v.detail, "\n".join(lines), w.t,
                      w.stats["events"])
    if verbose:
        print("\n".join(w.fmt(x) for x in w.trace))
    return Result(seed, True, sim_s=w.t, events=w.stats["events"])


def _job(args) -> Result:
    seed, mutations, faulty_s, healed_s, unfair, focus = args
    return run_seed(seed, frozenset(mutations), False, faulty_s, healed_s, frozenset(unfair),
                    focus)


def run_many(seeds, mutations=frozenset(), jobs: int = 2, stop_at_first: bool = False,
             faulty_s: float = 10.0, healed_s: float = 8.0, unfair=frozenset(),
             focus: str | None = None):
    """Yield results; with ``stop_at_first`` stop after the first failure."""
    args = [(s, tuple(sorted(mutations)), faulty_s, healed_s, tuple(sorted(unfair)), focus)
            for s in seeds]
    if jobs <= 1:
        for a in args:
            r = _job(a)
            yield r
            if stop_at_first and not r.ok:
                return
        return
    with Pool(jobs) as pool:
        for r in pool.imap(_job, args, chunksize=4):
            yield r
            if stop_at_first and not r.ok:
                pool.terminate()
                return


def replay_command(seed: int, mutations=(), unfair=(), focus: str | None = None) -> str:
    mut = "".join(f" --mutation {m}" for m in sorted(mutations))
    mut += "".join(f" --unfair {u}" for u in sorted(unfair))
    mut += f" --focus {focus}" if focus else ""
    return f".venv/bin/python -m tests.sim.run --seed {seed}{mut} --verbose"


def describe_failure(r: Result, mutations=(), unfair=()) -> str:
    return (f"seed {r.seed} FAILED invariant {r.invariant}: {r.detail}\n"
            f"--- last events ---\n{r.trace}\n--- replay alone with:\n"
            f"  {replay_command(r.seed, mutations, unfair)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--mutation", action="append", default=[])
    ap.add_argument("--faulty", type=float, default=10.0)
    ap.add_argument("--healed", type=float, default=8.0)
    ap.add_argument("--unfair", action="append", default=[],
                    choices=["clock", "freeze", "stale-voter", "time-checks"],
                    help="add faults no protocol survives; the oracle keeps invariants 2-5 "
                         "(and the real-time checks of invariant 1 with time-checks)")
    ap.add_argument("--focus", choices=sorted(FOCUS_WEIGHTS),
                    help="with --seed: that fault mix instead of the seed's own")
    ap.add_argument("--summary", action="store_true",
                    help="print one line per failure and a count by invariant")
    a = ap.parse_args(argv)
    muts, unfair = frozenset(a.mutation), frozenset(a.unfair)
    if a.seed is not None:
        r = run_seed(a.seed, muts, a.verbose, a.faulty, a.healed, unfair, a.focus)
        print(describe_failure(r, muts, unfair) if not r.ok else
              f"seed {a.seed}: ok ({r.events} events, {r.sim_s:.1f}s simulated)")
        return 0 if r.ok else 1
    t0 = time.monotonic()
    failed, sim_s = [], 0.0
    for r in run_many(range(a.first, a.first + a.seeds), muts, a.jobs, False, a.faulty,
                      a.healed, unfair):
        sim_s += r.sim_s
        if not r.ok:
            failed.append(r)
            if a.summary:
                print(f"seed {r.seed}: {r.invariant}: {r.detail[:150]}", flush=True)
            else:
                print(describe_failure(r, muts, unfair), flush=True)
    print(f"{a.seeds} seeds, {sim_s / 3600:.2f} simulated hours, {len(failed)} failed, "
          f"{time.monotonic() - t0:.1f}s")
    if failed:
        print("failing seeds:", " ".join(str(r.seed) for r in failed))
        by: dict[str, int] = {}
        for r in failed:
            by[r.invariant] = by.get(r.invariant, 0) + 1
        print("by invariant:", ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
