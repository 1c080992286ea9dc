"""The in-sync record ``R = (rterm, epoch, members, voters, commit)`` and quorum helpers.

Records are stored by the voters and compare by ``(rterm, epoch)``: ``rterm`` is the term
of the leader that wrote the record, so a record written under a higher ballot wins over a
minority proposal of an older term that happens to have the same or a higher epoch
(Paxos' "value accepted under the highest ballot", HA-traces.md finding 1).  The
``EPOCH_ONLY_ORDER`` mutation restores the broken ordering for the simulator.

``members`` are master identities ``uuid.incarnation`` holding every committed change;
``voters`` are the voter uuids whose majority grants leases; ``commit`` is the writer's
commit point ``(term, version)`` (defence in depth: a candidate below the highest stored
commit point refuses to lead).
"""
from __future__ import annotations

import msgspec

LogPos = tuple[int, int]  # (term of the entry, metadata version); ordered lexicographically


class Record(msgspec.Struct, frozen=True):
    rterm: int
    epoch: int
    members: tuple[str, ...]
    voters: tuple[str, ...]
    commit: LogPos = (0, 0)

    def describe(self) -> str:
        return (f"(t{self.rterm},e{self.epoch},m={{{','.join(self.members)}}},"
                f"v={{{','.join(self.voters)}}},c={self.commit[0]}/{self.commit[1]})")


NO_KEY: tuple[int, ...] = (-1, -1)


def record_key(record: Record | None, epoch_only: bool = False) -> tuple[int, ...]:
    """Order of records; ``None`` (a voter without a record) is lowest."""
    if record is None:
        return NO_KEY
    if epoch_only:
        return (record.epoch, 0)
    return (record.rterm, record.epoch)


def highest(records, epoch_only: bool = False) -> Record | None:
    best: Record | None = None
    for r in records:
        if r is not None and record_key(r, epoch_only) > record_key(best, epoch_only):
            best = r
    return best


def majority(n: int) -> int:
    return n // 2 + 1


def has_quorum(ayes, voter_sets) -> bool:
    """True when ``ayes`` holds a majority of *every* set in ``voter_sets``.

    While a voter change is pending both the old and the new set must agree, which is
    stricter than Raft's single-server rule and therefore also safe.
    """
    for voters in voter_sets:
        if not voters:
            return False
        if sum(1 for v in voters if v in ayes) < majority(len(voters)):
            return False
    return True


def quorum_time(times: dict[str, float], voter_sets) -> float | None:
    """Latest ``t`` such that a majority of every set acknowledged rounds sent at or after t."""
    result: float | None = None
    for voters in voter_sets:
        ts = sorted((times[v] for v in voters if v in times), reverse=True)
        need = majority(len(voters))
        if len(ts) < need:
            return None
        t = ts[need - 1]
        result = t if result is None else min(result, t)
    return result
