"""Every deliberately broken variant must make the simulation fail.

The full hunt is ``python -m tests.sim.mutants`` (``make sim-mutants``).  Here each mutant
is first tried on the seed that caught it when this file was written (fast and fixed, like
a regression seed), then, if that no longer fails, hunted over a bounded range, stopping
at the first failure.  The broken shells of ``tests/sim/broken.py`` are included.
"""
import pytest

from .mutants import EVERY_MUTATION, FOCUS_OF, hunt
from .run import run_seed

KNOWN = {
    "voter_ignores_promise": 11,
    "voter_forgets_promise": 2,
    "grant_without_lease": 0,
    "ack_before_isr": 10,
    "ack_before_fsync": 47,
    "epoch_only_order": (2815, "minority-records"),  # (seed, faults.FOCUS_WEIGHTS mix)
    "no_restamp": 5,
    "grow_without_union": 333,
    "version_only_match": 5,
    "stale_now": 98,
    "unmatched_acks": 7,
    "voter_adopts_refused": 64,
    "power_loss_keeps_incarnation": 89,
    "follower_forgets_accepted_term": 251,
    "fence_ignores_term": 44,
    "voter_change_keeps_old_lease": 1140,
    "force_ignores_leases": 279,
}
HUNT_SEEDS = 400
# Mutants the simulation no longer catches within thousands of seeds, and why; each has a
# unit test of the rule it breaks. Listed here so that the gap stays visible.
NOT_CAUGHT: dict[str, str] = {}


@pytest.mark.parametrize("mutation", EVERY_MUTATION)
def test_mutant_is_caught(mutation):
    seed, focus = KNOWN.get(mutation), None
    if isinstance(seed, tuple):
        seed, focus = seed
    if seed is not None and not run_seed(seed, frozenset({mutation}), focus=focus).ok:
        assert run_seed(seed, focus=focus).ok, f"seed {seed} fails without the mutation too"
        return
    if mutation in NOT_CAUGHT:
        pytest.xfail(NOT_CAUGHT[mutation])
    r = hunt(mutation, HUNT_SEEDS, jobs=2)
    assert r is not None, f"{mutation} survived {HUNT_SEEDS} seeds"
    assert run_seed(r.seed, focus=FOCUS_OF.get(mutation)).ok, \
        f"seed {r.seed} fails without the mutation too"
