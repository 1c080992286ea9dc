"""Every deliberately broken variant must make the simulation fail.

The full hunt is ``python -m tests.sim.mutants`` (``make sim-mutants``).  Here each mutant
is first tried on the seed that caught it when this file was written (fast and fixed, like
a regression seed), then, if that no longer fails, hunted over a bounded range, stopping
at the first failure.
"""
import pytest

from elkfs.consensus.config import ALL_MUTATIONS

from .mutants import hunt
from .run import run_seed

KNOWN = {
    "voter_ignores_promise": 24,
    "voter_forgets_promise": 7,
    "grant_without_lease": 0,
    "ack_before_isr": 10,
    "ack_before_fsync": 56,
    "epoch_only_order": 493,
    "no_restamp": 4,
    "grow_without_union": 12,
    "version_only_match": 10,
    "stale_now": 138,
    "unmatched_acks": 5,
    "voter_adopts_refused": 207,
}
HUNT_SEEDS = 400


@pytest.mark.parametrize("mutation", ALL_MUTATIONS)
def test_mutant_is_caught(mutation):
    seed = KNOWN.get(mutation)
    if seed is not None and not run_seed(seed, frozenset({mutation})).ok:
        assert run_seed(seed).ok, f"seed {seed} fails without the mutation too"
        return
    r = hunt(mutation, HUNT_SEEDS, jobs=2)
    assert r is not None, f"{mutation} survived {HUNT_SEEDS} seeds"
    assert run_seed(r.seed).ok, f"seed {r.seed} fails without the mutation too"
