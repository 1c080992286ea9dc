"""The master's HA state machine: FOLLOWER / CANDIDATE / LEADER.

Theory of operation (HA.md "Recommended mechanism"; each rule's counterexample is in
HA-traces.md):

* **Follower.**  Replicates from the leader of the highest term it has *accepted*
  (persisted ``accepted_term``; appends of lower terms are rejected, invariant 4).  Appends
  carry ``(prev term, prev version)``; on a mismatch the follower answers with a conflict
  hint and truncates back to the first match only when a conflicting entry arrives (Raft
  AppendEntries).  It applies only committed entries, so truncation never undoes applied
  state (3b).  Acks name the exact ``(term, version)`` persisted.
* **Election.**  A follower that hears no leader for ``D`` + jitter sends ``PreVote``
  (changes nothing anywhere).  It continues only if a majority of the voters of the
  highest record ``R*`` would grant, it is a member of ``R*`` and its last pair is at
  least every reported commit point (11a, 11b).  It then persists ``term+1``, notes the
  send time of each round and asks for votes; a grant is a lease (PaxosLease).  With a
  majority of ``R*.voters`` it leads with a lease until ``t0 + D*(1-2*rho)``; otherwise it
  releases the grants and never uses that term again.
* **Leader.**  Aligns the members of ``R*`` to its log, then writes the re-stamped record
  ``R' = (term, R*.epoch+1, itself + members holding its last entry, R*.voters, commit)``
  at a majority of voters; only then does it serve (Paxos/Raft no-op, 1a-1c, 12a).  Every
  ``D/2`` (and at once for a record change) it sends a ``Renew`` round.  It checks the lease
  against ``now`` on every step and stops serving and renewing the moment it lapses
  (11c); the shell re-checks with a fresh clock before sending replies (9b).
* **Replication.**  Group commit over the record's members (plus a pending change's), the
  leader's own fsync included (finding 4).  Lagging members are shrunk out after
  ``isr_lag_timeout_s``; a caught-up follower is grown back in; one record change in
  flight.  A follower behind the leader's retained journal gets a snapshot.
* **Step-down.**  Stop taking writes, commit the in-flight ones, bring the target (a
  member) to the last entry, drop the own lease (logged), then ``Release(term, target)`` to
  the voters and ``TimeoutNow`` to the target, which campaigns at once without pre-vote
  (Raft 3.10).
* **Clients.**  Exactly-once via :mod:`.sessions`; a retry of an entry still in the
  uncommitted tail waits for it.  Reads are answered from committed state only.

Inputs are the messages of :mod:`.messages`; the single entry point is
``step(now, msg) -> Output``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .config import (EPOCH_ONLY_ORDER, NO_RESTAMP, UNMATCHED_ACKS, VERSION_ONLY_MATCH,
                     HAConfig)
from .effects import Output
from .journal import InvariantBroken, Journal
from .lease import NEVER, LeaseTracker
from .leaselog import LeaseEvent
from .messages import (AdminChangeVoters, AdminForceVoters, AdminStepDown, Append, AppendReply, ClientRead,
                       ClientRegister, ClientReply, ClientWrite, Entry, InstallSnapshot,
                       JournalSynced, JournalWrite, PeersChanged, PersistMasterTerm, PreVote,
                       PreVoteReply, Propose, Release, Renew, RenewReply, SaveSnapshot,
                       SnapshotTaken, Tick, TimeoutNow, VoteReply, VoteRequest)
from .records import LogPos, Record, has_quorum, highest, majority, record_key
from .replication import Progress, commit_point
from .sessions import (AppStateMachine, Applied, Command, RegisterSession, ReplicatedState,
                       ReplicatedStateLike, encode_payload)

FOLLOWER, CANDIDATE, LEADER = "FOLLOWER", "CANDIDATE", "LEADER"
# Legal role changes; anything else is a bug (etcd raft panics the same way).
TRANSITIONS = {
    FOLLOWER: {FOLLOWER, CANDIDATE},
    CANDIDATE: {FOLLOWER, CANDIDATE, LEADER},
    LEADER: {FOLLOWER},
}
RETRYABLE = {"lease-held", "restarting", "handover"}


class RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass
class MasterDisk:
    """What a master finds on its disk at start (the shell loads it)."""
    term: int = 0
    accepted_term: int = 0
    snapshot: SaveSnapshot | None = None
    entries: list[Entry] = field(default_factory=list)


@dataclass
class _Campaign:
    term: int
    phase: str                       # "pre" or "vote"
    started: float
    deadline: float
    rounds: dict[int, float] = field(default_factory=dict)
    replies: dict[str, object] = field(default_factory=dict)
    grants: dict[str, tuple[Record | None, float]] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    latest_round: int = -1
    forced: tuple[str, ...] | None = None     # AdminForceVoters: the voter set to count


@dataclass
class _Force:
    voters: tuple[str, ...]
    armed_at: float
    fire_at: float
    min_term: int = 0


class Master:
    def __init__(self, ident: str, addr: str, config: HAConfig, app: AppStateMachine | None,
                 rng: RandomSource, now: float, disk: MasterDisk | None = None,
                 state: ReplicatedStateLike | None = None) -> None:
        self.ident, self.addr, self.cfg, self.rng = ident, addr, config, rng
        disk = disk or MasterDisk()
        self.term = disk.term                  # highest term used or seen (never reused)
        self.accepted_term = disk.accepted_term
        self.state = state if state is not None else ReplicatedState(app)
        # Who to talk to: fixed in the simulator, refreshed by the daemon (DNS, connected
        # voters) through ``PeersChanged``.
        self.master_addrs: tuple[str, ...] = config.master_addrs
        self.voter_addrs: tuple[str, ...] = config.voter_addrs
        self.initial_voters: tuple[str, ...] = config.initial_voters
        base: LogPos = (0, 0)
        self.snap: SaveSnapshot | None = disk.snapshot
        if disk.snapshot is not None:
            base = disk.snapshot.last
            self.state.restore(disk.snapshot.data)
        entries = [e for e in disk.entries if e.version > base[1]]
        self.log = Journal(base, entries)
        self.commit = self.applied = base[1]
        self.durable = self.log.last_version
        self._writes: list[tuple[int, int, int | None]] = []   # (id, last version, trunc)
        self._next_write = 1
        self._next_round = 1
        self.role = FOLLOWER
        self.leader_ident: str | None = None
        self.leader_addr: str | None = None
        self.known_record: Record | None = None
        self.eligible = True
        self.election_at = now + config.lease_duration_s + self._jitter()
        self.campaign: _Campaign | None = None
        self._pending_ack: tuple[int, int, str] | None = None   # (term, version, addr)
        self.leader_heard_at = NEVER
        self.force: _Force | None = None
        self._reset_leader_state()

    # ================================================================= helpers ===========
    def _jitter(self) -> float:
        return self.rng.random() * self.cfg.election_jitter_s

    def _round(self) -> int:
        r = self._next_round
        self._next_round += 1
        return r

    def _set_role(self, role: str) -> None:
        if role not in TRANSITIONS[self.role]:
            raise InvariantBroken(f"invalid transition {self.role} -> {role}")
        self.role = role

    def _event(self, out: Output, event: str, detail: str = "", term: int | None = None):
        if term is None:
            term = self.accepted_term if self.role == LEADER else self.term
        out.lease_log.append(LeaseEvent(self.ident, term,
                                        event, detail))

    def _persist_term(self, out: Output) -> None:
        out.persist.append(PersistMasterTerm(self.term, self.accepted_term))

    def _epoch_only(self) -> bool:
        return self.cfg.has(EPOCH_ONLY_ORDER)

    def _version_only(self) -> bool:
        return self.cfg.has(VERSION_ONLY_MATCH)

    def _learn_record(self, rec: Record | None) -> None:
        if rec is not None and (record_key(rec, self._epoch_only())
                                > record_key(self.known_record, self._epoch_only())):
            self.known_record = rec

    def _reset_leader_state(self) -> None:
        self.ready = False
        self.lease_until = NEVER
        self.lease = LeaseTracker(self.cfg.leader_lease_s, self.cfg.has(UNMATCHED_ACKS))
        self.base_record: Record | None = None
        self.record: Record | None = None
        self.pending: Record | None = None
        self.voter_records: dict[str, Record | None] = {}
        self.progress: dict[str, Progress] = {}
        self.waiters: dict[int, list[tuple[str, str, int]]] = {}
        self.pending_index: dict[tuple[str, int], int] = {}
        self.next_renew_at = NEVER
        self.next_heartbeat_at = NEVER
        self.align_deadline = NEVER
        self.led_since = NEVER
        self.stepdown: tuple[str, float] | None = None
        self.voter_changes: list[AdminChangeVoters] = []

    # ================================================================= status ============
    def serving(self, now: float) -> bool:
        return self.role == LEADER and self.ready and now < self.lease_until

    def last(self) -> LogPos:
        return self.log.last()

    def status(self) -> str:
        if self.role == FOLLOWER and not self.eligible:
            return "FOLLOWER (catching up)"
        return self.role

    # ================================================================= entry point =======
    def step(self, now: float, msg) -> Output:
        out = Output()
        self._check_lease(now, out)
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise InvariantBroken(f"{self.role}: no handler for {type(msg).__name__}")
        handler(self, now, msg, out)
        self._check_lease(now, out)
        if self.role == LEADER:
            self._leader_progress(now, out)
        out.wake_at = self._next_wake(now)
        if self.serving(now):
            out.reply_deadline = self.lease_until
        return out

    def _next_wake(self, now: float) -> float | None:
        if self.role == FOLLOWER:
            if self.force is not None:
                return min(self.election_at, self.force.fire_at)
            return self.election_at
        if self.role == CANDIDATE:
            c = self.campaign
            times = [c.deadline] + list(c.retry_at.values())
            if self.force is not None and self._only_asking():
                times.append(self.force.fire_at)
            return min(times)
        times = [self.next_renew_at, self.lease_until, self.next_heartbeat_at]
        if not self.ready and self.align_deadline > now:
            times.append(self.align_deadline)
        if self.stepdown:
            times.append(self.stepdown[1])
        return min(t for t in times if t > NEVER)

    # ================================================================= timers ============
    def _on_tick(self, now: float, msg: Tick, out: Output) -> None:
        if self.force is not None and now >= self.force.fire_at and self._only_asking():
            if self.role == CANDIDATE:
                self.campaign = None          # a plain pre-vote gives way to the force
                self._set_role(FOLLOWER)
            self.term = max(self.term, self.force.min_term)   # never reuse a lost term
            self._start_prevote(now, out, forced=self.force.voters)
        elif self.role == FOLLOWER and now >= self.election_at:
            self._start_prevote(now, out)
        elif self.role == CANDIDATE:
            self._campaign_tick(now, out)
        elif self.role == LEADER:
            if now >= self.next_renew_at:
                self._renew_round(now, out)
            if now >= self.next_heartbeat_at:
                self._heartbeat(now, out)
            if self.stepdown and now >= self.stepdown[1]:
                self._event(out, "step-down-aborted", f"target={self.stepdown[0]}")
                self.stepdown = None

    def _check_lease(self, now: float, out: Output) -> None:
        if self.role == LEADER and now >= self.lease_until:
            self._event(out, "lease-lost", f"last={self.last()} commit={self.commit}")
            self._become_follower(now, out, None, None)
            # pre-vote makes an early attempt harmless; voters answer how long to wait
            self.election_at = now + self._jitter()

    # ================================================================= follower ==========
    def _become_follower(self, now: float, out: Output, leader: str | None,
                         leader_addr: str | None) -> None:
        if self.role == CANDIDATE:
            self._abandon(now, out, "deferring to leader")
            return self._become_follower(now, out, leader, leader_addr)
        if self.role == LEADER:
            for waiting in self.waiters.values():
                for client, session, seq in waiting:
                    out.replies.append((client, ClientReply(session, seq, "retry",
                                                            leader_hint=leader_addr)))
            self._reset_leader_state()
        self._set_role(FOLLOWER)
        self.leader_ident, self.leader_addr = leader, leader_addr
        self.election_at = now + self.cfg.lease_duration_s + self._jitter()

    def _accept_term(self, now: float, term: int, leader: str, leader_addr: str,
                     out: Output) -> bool:
        """Fencing: True if a message of ``term`` from ``leader`` may be acted on."""
        if term < self.accepted_term:
            return False
        if term > self.accepted_term:
            self.accepted_term = term
            self.term = max(self.term, term)
            self._persist_term(out)
            if self.role != FOLLOWER:
                if self.role == LEADER:
                    self._event(out, "deposed", f"by={leader} term={term}")
                self._become_follower(now, out, leader, leader_addr)
        elif self.role == LEADER:
            if leader != self.ident:
                raise InvariantBroken(f"two leaders in term {term}: {self.ident}, {leader}")
            return False
        elif self.role == CANDIDATE:
            self._become_follower(now, out, leader, leader_addr)
        self.leader_ident, self.leader_addr = leader, leader_addr
        self.election_at = now + self.cfg.lease_duration_s + self._jitter()
        self.leader_heard_at = now
        if self.force is not None:
            self._force_refused(out, f"leader {leader} of term {term} is alive")
        return True

    def _reject(self, out: Output, to: str) -> None:
        out.send_to(to, AppendReply(self.accepted_term, self.ident, self.addr, False,
                                    (0, 0), 0, self.log.last_version + 1))

    def _on_append(self, now: float, m: Append, out: Output) -> None:
        if not self._accept_term(now, m.term, m.leader, m.leader_addr, out):
            return self._reject(out, m.leader_addr)
        self._learn_record(m.record)
        self.eligible = self.known_record is None or self.ident in self.known_record.members
        if not self.log.matches(m.prev, self._version_only()):
            pv = m.prev[1]
            if pv < self.log.base[1]:
                ct, cv = 0, self.log.base[1] + 1
            elif pv > self.log.last_version:
                ct, cv = 0, self.log.last_version + 1
            else:
                ct = self.log.term_at(pv) or 0
                cv = self.log.first_of_term(pv)
            out.send_to(m.leader_addr, AppendReply(self.accepted_term, self.ident, self.addr,
                                                   False, (0, 0), ct, cv))
            return
        trunc: int | None = None
        new: list[Entry] = []
        for e in m.entries:
            if e.version <= self.log.base[1]:
                continue
            t = self.log.term_at(e.version)
            if t is None:
                new.append(e)
            elif t != e.term and not self._version_only():
                if e.version <= self.commit:
                    raise InvariantBroken(
                        f"{self.ident}: truncating committed version {e.version}")
                trunc = e.version - 1
                self.log.truncate_after(trunc)
                new.append(e)
        for e in new:
            self.log.append(e)
        if new or trunc is not None:
            self._journal_write(trunc, tuple(new), out)
        match_v = m.entries[-1].version if m.entries else m.prev[1]
        self._advance_follower_commit(min(m.commit, match_v), out)
        self._pending_ack = (m.term, match_v, m.leader_addr)
        self._maybe_ack(out)
        self._maybe_compact(out)

    def _maybe_ack(self, out: Output) -> None:
        if self._pending_ack is None:
            return
        term, v, addr = self._pending_ack
        if term != self.accepted_term or self.role != FOLLOWER:
            self._pending_ack = None
            return
        if self.durable >= v:
            t = self.log.term_at(v)
            if t is None:
                self._pending_ack = None
                return
            out.send_to(addr, AppendReply(term, self.ident, self.addr, True, (t, v)))
            self._pending_ack = None

    def _on_install(self, now: float, m: InstallSnapshot, out: Output) -> None:
        if not self._accept_term(now, m.term, m.leader, m.leader_addr, out):
            return self._reject(out, m.leader_addr)
        self._learn_record(m.record)
        if m.last[1] <= self.commit or self.log.matches(m.last):
            match_v = m.last[1]
        else:
            wid = self._next_write
            self._next_write += 1
            self.log.reset(m.last)
            self.state.restore(m.data)
            self.commit = self.applied = m.last[1]
            self.snap = SaveSnapshot(m.last, m.data, wid)
            out.journal.append(SaveSnapshot(m.last, m.data, wid))
            self._writes.append((wid, m.last[1], -1))
            self.durable = min(self.durable, -1)
            match_v = m.last[1]
        self._pending_ack = (m.term, match_v, m.leader_addr)
        self._maybe_ack(out)

    def _advance_follower_commit(self, c: int, out: Output) -> None:
        if c > self.commit:
            self.commit = min(c, self.log.last_version)
            self._apply(out)

    # ================================================================= journal ===========
    def _journal_write(self, trunc: int | None, entries: tuple[Entry, ...], out: Output):
        wid = self._next_write
        self._next_write += 1
        out.journal.append(JournalWrite(wid, trunc, entries))
        if trunc is not None:
            self.durable = min(self.durable, trunc)
        self._writes.append((wid, self.log.last_version, trunc))

    def _on_synced(self, now: float, m: JournalSynced, out: Output) -> None:
        done = [w for w in self._writes if w[0] <= m.write_id]
        self._writes = [w for w in self._writes if w[0] > m.write_id]
        if done:
            d = done[-1][1]
            for _, _, trunc in self._writes:
                if trunc is not None:
                    d = min(d, trunc)
            self.durable = max(self.durable, min(d, self.log.last_version))
        self._maybe_ack(out)

    def _apply(self, out: Output) -> None:
        while self.applied < self.commit:
            e = self.log.entry(self.applied + 1)
            a = self.state.apply(e)
            self.applied += 1
            out.applied.append(a)
            if self.role == LEADER:
                self._answer_waiters(a, out)

    def _maybe_compact(self, out: Output) -> None:
        if not self.cfg.snapshot_gap:      # the daemon's shell takes the snapshots
            return
        snap_v = self.snap.last[1] if self.snap else 0
        if self.applied - snap_v >= self.cfg.snapshot_gap:
            pos = (self.log.term_at(self.applied), self.applied)
            self.snap = SaveSnapshot(pos, self.state.snapshot())
            out.persist.append(self.snap)
            self.log.compact(max(self.log.base[1], self.applied - self.cfg.log_retain))

    # ================================================================= candidate =========
    def _start_prevote(self, now: float, out: Output,
                       forced: tuple[str, ...] | None = None) -> None:
        self._set_role(CANDIDATE)
        term = max(self.term, self.accepted_term) + 1
        c = self.campaign = _Campaign(term, "pre", now, now + self.cfg.max_round_trip_s,
                                      forced=forced)
        r = self._round()
        c.rounds[r], c.latest_round = now, r
        for v in self.voter_addrs:
            out.send_to(v, PreVote(term, self.ident, r, self.last()))

    def _start_vote(self, now: float, out: Output, reason: str,
                    forced: tuple[str, ...] | None = None) -> None:
        if self.role != CANDIDATE:
            self._set_role(CANDIDATE)
        self.term = max(self.term, self.accepted_term) + 1
        self._persist_term(out)          # durable before the requests leave
        self.campaign = _Campaign(self.term, "vote", now, now + self.cfg.max_round_trip_s,
                                  forced=forced)
        self._event(out, "election-start", f"reason={reason} last={self.last()}")
        self._send_votes(now, out, self.voter_addrs)

    def _send_votes(self, now: float, out: Output, addrs) -> None:
        c = self.campaign
        r = self._round()
        c.rounds[r], c.latest_round = now, r
        for v in addrs:
            out.send_to(v, VoteRequest(c.term, self.ident, r, self.last()))
        c.retry_at["~resend"] = now + 4 * self.cfg.request_timeout_s

    def _campaign_tick(self, now: float, out: Output) -> None:
        c = self.campaign
        if now >= c.deadline:
            if c.phase == "pre":
                self._set_role(FOLLOWER)
                self.campaign = None
                self.election_at = now + self._jitter()
            else:
                self._abandon(now, out, "timeout")
            return
        due = [v for v, t in c.retry_at.items() if t <= now]
        for v in due:
            del c.retry_at[v]
        if due and c.phase == "vote":
            self._send_votes(now, out, self.voter_addrs)
        elif due:
            self._start_prevote(now, out)

    def _abandon(self, now: float, out: Output, why: str) -> None:
        c = self.campaign
        if c.phase == "vote":
            for v in self.voter_addrs:
                out.send_to(v, Release(c.term, self.ident))
            self._event(out, "election-lost", why, term=c.term)
        self.campaign = None
        self._set_role(FOLLOWER)
        self.election_at = now + 0.01 + 2 * self._jitter()

    def _eligibility(self, rstar: Record | None, replies) -> str | None:
        """Why this master must not lead under ``rstar`` (None: it may)."""
        if rstar is None:
            if not self.initial_voters:
                return "no-record-and-not-founder"
            if self.log.last_version != 0:
                return "no-record-but-has-metadata"
        elif self.ident not in rstar.members:
            return "not-a-member"
        commits = [r.commit for r in replies if r is not None]
        if commits and self.last() < max(commits):
            return "behind-commit-point"
        return None

    def _on_prevote_reply(self, now: float, m: PreVoteReply, out: Output) -> None:
        c = self.campaign
        if self.role != CANDIDATE or c.phase != "pre" or m.round not in c.rounds:
            return
        c.replies[m.voter] = m
        self.term = max(self.term, m.term)
        if c.forced is not None:
            return self._forced_prevote_reply(now, m, out)
        rstar = highest((r.record for r in c.replies.values()), self._epoch_only())
        self._learn_record(rstar)
        voters = rstar.voters if rstar else self.initial_voters
        why = self._eligibility(rstar, [r.record for r in c.replies.values()])
        yes = [v for v, r in c.replies.items() if r.would_grant and v in voters]
        if len(yes) >= majority(len(voters)):
            if why is not None and len(c.replies) < len(self.voter_addrs):
                return       # a later reply may show a higher record that names us
            if why is not None:
                self.eligible = False
                self._event(out, "not-eligible", f"{why} record="
                            f"{rstar.describe() if rstar else None} last={self.last()}")
                self.campaign = None
                self._set_role(FOLLOWER)
                self.election_at = now + self.cfg.lease_duration_s + self._jitter()
                return
            self.eligible = True
            return self._start_vote(now, out, "prevote")
        need = majority(len(voters)) - len(yes)
        # not yet: voters that refused only because they are at our term already (they
        # voted in it, e.g. for a candidate that has since lost its disk) would say yes to
        # a higher one; a pre-vote changes nothing, so ask again at once with term+1
        higher = [v for v, r in c.replies.items() if v in voters and not r.would_grant
                  and r.reason in ("voted-other", "stale-term") and r.term >= c.term]
        if need <= len(higher) and "*" not in c.retry_at:
            c.retry_at = {"*": now}
            return
        # if voters that only wait (a lease or a restart silence) would make a majority,
        # ask again the moment enough of them are free
        waits = sorted(r.wait_s for v, r in c.replies.items()
                       if v in voters and not r.would_grant and r.reason in RETRYABLE)
        if need <= len(waits):
            at = now + waits[need - 1] + 0.005 + self._jitter() * 0.2
            if c.retry_at.get("*", float("inf")) > at:
                c.retry_at = {"*": at}
                c.deadline = max(c.deadline, at + 0.001)

    def _on_vote_reply(self, now: float, m: VoteReply, out: Output) -> None:
        c = self.campaign
        if self.role != CANDIDATE or c.phase != "vote" or m.round not in c.rounds:
            mine = (self.role == LEADER and m.term == self.accepted_term) or \
                (c is not None and c.term == m.term)
            if m.granted and not mine:   # a late grant of an abandoned term: give it back
                for v in self.voter_addrs:
                    out.send_to(v, Release(m.term, self.ident))
            return
        if m.granted and m.term == c.term:
            sent = c.rounds[c.latest_round] if self.cfg.has(UNMATCHED_ACKS) else c.rounds[m.round]
            old = c.grants.get(m.voter)
            c.grants[m.voter] = (m.record, max(sent, old[1]) if old else sent)
            c.retry_at.pop(m.voter, None)
        elif not m.granted:
            self.term = max(self.term, m.term)
            c.replies[m.voter] = m
            if c.forced is not None and m.reason == "lease-held":
                self._force_refused(out, f"voter {m.voter} holds a lease for "
                                         f"{m.wait_s:.3f}s more")
                return self._abandon(now, out, "forced set refused")
            if m.reason in RETRYABLE:
                c.retry_at[m.voter] = now + m.wait_s + 0.002
                c.deadline = max(c.deadline, c.retry_at[m.voter] + self.cfg.max_round_trip_s)
        if c.forced is not None:
            rstar = self._forced_record(c, [g[0] for g in c.grants.values()])
        else:
            rstar = highest((g[0] for g in c.grants.values()), self._epoch_only())
        voters = rstar.voters if rstar else self.initial_voters
        counted = {v: g for v, g in c.grants.items() if v in voters}
        if len(counted) >= majority(len(voters)):
            why = self._eligibility(rstar, [g[0] for g in c.grants.values()])
            if why is not None:
                self.eligible = False
                self._learn_record(rstar)
                return self._abandon(now, out, why)
            return self._become_leader(now, rstar, counted, out)
        lost = [v for v, r in c.replies.items()
                if v in voters and v not in c.grants and r.reason not in RETRYABLE]
        if len(lost) > len(voters) - majority(len(voters)):
            self._abandon(now, out, "split-vote")

    # ================================================================= leader ============
    def _become_leader(self, now: float, rstar: Record | None, counted, out: Output) -> None:
        c = self.campaign
        self.campaign = None
        if c.forced is not None:
            self._event(out, "force-done", f"voters={{{','.join(c.forced)}}} "
                                           f"record={rstar.describe()}", term=c.term)
        self.force = None
        self._set_role(LEADER)
        self.accepted_term = c.term
        self._persist_term(out)
        self.leader_ident, self.leader_addr = self.ident, self.addr
        self._reset_leader_state()
        self.led_since = now
        for v, (_, t) in counted.items():
            self.lease.acked[v] = t
        voters = rstar.voters if rstar else self.initial_voters
        self.base_record = rstar or Record(0, 0, (), voters)
        self.lease_until = self.lease.until([voters])
        self._event(out, "lease-acquired",
                    f"until=+{self.lease_until - now:.3f}s record="
                    f"{rstar.describe() if rstar else 'bootstrap'} last={self.last()}")
        for addr in self.master_addrs:
            if addr != self.addr:
                self.progress[addr] = Progress(next_version=self.log.last_version + 1)
        self.align_deadline = now + self.cfg.align_timeout_s
        if self.cfg.has(NO_RESTAMP) and rstar is not None:
            self.record = rstar
            self.ready = True
        self._heartbeat(now, out)
        self._renew_round(now, out)

    def _voter_sets(self) -> list[tuple[str, ...]]:
        rec = self.record or self.base_record
        sets = [rec.voters]
        if self.pending is not None and self.pending.voters != rec.voters:
            sets.append(self.pending.voters)
        return sets

    def _renew_round(self, now: float, out: Output) -> None:
        r = self._round()
        self.lease.start_round(r, now)
        rec = self.pending or self.record
        for v in self.voter_addrs:
            out.send_to(v, Renew(self.accepted_term, self.ident, r, rec))
        self.next_renew_at = now + self.cfg.renew_period_s

    def _on_renew_reply(self, now: float, m: RenewReply, out: Output) -> None:
        if self.role != LEADER or not self.lease.knows(m.round):
            return
        if not m.ok:
            self.term = max(self.term, m.term)
            return
        if m.term != self.accepted_term:
            return
        self.lease.ack(m.voter, m.round)
        eo = self._epoch_only()
        if record_key(m.record, eo) > record_key(self.voter_records.get(m.voter), eo):
            self.voter_records[m.voter] = m.record     # replies may arrive reordered
        new_until = self.lease.until(self._voter_sets())
        if new_until > self.lease_until:
            if self.lease_until - now < self.cfg.renew_period_s / 2:
                self._event(out, "lease-renewed-late",
                            f"left={self.lease_until - now:.3f}s until=+{new_until - now:.3f}s")
            self.lease_until = new_until
        if self.pending is not None:
            key = record_key(self.pending, self._epoch_only())
            ayes = {v for v, r in self.voter_records.items()
                    if record_key(r, self._epoch_only()) >= key}
            sets = [self.pending.voters] + [s for s in self._voter_sets()
                                            if s != self.pending.voters]
            if has_quorum(ayes, sets):
                self._record_stored(now, out)

    def _record_stored(self, now: float, out: Output) -> None:
        rec, self.pending = self.pending, None
        self.record = rec
        self._event(out, "record-stored", rec.describe())
        if not self.ready:
            self.ready = True
            self._event(out, "serving", f"after=+{now - self.led_since:.3f}s")

    def _propose(self, now: float, rec: Record, out: Output, why: str) -> None:
        self.pending = rec
        self._event(out, "record-proposed", f"{why} {rec.describe()}")
        self._count_lease_from_proposal(now)
        self._renew_round(now, out)

    def _count_lease_from_proposal(self, now: float) -> None:
        """A proposed voter set counts from the proposal (HA.md "Voter set"): voters of the
        new set may store it and elect under it at once, so a lease counted over the old
        set alone is no longer backed.  Recount over both sets; this may shorten it."""
        self.lease_until = min(self.lease_until, self.lease.until(self._voter_sets()))

    def _leader_progress(self, now: float, out: Output) -> None:
        """After every input: re-stamp, commit, membership changes, hand-over."""
        if self.role != LEADER:
            return
        last_v = self.log.last_version
        if not self.ready:
            if self.pending is None and self.durable >= last_v:
                base = self.base_record
                holders = [p.ident for p in self.progress.values()
                           if p.ident in base.members and p.match_version == last_v]
                others = [m for m in base.members if m != self.ident]
                if set(others) <= set(holders) or now >= self.align_deadline:
                    members = (self.ident,) + tuple(sorted(set(holders)))
                    commit = self.last()
                    self._propose(now, Record(self.accepted_term, base.epoch + 1, members,
                                              base.voters, commit), out, "restamp")
            return
        c = commit_point(self.cfg, self.ident, self.durable, last_v, self.record,
                         self.pending, self.progress)
        if c > self.commit:
            self.commit = c
            self._apply(out)
            self._maybe_compact(out)
        if self.stepdown is not None:
            self._maybe_hand_over(now, out)
        elif self.pending is None:
            self._maybe_change_members(now, out)

    def _maybe_change_members(self, now: float, out: Output) -> None:
        rec, last_v = self.record, self.log.last_version
        by_ident = {p.ident: p for p in self.progress.values() if p.ident}
        for m in rec.members:
            if m == self.ident:
                continue
            p = by_ident.get(m)
            lag_since = max(p.caught_up_at if p else NEVER, self.led_since)
            # Shrink only when the voters still hear us after the member fell behind: a
            # leader that hears nobody (its answers cut off) must not leave a record of
            # itself alone at the voters, which no other master could lead under.
            heard_at = self.lease_until - self.cfg.leader_lease_s
            lagged_at = lag_since + self.cfg.isr_lag_timeout_s
            if (p is None or p.match_version < last_v) and now > lagged_at:
                if heard_at > lagged_at:
                    members = tuple(x for x in rec.members if x != m)
                    return self._propose(now, Record(self.accepted_term, rec.epoch + 1,
                                                     members, rec.voters, self._commit_pos()),
                                         out, f"shrink -{m}")
                if self.lease.sent.get(self.lease.latest_round, NEVER) <= lagged_at:
                    # Ask the voters now rather than at the next renewal (up to
                    # renew_period_s away): every change waits for this member until
                    # it is shrunk out, and the answers are the proof needed.
                    self._renew_round(now, out)
        if self.stepdown is None:
            for p in self.progress.values():
                if p.ident and p.ident not in rec.members and p.match_version == last_v \
                        and self.durable >= last_v:
                    members = rec.members + (p.ident,)
                    return self._propose(now, Record(self.accepted_term, rec.epoch + 1, members,
                                                     rec.voters, self._commit_pos()), out,
                                         f"grow +{p.ident}")
        while self.voter_changes:
            ch = self.voter_changes.pop(0)
            voters = tuple(v for v in rec.voters if v != ch.remove)
            if ch.add and ch.add not in voters:
                voters += (ch.add,)
            if voters == rec.voters:
                self._event(out, "voters-unchanged", f"+{ch.add} -{ch.remove}")
                continue
            if not voters:
                self._event(out, "voters-change-refused", f"-{ch.remove}: no voter would remain")
                continue
            # the new set counts from the proposal on: it must already back a lease alone,
            # or the change would cost the lease (and a set that cannot elect is a trap)
            if self.lease.until([voters]) <= now:
                self._event(out, "voters-change-refused",
                            f"+{ch.add} -{ch.remove}: no majority of the new set "
                            f"{{{','.join(voters)}}} acknowledges this leader")
                continue
            return self._propose(now, Record(self.accepted_term, rec.epoch + 1, rec.members,
                                             voters, self._commit_pos()), out,
                                 f"voters +{ch.add} -{ch.remove}")

    def _commit_pos(self) -> LogPos:
        return (self.log.term_at(self.commit) or 0, self.commit)

    # ---------------------------------------------------------------- replication -------
    def _heartbeat(self, now: float, out: Output) -> None:
        for addr, p in self.progress.items():
            if p.last_ack > NEVER and p.match_version < self.log.last_version:
                # retransmit what was not acknowledged (a fresh follower is probed at the end)
                p.next_version = min(p.next_version, p.match_version + 1)
            self._send_append(now, addr, p, out)
        self.next_heartbeat_at = now + self.cfg.heartbeat_s

    def _send_append(self, now: float, addr: str, p: Progress, out: Output) -> None:
        rec = self.pending or self.record
        if p.next_version <= self.log.base[1]:
            snap = self.snap
            if snap is None or snap.last[1] < self.log.base[1]:
                raise InvariantBroken("journal compacted without a snapshot")
            out.send_to(addr, InstallSnapshot(self.accepted_term, self.ident, self.addr, snap.last,
                                              snap.data, rec))
            p.next_version = snap.last[1] + 1
        else:
            prev_v = p.next_version - 1
            entries = self.log.slice(p.next_version, self.cfg.max_batch)
            out.send_to(addr, Append(self.accepted_term, self.ident, self.addr,
                                     (self.log.term_at(prev_v), prev_v), entries,
                                     self.commit, rec))
            if entries:
                p.next_version = entries[-1].version + 1
        p.last_send = now

    def _on_append_reply(self, now: float, m: AppendReply, out: Output) -> None:
        if self.role != LEADER:
            return
        if m.term > self.term:
            self.term = m.term
        p = self.progress.get(m.sender_addr)
        if p is None or m.term != self.accepted_term:
            return
        if p.ident != m.sender:      # a new incarnation at that address: start over
            p.ident, p.match_version, p.caught_up_at = m.sender, 0, NEVER
        if m.ok:
            if not self.log.matches(m.match, self._version_only()) and \
                    m.match[1] > self.log.base[1]:
                return
            p.last_ack = now
            if m.match[1] > p.match_version:
                p.match_version = m.match[1]
            p.next_version = max(p.next_version, p.match_version + 1)
            if p.match_version >= self.log.last_version:
                p.caught_up_at = now
            return
        if m.conflict_term:
            lv = self.log.last_of_term(m.conflict_term, m.conflict_version + 10**9)
            nxt = lv + 1 if lv is not None else m.conflict_version
        else:
            nxt = m.conflict_version
        before = p.next_version
        p.next_version = max(p.match_version + 1, min(p.next_version, nxt), 1)
        if p.next_version > self.log.last_version + 1:
            p.next_version = self.log.last_version + 1
        if p.next_version < before or now - p.last_send > self.cfg.request_timeout_s:
            self._send_append(now, m.sender_addr, p, out)

    def _append_local(self, payload: bytes, out: Output) -> int:
        v = self.log.last_version + 1
        e = Entry(self.accepted_term, v, payload)
        self.log.append(e)
        self._journal_write(None, (e,), out)
        return v

    def _flush_appends(self, now: float, out: Output) -> None:
        for addr, p in self.progress.items():
            if p.next_version <= self.log.last_version:
                self._send_append(now, addr, p, out)

    # ---------------------------------------------------------------- clients -----------
    def _redirect(self, out: Output, client: str, session: str, seq: int) -> None:
        hint = self.leader_addr if self.leader_addr != self.addr else None
        out.replies.append((client, ClientReply(session, seq, "redirect", leader_hint=hint)))

    def _taking_writes(self, now: float) -> bool:
        return self.serving(now) and self.stepdown is None

    def _on_register(self, now: float, m: ClientRegister, out: Output) -> None:
        if not self._taking_writes(now):
            return self._redirect(out, m.client, m.session, 0)
        if m.session in self.state.sessions:
            out.replies.append((m.client, ClientReply(m.session, 0, "ok",
                                                      version=self.applied)))
            return
        key = (m.session, 0)
        v = self.pending_index.get(key)
        if v is None:
            v = self._append_local(encode_payload(RegisterSession(m.session)), out)
            self.pending_index[key] = v
            self._flush_appends(now, out)
        self.waiters.setdefault(v, []).append((m.client, m.session, 0))

    def _on_write(self, now: float, m: ClientWrite, out: Output) -> None:
        if not self._taking_writes(now):
            if self.serving(now):
                out.replies.append((m.client, ClientReply(m.session, m.seq, "retry")))
                return
            return self._redirect(out, m.client, m.session, m.seq)
        status, hit = self.state.lookup(m.session, m.seq)
        if status == "done":
            out.replies.append((m.client, ClientReply(m.session, m.seq, "ok", hit[1], hit[0])))
            return
        key = (m.session, m.seq)
        v = self.pending_index.get(key)
        if v is None:
            if status != "ok" and (m.session, 0) not in self.pending_index:
                out.replies.append((m.client, ClientReply(m.session, m.seq, "error",
                                                          detail=status)))
                return
            payload = encode_payload(Command(m.session, m.seq, m.lowest_unanswered, m.body))
            v = self._append_local(payload, out)
            self.pending_index[key] = v
            self._flush_appends(now, out)
        self.waiters.setdefault(v, []).append((m.client, m.session, m.seq))

    def _answer_waiters(self, a: Applied, out: Output) -> None:
        waiting = self.waiters.pop(a.version, [])
        if a.session is not None:
            self.pending_index.pop((a.session, a.seq), None)
        for client, session, seq in waiting:
            if a.error:
                out.replies.append((client, ClientReply(session, seq, "error",
                                                        detail=a.error)))
                continue
            status, hit = self.state.lookup(session, seq)
            if seq == 0:
                out.replies.append((client, ClientReply(session, 0, "ok", version=a.version)))
            elif hit is not None:
                out.replies.append((client, ClientReply(session, seq, "ok", hit[1], hit[0])))
            else:
                out.replies.append((client, ClientReply(session, seq, "ok", a.result,
                                                        a.version)))

    def _on_read(self, now: float, m: ClientRead, out: Output) -> None:
        if not self.serving(now):
            return self._redirect(out, m.client, "", m.req)
        result = self.state.app.read(m.query)
        out.replies.append((m.client, ClientReply("", m.req, "ok", result, self.applied)))

    # ---------------------------------------------------------------- admin -------------
    def _on_stepdown(self, now: float, m: AdminStepDown, out: Output) -> None:
        if not self.serving(now) or self.stepdown is not None:
            return
        others = [x for x in self.record.members if x != self.ident]
        by_ident = {p.ident: p for p in self.progress.values() if p.ident}
        if m.target is not None:
            target = m.target if m.target in others else None
        else:
            ranked = sorted(others, key=lambda x: by_ident[x].match_version
                            if x in by_ident else -1, reverse=True)
            target = ranked[0] if ranked else None
        if target is None:
            self._event(out, "step-down-refused", f"no member target ({m.target})")
            return
        self.stepdown = (target, now + self.cfg.lease_duration_s)
        self._event(out, "step-down", f"target={target}")

    def _maybe_hand_over(self, now: float, out: Output) -> None:
        target, _ = self.stepdown
        if target not in self.record.members:
            self._event(out, "step-down-aborted", f"target={target} left the record")
            self.stepdown = None
            return
        by_ident = {p.ident: (a, p) for a, p in self.progress.items() if p.ident}
        if target not in by_ident or self.pending is not None:
            return
        addr, p = by_ident[target]
        last_v = self.log.last_version
        if p.match_version < last_v or self.commit < last_v:
            return
        self.lease_until = now        # drop the own lease first (HA-traces.md 10a)
        self._event(out, "lease-released", f"handover to={target}")
        for v in self.voter_addrs:
            out.send_to(v, Release(self.accepted_term, self.ident, target))
        out.send_to(addr, TimeoutNow(self.accepted_term, self.ident, self.record))
        self._become_follower(now, out, None, None)

    def _on_timeout_now(self, now: float, m: TimeoutNow, out: Output) -> None:
        if m.term < self.accepted_term or self.role != FOLLOWER:
            return
        self._learn_record(m.record)
        if self.known_record is not None and self.ident not in self.known_record.members:
            return
        self._start_vote(now, out, f"handover from {m.leader}")

    def _on_change_voters(self, now: float, m: AdminChangeVoters, out: Output) -> None:
        """One voter at a time (HA.md): a replacement (add and remove in one request) is
        queued as two changes, the addition first, so that a live new voter joins before
        the lost one leaves; each waits for the previous one to reach a majority."""
        if not self.serving(now):
            self._event(out, "voters-change-refused", f"+{m.add} -{m.remove}: not serving")
            return
        if m.add is not None and m.remove is not None:
            self.voter_changes += [AdminChangeVoters(add=m.add),
                                   AdminChangeVoters(remove=m.remove)]
        else:
            self.voter_changes.append(m)
        self._event(out, "voters-change-queued", f"+{m.add} -{m.remove}")

    # ---------------------------------------------------------------- forced voter set -
    def _force_wait_s(self) -> float:
        """Longer, in real time, than any promise a voter may still keep: ``D`` on the
        voter's clock, measured on this one."""
        rho = self.cfg.rho
        return self.cfg.lease_duration_s * (1 + rho) / (1 - rho)

    def _only_asking(self) -> bool:
        """A follower, or a candidate still in a plain pre-vote (which changed nothing)."""
        return self.role == FOLLOWER or (self.role == CANDIDATE and self.campaign.phase == "pre"
                                         and self.campaign.forced is None)

    def _force_refusal(self, now: float) -> str | None:
        if not self._only_asking():
            return f"this master is {self.role}"
        if now - self.leader_heard_at < self._force_wait_s():
            return f"heard leader {self.leader_ident} {now - self.leader_heard_at:.3f}s ago"
        return None

    def _on_force_voters(self, now: float, m: AdminForceVoters, out: Output) -> None:
        """Arm, wait, check, then campaign with ``m.voters`` as the voter set.

        A lease may rest on promises of the very voters that are gone: they last at most
        ``D`` (their clocks) after the last one was made, so the force waits that long
        after the command, and gives up if a leader shows up meanwhile.  When it fires it
        asks every voter (pre-vote); a voter that holds a lease for anyone refuses the
        force.  A master behind a commit point a voter reports refuses too (pick the
        master with the highest (term, version) pair).  The forced record, ``(new term,
        highest epoch + 1, {this master}, voters)``, outranks every stored record."""
        if self.force is not None and self.force.voters == tuple(m.voters):
            self._event(out, "force-pending", f"fires in {self.force.fire_at - now:.3f}s")
            return                             # a repeated command keeps the first timer
        why = self._force_refusal(now) if m.voters else "empty voter set"
        if why is not None:
            self._event(out, "force-refused", f"voters={{{','.join(m.voters)}}}: {why}")
            return
        wait = self._force_wait_s()
        self.force = _Force(tuple(m.voters), now, now + wait, m.min_term)
        self._event(out, "force-armed", f"voters={{{','.join(m.voters)}}} fires in "
                                        f"{wait:.3f}s unless a leader or a lease shows up")

    def _force_refused(self, out: Output, why: str) -> None:
        self._event(out, "force-refused", f"voters={{{','.join(self.force.voters)}}}: {why}")
        self.force = None

    def _force_lease_live(self, replies) -> str | None:
        for r in replies:
            if not r.would_grant and r.reason == "lease-held":
                return f"voter {r.voter} holds a lease for {r.wait_s:.3f}s more"
        return None

    def _forced_record(self, c: _Campaign, records) -> Record:
        top = highest(list(records) + [self.known_record])
        epoch = top.epoch if top else 0
        return Record(c.term, epoch + 1, (self.ident,), c.forced, self.last())

    def _forced_prevote_reply(self, now: float, m: PreVoteReply, out: Output) -> None:
        c = self.campaign
        records = [r.record for r in c.replies.values()]
        why = self._force_lease_live(c.replies.values())
        if why is None:
            why = self._eligibility(self._forced_record(c, records), records)
        if why is not None:
            self._force_refused(out, why)
            self.campaign = None
            self._set_role(FOLLOWER)
            self.election_at = now + self.cfg.lease_duration_s + self._jitter()
            return
        yes = [v for v, r in c.replies.items() if r.would_grant and v in c.forced]
        if len(yes) >= majority(len(c.forced)) and set(c.forced) <= set(c.replies):
            self._event(out, "force-fired", f"voters={{{','.join(c.forced)}}}")
            self._start_vote(now, out, "forced voter set", forced=c.forced)

    # ---------------------------------------------------------------- daemon shell -----
    def _on_propose(self, now: float, m: Propose, out: Output) -> None:
        """Entries the leader's shell already applied to its metadata; answered by the
        shell once ``commit`` reaches them."""
        if not self._taking_writes(now):
            return
        first = self.log.last_version + 1
        entries = tuple(Entry(self.accepted_term, first + i, p) for i, p in enumerate(m.payloads))
        for e in entries:
            self.log.append(e)
        if entries:
            self._journal_write(None, entries, out)
            self._flush_appends(now, out)
        out.proposed = self.log.last_version

    def _on_peers(self, now: float, m: PeersChanged, out: Output) -> None:
        self.voter_addrs = m.voter_addrs
        self.initial_voters = m.bootstrap_voters
        if m.master_addrs == self.master_addrs:
            return
        self.master_addrs = m.master_addrs
        if self.role == LEADER:
            for addr in m.master_addrs:
                if addr != self.addr and addr not in self.progress:
                    self.progress[addr] = Progress(next_version=self.log.last_version + 1)
                    self._send_append(now, addr, self.progress[addr], out)
            for addr in [a for a in self.progress if a not in m.master_addrs]:
                del self.progress[addr]     # a member there is shrunk out after the lag

    def _on_snapshot_taken(self, now: float, m: SnapshotTaken, out: Output) -> None:
        v = m.last[1]
        if v > self.applied or v < self.log.base[1] or self.log.term_at(v) != m.last[0]:
            return                           # not of our committed log (raced a truncation)
        if self.snap is None or v > self.snap.last[1]:
            self.snap = SaveSnapshot(m.last, m.data)
            self.log.compact(max(self.log.base[1], v - self.cfg.log_retain))

    def _ignore(self, now: float, m, out: Output) -> None:
        pass


_HANDLERS = {
    Tick: Master._on_tick,
    Append: Master._on_append,
    InstallSnapshot: Master._on_install,
    AppendReply: Master._on_append_reply,
    JournalSynced: Master._on_synced,
    PreVoteReply: Master._on_prevote_reply,
    VoteReply: Master._on_vote_reply,
    RenewReply: Master._on_renew_reply,
    TimeoutNow: Master._on_timeout_now,
    ClientRegister: Master._on_register,
    ClientWrite: Master._on_write,
    ClientRead: Master._on_read,
    AdminStepDown: Master._on_stepdown,
    AdminChangeVoters: Master._on_change_voters,
    AdminForceVoters: Master._on_force_voters,
    Propose: Master._on_propose,
    PeersChanged: Master._on_peers,
    SnapshotTaken: Master._on_snapshot_taken,
    PreVote: Master._ignore,
    VoteRequest: Master._ignore,
    Renew: Master._ignore,
    Release: Master._ignore,
}
