"""Failover figures from the deterministic simulation (a benchmark, not a timed test).

    .venv/bin/python bench/failover_sim.py [--trials N] [--seeds N]

Realistic timings: LAN delays (0.2 ms + exp(0.3 ms)), the default CHANGELOG_SAVE_MODE,
D = 2 s, rho = 1%, 3 masters and 3 voters, two clients writing and reading throughout
(a request unanswered for 0.3 s is retried at the next master).  For each scenario it
reports two distributions:

* "to first ack": from the fault (the crash, the partition, the operator's step-down) to
  the first client write acknowledged afterwards, by whichever master.  This is what
  users feel: it includes the old lease running out, the election, the re-stamp, and the
  clients finding the new leader.  For "follower" (a follower crashes, the leader stays)
  it is the longest wait between acknowledged writes in the 5 s after the crash: the
  leader waits for the lost follower until it is shrunk out of the in-sync set.
* "no leader": from the end of the old leader's service (crash instant, or the real
  instant its lease ran out or was released) to the first instant the next master serves.

It then runs the randomized fault simulation and reports how many seeds and simulated
hours ran with zero invariant violations.
"""
from __future__ import annotations

import argparse
import bisect
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from elkfs.consensus.messages import AdminStepDown  # noqa: E402
from tests.sim.run import run_many  # noqa: E402
from tests.sim.world import SimParams, World  # noqa: E402


def one_trial(seed: int, scenario: str) -> tuple[float, float]:
    """Return (fault to first acknowledged write, no-leader gap) in seconds."""
    p = SimParams.from_seed(seed, realistic=True, faulty_s=20.0, healed_s=0.1)
    p.n_masters, p.n_voters, p.fault_rate = 3, 3, 0.0
    w = World(p)
    w.heal_at = w.end_at = 30.0
    at = 6.0 + w.r_fault.uniform(0.0, 2.0)
    state: dict = {}

    def act():
        ldr = w.current_leader()
        state["old"] = ldr.name
        state["t"] = w.t
        if scenario == "follower":
            w.crash(w.nodes[next(n for n in w.masters if n != ldr.name)])
        elif scenario == "crash":
            w.crash(ldr)
        elif scenario == "partition":
            w.blocked |= {(a, b) for a in w.nodes for b in w.nodes
                          if a != b and ldr.name in (a, b)}
        else:
            w.deliver_local(ldr, AdminStepDown())

    w.ev_act = act
    w.ev_watch = lambda: None       # the act is the fault; the watchdog is for the sim
    w.at(at, "act")
    w.final_checks = lambda: None
    w.run()
    old = state["old"]
    acks = w.oracle.ack_times
    if scenario == "follower":  # the leader stays: the longest wait for an ack after it
        after = [state["t"]] + [t for t in acks if state["t"] < t <= state["t"] + 5.0]
        return max(b - a for a, b in zip(after, after[1:] or after)), 0.0
    ivs = w.oracle.intervals
    old_end = max(iv.end for iv in ivs if iv.master == old and iv.start <= state["t"])
    new_start = min(iv.start for iv in ivs if iv.master != old and iv.start >= state["t"])
    first_ack = acks[bisect.bisect_right(acks, state["t"])]
    return first_ack - state["t"], new_start - old_end


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=2000)
    a = ap.parse_args()
    print(f"failover, D = 2 s, LAN, default save mode, {a.trials} trials each")
    print(f"{'':<12}{'fault to first ack':^27}{'no serving leader':^27}")
    print(f"{'scenario':<12}" + f"{'p50':>9}{'p99':>9}{'max':>9}" * 2)
    for scenario in ("crash", "partition", "step-down", "follower"):
        trials = [one_trial(10_000 + i, scenario) for i in range(a.trials)]
        cols = ""
        for xs in ([x[0] for x in trials], [x[1] for x in trials]):
            cols += f"{pct(xs, .5):>8.3f}s{pct(xs, .99):>8.3f}s{max(xs):>8.3f}s"
        print(f"{scenario:<12}{cols}")
    t0 = time.monotonic()
    failed, sim_s = 0, 0.0
    for r in run_many(range(a.seeds), jobs=2):
        sim_s += r.sim_s
        failed += not r.ok
    print(f"randomized fault simulation: {a.seeds} seeds, {sim_s / 3600:.1f} simulated hours, "
          f"{failed} with violations ({time.monotonic() - t0:.0f}s)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
