"""HA configuration and the deliberately broken variants ("mutations").

Lease arithmetic (HA.md, HA-traces.md finding 15): ``rho`` bounds each clock's *rate* error
against real time.  A voter promises ``D`` on its own clock, at least ``D/(1+rho)`` real
seconds; the leader counts ``D*(1-2*rho)`` on its clock from the send time of the round,
at most ``D*(1-2*rho)/(1-rho) <= D/(1+rho)`` real seconds.  Renewals go out every ``D/2``;
a renewal round must come back before the lease runs out, hence the check
``D*(1-2*rho) - D/2 > max_round_trip_s``.

Mutations are flags read by the real classes so the simulator can prove it catches each
broken variant named in HA.md / HA-traces.md.  The default is the empty set.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration value breaks a rule of the lease arithmetic."""


# --- names of the broken variants (see tests/sim/mutants.py) -----------------------------
VOTER_IGNORES_PROMISE = "voter_ignores_promise"      # grants while another's lease runs
VOTER_FORGETS_PROMISE = "voter_forgets_promise"      # no silence of D after a restart
GRANT_WITHOUT_LEASE = "grant_without_lease"          # a vote grant does not start a lease
ACK_BEFORE_ISR = "ack_before_isr"                    # commit once the leader's fsync is done
ACK_BEFORE_FSYNC = "ack_before_fsync"                # commit without the leader's own fsync
EPOCH_ONLY_ORDER = "epoch_only_order"                # records ordered by epoch alone
NO_RESTAMP = "no_restamp"                            # new leader serves on the adopted record
GROW_WITHOUT_UNION = "grow_without_union"            # pending grow's new member not needed
VERSION_ONLY_MATCH = "version_only_match"            # log matching by version alone
STALE_NOW = "stale_now"                              # shell passes a now read before a stall
UNMATCHED_ACKS = "unmatched_acks"                    # acks credited to the latest round
VOTER_ADOPTS_REFUSED = "voter_adopts_refused"        # refused requests raise the voter term

ALL_MUTATIONS = (
    VOTER_IGNORES_PROMISE, VOTER_FORGETS_PROMISE, GRANT_WITHOUT_LEASE, ACK_BEFORE_ISR,
    ACK_BEFORE_FSYNC, EPOCH_ONLY_ORDER, NO_RESTAMP, GROW_WITHOUT_UNION, VERSION_ONLY_MATCH,
    STALE_NOW, UNMATCHED_ACKS, VOTER_ADOPTS_REFUSED,
)


@dataclass(frozen=True)
class HAConfig:
    """Timing and membership settings shared by masters and voters.

    ``lease_duration_s`` is ``LEADER_LEASE_DURATION``.  ``initial_voters`` are the voter
    uuids a brand-new cluster bootstraps with; ``voter_addrs`` / ``master_addrs`` are where
    to send (the shell maps them to sockets; a voter's uuid may change, its address not).
    """

    lease_duration_s: float = 2.0
    rho: float = 0.01
    max_round_trip_s: float = 0.5
    election_jitter_s: float = 0.15
    align_timeout_s: float = 0.1
    isr_lag_timeout_s: float = 0.6
    request_timeout_s: float = 0.05
    heartbeat_s: float = 0.25
    log_retain: int = 2000
    snapshot_gap: int = 500
    max_batch: int = 256
    voter_addrs: tuple[str, ...] = ()
    master_addrs: tuple[str, ...] = ()
    initial_voters: tuple[str, ...] = ()
    mutations: frozenset[str] = field(default_factory=frozenset)

    @property
    def renew_period_s(self) -> float:
        return self.lease_duration_s / 2

    @property
    def leader_lease_s(self) -> float:
        """The lease a leader counts from a round's send time: ``D*(1-2*rho)``."""
        return self.lease_duration_s * (1 - 2 * self.rho)

    def has(self, mutation: str) -> bool:
        return mutation in self.mutations

    def validate(self) -> "HAConfig":
        d, rho = self.lease_duration_s, self.rho
        if d <= 0:
            raise ConfigError(f"LEADER_LEASE_DURATION must be > 0, got {d}")
        if not 0 <= rho <= 0.1:
            raise ConfigError(f"rho must be within [0, 0.1], got {rho}")
        margin = d * (1 - 2 * rho) - d / 2
        if margin <= self.max_round_trip_s:
            raise ConfigError(
                f"D*(1-2*rho) - D/2 = {margin:.3f}s must exceed the worst round trip "
                f"{self.max_round_trip_s:.3f}s (raise LEADER_LEASE_DURATION)")
        unknown = set(self.mutations) - set(ALL_MUTATIONS)
        if unknown:
            raise ConfigError(f"unknown mutations {sorted(unknown)}")
        return self
