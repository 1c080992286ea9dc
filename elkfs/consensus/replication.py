"""Leader-side replication bookkeeping: per-follower progress and the commit rule.

Group commit in the PacificA / Kafka-ISR style (HA.md "Metadata replication"): a change
``(term, version)`` commits when the leader's own fsync is done *and* every member of the
record, and of a pending record change, reported that exact pair persisted.  Using the
union of old and new members while a change is pending is Kafka's
``effectiveInSyncReplicaIds = inSyncReplicaIds | pendingInSyncReplicaIds`` (finding 2); a
shrink therefore takes effect only once stored at a majority.  The broken variants
``ack_before_isr``, ``ack_before_fsync`` and ``grow_without_union`` drop one term each.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ACK_BEFORE_FSYNC, ACK_BEFORE_ISR, GROW_WITHOUT_UNION, HAConfig
from .records import Record


@dataclass(slots=True)
class Progress:
    """What the leader knows of one master address."""
    ident: str | None = None
    next_version: int = 1
    match_version: int = 0
    last_ack: float = float("-inf")
    caught_up_at: float = float("-inf")
    last_send: float = float("-inf")


def commit_point(cfg: HAConfig, self_ident: str, own_durable: int, own_last: int,
                 record: Record, pending: Record | None,
                 progress: dict[str, Progress]) -> int:
    """The highest version every required member holds (exact pairs already checked)."""
    c = own_last if cfg.has(ACK_BEFORE_FSYNC) else own_durable
    if cfg.has(ACK_BEFORE_ISR):
        return c
    need = set(record.members)
    if pending is not None and not cfg.has(GROW_WITHOUT_UNION):
        need |= set(pending.members)
    need.discard(self_ident)
    by_ident = {p.ident: p for p in progress.values() if p.ident is not None}
    for ident in need:
        p = by_ident.get(ident)
        c = min(c, p.match_version if p else 0)
    return c
