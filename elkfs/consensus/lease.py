"""Leader-side lease accounting: rounds, send times, acknowledgements.

A lease counts from the *send time* of the round an acknowledgement answers, never from
the reply's arrival (openraft's leader lease; HA-traces.md 5c): each request carries a
round id, the leader remembers when it sent that round, and the lease is
``t + D*(1-2*rho)`` for the latest ``t`` such that a majority of the voters acknowledged
rounds sent at or after ``t``.  The ``unmatched_acks`` flag (a broken variant) credits
every acknowledgement to the newest round instead.
"""
from __future__ import annotations

from .records import quorum_time

NEVER = float("-inf")


class LeaseTracker:
    def __init__(self, lease_s: float, unmatched: bool = False) -> None:
        self.lease_s = lease_s
        self.unmatched = unmatched
        self.sent: dict[int, float] = {}
        self.acked: dict[str, float] = {}
        self.latest_round = -1

    def start_round(self, round_id: int, now: float) -> None:
        self.sent[round_id] = now
        self.latest_round = round_id
        if len(self.sent) > 64:
            for r in sorted(self.sent)[:-32]:
                del self.sent[r]

    def knows(self, round_id: int) -> bool:
        return round_id in self.sent

    def ack(self, voter: str, round_id: int) -> None:
        if round_id not in self.sent:
            return
        t = self.sent[self.latest_round] if self.unmatched else self.sent[round_id]
        if t > self.acked.get(voter, NEVER):
            self.acked[voter] = t

    def until(self, voter_sets) -> float:
        t = quorum_time(self.acked, voter_sets)
        return NEVER if t is None else t + self.lease_s
