"""The voter: runs inside every chunkserver and grants leader leases.

State (HA.md "Voter state"):

* persisted, written atomically and fsynced before any reply that depends on it
  (``PersistVoterState`` comes before the reply in the ``Output``):
  ``term``, ``voted_for``, ``record``;
* volatile: ``holder``/``until`` (the lease promise), ``released`` (a term whose lease its
  holder gave back), the step-down ``target`` window, and ``quiet_until``: after a (re)start
  the voter grants nothing for a full ``D`` on its clock, because the promise it may have
  made before the crash is lost (PaxosLease's restart wait).

Rules:

* A request (vote or renewal) in ``term`` passes when ``term >= self.term``, the voter has
  not voted for another master in that term, no lease it gave another master is running,
  the holder has not released that term, and no hand-over window reserves it for another
  target.  A renewal is a vote request in the holder's term (it always passes for the
  current holder), so a leader can recruit a voter that missed its election (12c).
* Granting *is* the first lease: ``holder = candidate, until = now + D`` (PaxosLease, 5a).
* A refusal changes nothing and returns the voter's term and the time left (11a, 12b).
* A record is stored only if greater by ``(rterm, epoch)`` and only from the master it
  voted for in its current term (1c).
* ``Release(term, holder, target)`` ends that holder's lease, refuses later requests of that
  term from it and, for a step-down, grants only to ``target`` for ``D`` (10a-10c).
"""
from __future__ import annotations

from .config import (GRANT_WITHOUT_LEASE, VOTER_ADOPTS_REFUSED, VOTER_FORGETS_PROMISE,
                     VOTER_IGNORES_PROMISE, EPOCH_ONLY_ORDER, HAConfig)
from .effects import Output
from .leaselog import LeaseEvent
from .messages import (PersistVoterState, PreVote, PreVoteReply, Release, Renew, RenewReply,
                       VoteReply, VoteRequest)
from .records import Record, record_key

NEVER = float("-inf")


class Voter:
    def __init__(self, uuid: str, config: HAConfig, now: float,
                 persisted: PersistVoterState | None = None) -> None:
        self.uuid = uuid
        self.cfg = config
        self.term = persisted.term if persisted else 0
        self.voted_for = persisted.voted_for if persisted else None
        self.record: Record | None = persisted.record if persisted else None
        self.holder: str | None = None
        self.until = NEVER
        self.released: set[tuple[int, str]] = set()
        self.target: str | None = None
        self.target_until = NEVER
        forget = config.has(VOTER_FORGETS_PROMISE)
        self.quiet_until = NEVER if forget else now + config.lease_duration_s

    # ------------------------------------------------------------------ checks ----------
    def _refusal(self, now: float, term: int, who: str) -> tuple[str, float] | None:
        """Why a request in ``term`` from ``who`` must be refused, and how long to wait."""
        if now < self.quiet_until:
            return "restarting", self.quiet_until - now
        if term < self.term:
            return "stale-term", 0.0
        if term == self.term and self.voted_for not in (None, who):
            return "voted-other", 0.0
        if (term, who) in self.released:
            return "released", 0.0
        if (self.holder not in (None, who) and now < self.until
                and not self.cfg.has(VOTER_IGNORES_PROMISE)):
            return "lease-held", self.until - now
        if self.target is not None and now < self.target_until and who != self.target:
            return "handover", self.target_until - now
        return None

    def _adopt(self, out: Output, term: int, who: str) -> None:
        """Accept ``term`` for ``who``: persist before any reply, start or extend the lease."""
        if (term, who) != (self.term, self.voted_for):
            if term > self.term:
                self.released = {r for r in self.released if r[0] >= term}
            self.term, self.voted_for = term, who
            self._persist(out)
        self.holder = who

    def _persist(self, out: Output) -> None:
        out.persist.append(PersistVoterState(self.term, self.voted_for, self.record))

    def _refused(self, out: Output, term: int) -> None:
        if self.cfg.has(VOTER_ADOPTS_REFUSED) and term > self.term:
            self.term, self.voted_for = term, None
            self._persist(out)

    # ------------------------------------------------------------------ step ------------
    def step(self, now: float, msg) -> Output:
        out = Output()
        if isinstance(msg, PreVote):
            why = self._refusal(now, msg.term, msg.candidate)
            reason, wait = why if why else ("ok", 0.0)
            if why:
                self._refused(out, msg.term)
            out.send_to(msg.candidate, PreVoteReply(self.uuid, self.term, msg.round,
                                                    why is None, reason, self.record, wait))
        elif isinstance(msg, VoteRequest):
            self._vote(now, msg, out)
        elif isinstance(msg, Renew):
            self._renew(now, msg, out)
        elif isinstance(msg, Release):
            self._release(now, msg, out)
        return out

    def _vote(self, now: float, msg: VoteRequest, out: Output) -> None:
        why = self._refusal(now, msg.term, msg.candidate)
        if why is not None:
            self._refused(out, msg.term)
            reason, wait = why
            out.lease_log.append(LeaseEvent(self.uuid, self.term, "vote-refused",
                                            f"candidate={msg.candidate} term={msg.term} "
                                            f"reason={reason} wait={wait:.3f}s"))
            out.send_to(msg.candidate, VoteReply(self.uuid, self.term, msg.round, False,
                                                 reason, self.record, wait))
            return
        self._adopt(out, msg.term, msg.candidate)
        if not self.cfg.has(GRANT_WITHOUT_LEASE):
            self.until = now + self.cfg.lease_duration_s
        out.lease_log.append(LeaseEvent(self.uuid, msg.term, "vote-granted",
                                        f"candidate={msg.candidate}"))
        out.send_to(msg.candidate, VoteReply(self.uuid, msg.term, msg.round, True, "ok",
                                             self.record, 0.0))

    def _renew(self, now: float, msg: Renew, out: Output) -> None:
        why = self._refusal(now, msg.term, msg.leader)
        if why is not None:
            self._refused(out, msg.term)
            out.send_to(msg.leader, RenewReply(self.uuid, self.term, msg.round, False,
                                               why[0], self.record))
            return
        new_vote = (msg.term, msg.leader) != (self.term, self.voted_for)
        self._adopt(out, msg.term, msg.leader)
        if new_vote:
            out.lease_log.append(LeaseEvent(self.uuid, msg.term, "vote-granted",
                                            f"candidate={msg.leader} via=renew"))
        self.until = now + self.cfg.lease_duration_s
        epoch_only = self.cfg.has(EPOCH_ONLY_ORDER)
        if record_key(msg.record, epoch_only) > record_key(self.record, epoch_only):
            self.record = msg.record
            self._persist(out)
            out.lease_log.append(LeaseEvent(self.uuid, msg.term, "record-stored",
                                            msg.record.describe()))
        out.send_to(msg.leader, RenewReply(self.uuid, self.term, msg.round, True, "ok",
                                           self.record))

    def _release(self, now: float, msg: Release, out: Output) -> None:
        if msg.term != self.term or self.voted_for != msg.holder:
            return
        self.released.add((msg.term, msg.holder))
        if self.holder == msg.holder:
            self.holder, self.until = None, NEVER
        if msg.target is not None:
            self.target, self.target_until = msg.target, now + self.cfg.lease_duration_s
        out.lease_log.append(LeaseEvent(self.uuid, msg.term, "released",
                                        f"holder={msg.holder} target={msg.target}"))

    # ------------------------------------------------------------------ introspection ---
    def lease_left(self, now: float) -> float:
        return max(0.0, self.until - now) if self.holder else 0.0
