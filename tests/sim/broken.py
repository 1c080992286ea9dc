"""Broken variants that live in the test tree (STYLE.md: production code should not know
the names of its own bugs).

Each one breaks a rule the *shell* or a *chunkserver* must follow, so the simulator's own
shell applies it; none of them touches ``elkfs/consensus``.  The older variants that sit
inside the core's decisions stay flags of ``HAConfig.mutations`` (one clearly named
mechanism, empty outside the simulator).

* ``power_loss_keeps_incarnation``: the master shell ignores the boot-id rule of
  ``identity.py`` and rejoins with its old identity after losing its unsynced tail.
* ``follower_forgets_accepted_term``: the shell does not persist the highest term a
  follower accepted (only the candidate's own term), so after a restart it obeys a
  deposed leader again.
* ``fence_ignores_term``: the chunkserver's fence checks versions but not the term.
* ``voter_change_keeps_old_lease``: the leader keeps the lease it counted over the old
  voter set when it proposes a new one (HA.md: the new set counts from the proposal).
* ``force_ignores_leases``: the operator's forced voter set is taken at once, without
  waiting for promises a lost voter may still be keeping.
"""
from __future__ import annotations

from elkfs.consensus.fencing import ChunkCommand, ChunkCommandReply, ChunkVersionFence
from elkfs.consensus.master import Master

POWER_LOSS_KEEPS_INCARNATION = "power_loss_keeps_incarnation"
FOLLOWER_FORGETS_ACCEPTED_TERM = "follower_forgets_accepted_term"
FENCE_IGNORES_TERM = "fence_ignores_term"
VOTER_CHANGE_KEEPS_OLD_LEASE = "voter_change_keeps_old_lease"
FORCE_IGNORES_LEASES = "force_ignores_leases"

SIM_MUTATIONS = (
    POWER_LOSS_KEEPS_INCARNATION, FOLLOWER_FORGETS_ACCEPTED_TERM, FENCE_IGNORES_TERM,
    VOTER_CHANGE_KEEPS_OLD_LEASE, FORCE_IGNORES_LEASES,
)


class FenceIgnoringTerm(ChunkVersionFence):
    """Checks that a chunk's version never goes back, but not the command's term."""

    def step(self, msg: ChunkCommand) -> ChunkCommandReply:
        self.highest_term = max(self.highest_term, msg.term)
        have = self.versions.get(msg.chunk)
        if have is not None and msg.version < have:
            return ChunkCommandReply(msg.chunk, msg.version, False, "older-version",
                                     self.highest_term)
        self.versions[msg.chunk] = msg.version
        return ChunkCommandReply(msg.chunk, msg.version, True, "ok", self.highest_term)


def fence_class(mutations) -> type[ChunkVersionFence]:
    return FenceIgnoringTerm if FENCE_IGNORES_TERM in mutations else ChunkVersionFence


class MasterKeepingOldLease(Master):
    """Proposes a voter set but keeps the lease it counted over the old one."""

    def _count_lease_from_proposal(self, now: float) -> None:
        pass


class MasterForcingAtOnce(Master):
    """Takes the operator's forced voter set at once: no wait for old promises, no check
    for a leader heard lately or a lease a voter still holds."""

    def _force_wait_s(self) -> float:
        return 0.0

    def _force_refusal(self, now: float) -> str | None:
        return None if self._only_asking() else self.role

    def _force_lease_live(self, replies) -> str | None:
        return None


def master_class(mutations) -> type[Master]:
    if VOTER_CHANGE_KEEPS_OLD_LEASE in mutations:
        return MasterKeepingOldLease
    if FORCE_IGNORES_LEASES in mutations:
        return MasterForcingAtOnce
    return Master
