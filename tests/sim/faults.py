"""Fault injection for the simulated world (a mixin of :class:`~tests.sim.world.World`).

Every fault is drawn from the world's fault random source, so a seed replays exactly.
Faults stay within a budget that leaves the cluster survivable: a majority of voters and
an eligible master are never destroyed for good (TigerBeetle's ClusterFaultAtlas does the
same for its storage faults).
"""
from __future__ import annotations

from elkfs.consensus.identity import SAVE_FSYNC
from elkfs.consensus.messages import AdminChangeVoters, AdminForceVoters, AdminStepDown
from elkfs.consensus.records import highest

# The fault mix.  Each seed keeps a random subset with random weights (swarm testing:
# a seed that does many step-downs or many power losses reaches paths a uniform mix
# rarely does).
BASE_WEIGHTS = {
    "crash-m": 10, "crash-v": 8, "pause": 6, "suspend": 3, "partition": 14, "stall": 5,
    "rate": 3, "wipe-v": 1, "wipe-m": 1, "step-down": 4, "net": 2, "strand": 4,
    "slow-links": 4, "bounce": 4, "slow-election": 4, "power": 6, "replay": 5,
    "voters": 3, "disaster": 3,
}


# Narrower mixes for mutants whose trace the whole mix dilutes (`--focus NAME`):
# "minority-records" is HA-traces.md finding 1: a leader cut off from the others proposes
# a record only a minority stores, dies, and a later candidate weighs records.
FOCUS_WEIGHTS = {
    "minority-records": {"crash-m": 10, "strand": 8, "partition": 10, "pause": 4, "power": 4},
}

UNFAIR_WEIGHTS = {"clock": {"clock-beyond-rho": 4}, "freeze": {"freeze": 4},
                  "stale-voter": {"stale-voter": 4}}


def swarm_weights(r) -> dict:
    weights = {}
    for kind, w in BASE_WEIGHTS.items():
        if r.random() < 0.25:
            continue
        weights[kind] = w * r.choice([0.3, 1.0, 1.0, 3.0])
    return weights or dict(BASE_WEIGHTS)

from .oracle import Violation  # noqa: F401  (faults may raise it)


class Faults:
    """Methods ``fault_<kind>`` pick a victim and break it; ``ev_*`` end the fault."""

    # ------------------------------------------------------------------ faults ----------
    def ev_fault(self) -> None:
        if self.healed:
            return
        self.stats["faults"] += 1
        r = self.r_fault
        weights = self.p.weights or BASE_WEIGHTS
        kinds = list(weights)
        kind = r.choices(kinds, [weights[k] for k in kinds])[0]
        self.stats.setdefault("fault:" + kind, 0)
        self.stats["fault:" + kind] += 1
        getattr(self, "fault_" + kind.replace("-", "_"))(r)
        self.at(self.t + r.expovariate(self.p.fault_rate), "fault")

    def _pick(self, r, names):
        return self.nodes[r.choice(names)]

    def fault_crash_m(self, r) -> None:
        n = self._pick(r, self.masters)
        if r.random() < 0.5:
            n = self.current_leader() or n
        self.crash(n)
        self.at(self.t + r.uniform(0.05, 4.0), "start", n.name)

    def fault_crash_v(self, r) -> None:
        n = self._pick(r, self.voters)
        self.crash(n)
        self.at(self.t + r.uniform(0.0, 3.0), "start", n.name)

    def fault_pause(self, r, why: str = "pause") -> None:
        n = self._pick(r, self.masters if r.random() < 0.7 else self.voters)
        if r.random() < 0.5 and n.kind == "master":
            n = self.current_leader() or n
        if not n.up or n.paused:
            return
        n.paused = True
        self.log(why, n.name)
        self.at(self.t + r.uniform(0.2, 3.5) * self.p.lease_s, "resume", n.name, n.epoch)

    def fault_suspend(self, r) -> None:
        # CLOCK_BOOTTIME keeps counting through a suspend, so a suspend is a long pause
        self.fault_pause(r, "suspend")

    def ev_resume(self, name: str, epoch: int) -> None:
        n = self.nodes[name]
        if n.epoch != epoch or not n.paused:
            return
        n.paused = False
        self.log("resume", name)
        if n.frozen_at is not None:
            # the clock stood still while the host was frozen: it resumes where it stopped
            n.clock.base_local, n.clock.base_real = n.clock.local(n.frozen_at), self.t
            n.frozen_at = None
        if n.held:
            self.at(self.t, "flush", name, n.epoch)
        if n.deferred is not None:
            msg, stale, arrived = n.deferred
            n.deferred = None
            self.at(self.t, "process", name, n.epoch, msg, stale, arrived)
        else:
            n.busy = False
            self.kick(n)

    def fault_partition(self, r) -> None:
        names = list(self.nodes)
        kind = r.choice(["isolate", "oneway-in", "oneway-out", "split", "masters", "pair"])
        cut: set[tuple[str, str]] = set()
        if kind in ("isolate", "oneway-in", "oneway-out"):
            x = self._pick(r, names).name
            if r.random() < 0.5 and self.current_leader():
                x = self.current_leader().name
            for y in names:
                if y != x:
                    if kind != "oneway-out":
                        cut.add((y, x))
                    if kind != "oneway-in":
                        cut.add((x, y))
        elif kind == "split":
            # every master gets its own subset of voters
            for v in self.voters:
                allowed = {m for m in self.masters if r.random() < 0.5}
                for m in self.masters:
                    if m not in allowed:
                        cut |= {(m, v), (v, m)}
            if r.random() < 0.5:
                for a in self.masters:
                    for b in self.masters:
                        if a != b:
                            cut.add((a, b))
        elif kind == "masters":
            for a in self.masters:
                for b in self.masters:
                    if a != b and r.random() < 0.5:
                        cut |= {(a, b), (b, a)}
        else:
            a, b = r.sample(names, 2)
            cut |= {(a, b)} if r.random() < 0.5 else {(a, b), (b, a)}
        self.blocked |= cut
        self.log("partition", kind, sorted(cut)[:6], "..." if len(cut) > 6 else "")
        self.at(self.t + r.uniform(0.3, 5.0), "unpartition", frozenset(cut))

    def ev_unpartition(self, cut) -> None:
        if not self.healed:
            self.blocked -= cut
            self.log("heal-cut", len(cut))

    def fault_strand(self, r) -> None:
        """Cut the leader off from the other masters and from all voters but one, so its
        proposals reach a minority, then crash it (HA-traces.md 1a-1c)."""
        ldr = self.current_leader()
        if ldr is None:
            return
        keep = r.choice(self.voters)
        cut = set()
        for y in self.nodes:
            if y != ldr.name and y != keep:
                cut |= {(ldr.name, y), (y, ldr.name)}
        self.blocked |= cut
        self.log("strand", ldr.name, f"keeps {keep}")
        self.at(self.t + r.uniform(0.5, 4.0), "unpartition", frozenset(cut))
        if r.random() < 0.7:
            self.at(self.t + r.uniform(0.2, 1.5), "crash_at", ldr.name, ldr.epoch,
                    r.uniform(0.5, 4.0))

    def ev_crash_at(self, name: str, epoch: int, down_s: float) -> None:
        n = self.nodes[name]
        if n.epoch == epoch and not self.healed:
            self.crash(n)
            self.at(self.t + down_s, "start", name)
            if self.r_fault.random() < 0.5:
                # the stranded leader returns with its minority proposal just as the leader
                # that replaced it dies: the second half of HA-traces.md 1a-1c
                self.at(self.t + down_s + self.r_fault.uniform(0.0, 0.6), "crash_leader",
                        name)

    def ev_crash_leader(self, spare: str) -> None:
        ldr = self.current_leader()
        if ldr is not None and ldr.name != spare and not self.healed:
            self.crash(ldr)
            self.at(self.t + self.r_fault.uniform(1.0, 3.0), "start", ldr.name)

    def fault_slow_links(self, r) -> None:
        """Voter replies to a master arrive late on some links (acks of old rounds)."""
        m = self.current_leader() or self._pick(r, self.masters)
        links = {(v, m.name) for v in self.voters if r.random() < 0.5}
        extra = r.uniform(0.2, 1.5) * self.p.lease_s / 2
        for link in links:
            self.slow[link] = extra
        self.log("slow", sorted(links), f"+{extra:.2f}s")
        self.at(self.t + r.uniform(1.0, 4.0), "unslow", frozenset(links))

    def fault_slow_election(self, r) -> None:
        """The leader dies while voter replies crawl: candidacies overlap (trace 5a)."""
        links = {(v, m) for v in self.voters for m in self.masters}
        for link in links:
            self.slow[link] = r.uniform(0.05, 0.4)
        self.log("slow", "all voter->master links")
        self.at(self.t + r.uniform(3.0, 5.0), "unslow", frozenset(links))
        ldr = self.current_leader()
        if ldr is not None:
            self.crash(ldr)
            self.at(self.t + r.uniform(0.5, 4.0), "start", ldr.name)

    def ev_unslow(self, links) -> None:
        for link in links:
            self.slow.pop(link, None)

    def fault_bounce(self, r) -> None:
        """Masters lose sight of each other while some voters restart at once: the
        restarted voters' lost promises are what the restart silence protects."""
        cut = {(a, b) for a in self.masters for b in self.masters if a != b}
        self.blocked |= cut
        d = self.p.lease_s
        self.log("bounce", "masters cut")
        self.at(self.t + r.uniform(d + 0.5, 2.5 * d), "unpartition", frozenset(cut))
        self.at(self.t + r.uniform(d + 0.2, 2 * d), "bounce_voters")

    def ev_bounce_voters(self) -> None:
        if self.healed:
            return
        r = self.r_fault
        for v in r.sample(self.voters, len(self.voters) // 2 + 1):
            n = self.nodes[v]
            if n.up:
                self.crash(n, "bounce")
                self.at(self.t + r.uniform(0.0, 0.05), "start", v)

    def fault_stall(self, r) -> None:
        n = self._pick(r, list(self.nodes))
        n.stall_max = r.choice([0.05, 0.3, 1.5]) * self.p.lease_s / 2
        n.stall_until = self.t + r.uniform(0.5, 5.0)
        self.log("stall", n.name, f"max={n.stall_max:.2f}s")

    def fault_rate(self, r) -> None:
        n = self._pick(r, list(self.nodes))
        n.clock.set_rate(self.t, 1.0 + r.uniform(-self.p.rho, self.p.rho))
        self.log("clock", n.name, f"rate={n.clock.rate:.4f}")

    # ------------------------------------------------------------------ unfair faults ---
    # Faults outside what any lease protocol can survive (docs/ha.md "Faults no protocol
    # survives").  Only ``--unfair`` runs draw them; the oracle then keeps every invariant
    # that needs no clock (2-5), and drops the real-time checks of invariant 1.

    def fault_clock_beyond_rho(self, r) -> None:
        n = self._pick(r, list(self.nodes))
        err = r.uniform(2 * self.p.rho + 0.02, 0.5)
        n.clock.set_rate(self.t, 1.0 + (err if r.random() < 0.5 else -err))
        self.log("clock!", n.name, f"rate={n.clock.rate:.4f} beyond rho={self.p.rho}")

    def fault_freeze(self, r) -> None:
        """A suspend (or a hypervisor freeze) during which the clock the shell reads
        stands still, as CLOCK_MONOTONIC does through a suspend."""
        n = self._pick(r, self.masters if r.random() < 0.7 else self.voters)
        if r.random() < 0.5 and n.kind == "master":
            n = self.current_leader() or n
        if not n.up or n.paused:
            return
        self.fault_pause_node(n, r, "freeze")
        n.frozen_at = self.t

    def fault_stale_voter(self, r) -> None:
        """A voter restarts from a state file older than its promises: restored from a
        backup, or written to a disk that acknowledged an fsync it did not do."""
        n = self._pick(r, self.voters)
        if len(n.voter_history) < 2:
            return
        self.crash(n, "stale-voter")
        n.voter_disk = r.choice(n.voter_history[:-1])
        self.log("restore", n.name, f"state {n.voter_disk}")
        self.at(self.t + r.uniform(0.0, 1.0), "start", n.name)

    def fault_pause_node(self, n, r, why: str) -> None:
        n.paused = True
        self.log(why, n.name)
        self.at(self.t + r.uniform(0.2, 3.5) * self.p.lease_s, "resume", n.name, n.epoch)

    def fault_net(self, r) -> None:
        self.loss = r.choice([0.0, 0.05, 0.3])
        self.log("net", f"loss={self.loss}")

    def fault_wipe_v(self, r) -> None:
        """A chunkserver's voter state file is lost: it comes back as a new voter uuid,
        which the operator later puts in place of the old one (``ev_readd``)."""
        if self.wiped_voters >= 2 or len(self.voters) < 2:
            return
        n = self._pick(r, self.voters)
        if not self.voters_survivable_without(n.name):
            return
        self.wiped_voters += 1
        self.crash(n, "wipe")
        old = f"{n.name}.{n.incarnation}"
        n.voter_disk = None
        n.incarnation += 1     # a lost state file means a new uuid
        self.at(self.t + r.uniform(0.0, 2.0), "start", n.name)
        self.at(self.t + r.uniform(0.5, 3.0), "readd", n.name, old)

    def voter_uuid(self, name: str) -> str:
        return f"{name}.{self.nodes[name].incarnation}"

    def voters_survivable_without(self, name: str) -> bool:
        """The voter budget: every record in play keeps a majority of voters whose state
        survives (and a brand-new cluster keeps a majority of its bootstrap voters)."""
        live = {self.voter_uuid(v) for v in self.voters if v != name}
        sets = [rec.voters for rec in self.records_in_play()] or [self.cfg.initial_voters]
        return all(len(set(vs) & live) >= len(vs) // 2 + 1 for vs in sets)

    def ev_readd(self, name: str, old: str) -> None:
        """The operator replaces a lost voter uuid by the new one, at the leader, until the
        leader's record shows it (HA.md: a wiped voter votes again only once re-added)."""
        new = self.voter_uuid(name)
        ldr = self.current_leader()
        if ldr is not None and ldr.machine.record is not None:
            voters = ldr.machine.record.voters
            if old not in voters and (new in voters or self.healed):
                return
            if not ldr.paused:
                self.log("admin", "replace-voter", ldr.name, f"+{new} -{old}")
                self.deliver_local(ldr, AdminChangeVoters(add=new, remove=old))
        if self.t < self.end_at - 1.0:
            self.at(self.t + 1.5, "readd", name, old)

    def fault_voters(self, r) -> None:
        """The operator adds, removes or replaces one voter at the leader."""
        ldr = self.current_leader()
        if ldr is None or ldr.paused or ldr.machine.record is None:
            return
        voters = ldr.machine.record.voters
        current = [self.voter_uuid(v) for v in self.voters]
        outside = [u for u in current if u not in voters]
        add = r.choice(outside) if outside and r.random() < 0.6 else None
        remove = r.choice(voters) if len(voters) > 1 and (add is None or r.random() < 0.4) \
            else None
        if remove is not None and not self.set_survives(voters, add, remove):
            return
        self.log("admin", "change-voters", ldr.name, f"+{add} -{remove}")
        self.deliver_local(ldr, AdminChangeVoters(add=add, remove=remove))

    def set_survives(self, voters, add, remove) -> bool:
        """Keep the operator within the voter budget: the new set must keep a majority of
        live uuids (the core refuses sets without an acknowledging majority anyway)."""
        new = [v for v in voters if v != remove] + ([add] if add else [])
        live = {self.voter_uuid(v) for v in self.voters}
        return len(set(new) & live) >= len(new) // 2 + 1

    def records_in_play(self) -> list:
        """Every record an election could still adopt: each voter's, and each leader's
        current and proposed one."""
        records = [v.voter_disk.record for v in self.nodes.values()
                   if v.kind == "voter" and v.voter_disk and v.voter_disk.record]
        for x in self.nodes.values():
            if x.kind == "master" and x.up and x.machine.role == "LEADER":
                records += [rec for rec in (x.machine.pending, x.machine.record) if rec]
        return records

    def survivable_without(self, names) -> bool:
        """The fault budget of invariant 2: after ``names`` lose what they acknowledged,
        every record in play still names a member that holds it (same incarnation)."""
        live = {self.nodes[m].ident for m in self.masters
                if m not in names and not self.nodes[m].tail_lost}
        records = self.records_in_play()
        return bool(records) and all(set(rec.members) & live for rec in records)

    def fault_wipe_m(self, r) -> None:
        if self.wiped_master or len(self.masters) < 2:
            return
        n = self._pick(r, self.masters)
        if not self.survivable_without({n.name}):
            return
        self.wiped_master = True
        self.crash(n, "wipe")
        n.dir.wipe()
        n.incarnation += 1
        self.at(self.t + r.uniform(0.0, 2.0), "start", n.name)

    def fault_power(self, r) -> None:
        """A host, or a rack of them, loses power.  Under SAVE_DEFAULT a master loses its
        unflushed journal tail and comes back as a new incarnation; the budget keeps a
        live member holding every acknowledged change."""
        names = [self._pick(r, list(self.nodes)).name]
        if r.random() < 0.5 and self.current_leader():
            names = [self.current_leader().name]
        if r.random() < 0.3:
            names += r.sample(list(self.nodes), r.randint(1, 2))
        names = sorted(set(names))
        lossy = self.p.save_mode != SAVE_FSYNC
        if lossy and not self.survivable_without({x for x in names if x in self.masters}):
            self.stats["power-refused"] = self.stats.get("power-refused", 0) + 1
            return
        for name in names:
            n = self.nodes[name]
            if n.up:
                self.power_loss(n)
                self.at(self.t + r.uniform(0.3, 4.0), "start", name)

    def fault_replay(self, r) -> None:
        """The network delivers again a few messages a master sent a while ago (a
        duplicate held back by a router, a retransmission after a reconnect): stale terms,
        old rounds and old chunk commands reach receivers that have moved on."""
        if not self.recent:
            return
        pool = list(self.recent)
        old_terms = sorted(self.by_term)[:-1]
        if old_terms and r.random() < 0.6:
            # a deposed leader speaks again, to everyone or to one receiver
            pool = [x for t in old_terms for x in self.by_term[t]]
            if r.random() < 0.5:
                dest = r.choice(list(self.nodes))
                pool = [x for x in pool if x[1] == dest] or pool
        picked = r.sample(pool, min(len(pool), r.randint(1, 8)))
        self.log("replay", len(picked))
        for src, dest, msg in picked:
            self.transmit(src, dest, msg)

    def replay_to(self, name: str) -> None:
        """Right after ``name`` restarted, frames of deposed leaders reach it (peers
        reconnect and flush what they buffered): the window in which a receiver that
        forgot its accepted term would obey them."""
        old_terms = sorted(self.by_term)[:-1]
        pool = [x for t in old_terms for x in self.by_term[t] if x[1] == name]
        if pool:
            r = self.r_fault
            for src, dest, msg in r.sample(pool, min(len(pool), 4)):
                self.transmit(src, dest, msg)

    def fault_disaster(self, r) -> None:
        """A majority of the voters is destroyed for good (their machines are replaced:
        new voter uuids).  Half the time the survivors were cut off from the leader for
        more than ``D`` first, so that its lease rests on the doomed voters' promises
        alone.  The operator then forces a new voter set (``ev_force``)."""
        if self.force_state is not None or self.t > self.heal_at - 5.0:
            return
        ldr = self.current_leader()
        rec = ldr.machine.record if ldr else highest(self.records_in_play())
        if rec is None:
            return
        names = [v for v in self.voters if self.voter_uuid(v) in rec.voters]
        k = len(rec.voters) // 2 + 1
        if len(names) < k:
            return
        doomed = r.sample(names, k)
        delay = 0.0
        survivors = [v for v in self.voters if v not in doomed]
        if ldr is not None and survivors and r.random() < 0.5:
            cut = {(a, b) for v in survivors for a, b in ((ldr.name, v), (v, ldr.name))}
            self.blocked |= cut
            delay = self.p.lease_s * r.uniform(1.05, 1.5)
            self.at(self.t + delay + r.uniform(0.5, 3.0), "unpartition", frozenset(cut))
        if ldr is not None and not ldr.paused and r.random() < 0.5:
            # the leader's host hangs too, holding its lease: the operator cannot reach it
            self.at(self.t + delay, "hang", ldr.name, ldr.epoch)
        self.force_state = "pending"
        self.log("disaster", f"voters {doomed} in {delay:.2f}s")
        self.at(self.t + delay, "destroy", tuple(doomed))

    def ev_hang(self, name: str, epoch: int) -> None:
        n = self.nodes[name]
        if n.epoch == epoch and n.up and not n.paused:
            self.fault_pause_node(n, self.r_fault, "hang")

    def ev_destroy(self, doomed) -> None:
        r = self.r_fault
        # the operator names the survivors alone, or the survivors and the replacements
        survivors = tuple(v for v in self.voters if v not in doomed)
        self.force_names = survivors if survivors and r.random() < 0.5 else self.voters
        for name in doomed:
            n = self.nodes[name]
            self.crash(n, "destroyed")
            n.voter_disk = None
            n.incarnation += 1
            self.at(self.t + r.uniform(0.3, 2.0), "start", name)
        self.at(self.t + r.uniform(0.05, 1.0), "force")

    def ev_force(self) -> None:
        """The operator runs the forced voter set at the master with the highest
        (term, version) pair, naming every voter alive now, and repeats the command until
        a leader's record shows that set (the master refuses while a lease may live)."""
        new_set = tuple(self.voter_uuid(v) for v in self.force_names)
        ldr = self.current_leader()
        if ldr is not None and ldr.machine.record is not None \
                and set(ldr.machine.record.voters) == set(new_set):
            self.force_state = "done"
            return
        up = [self.nodes[m] for m in self.masters if self.nodes[m].up]
        # the highest pair; among equals, a follower (the operator may not see the leader)
        best = max(up, key=lambda n: (n.machine.last(), n.machine.role != "LEADER"),
                   default=None)
        down_best = max((self.journal_last(self.nodes[m]) for m in self.masters
                         if not self.nodes[m].up), default=(0, 0))
        if best is not None and not best.paused and best.machine.last() >= down_best:
            # the command reads every master's term file first (docs/ha.md)
            top = max(max(self.nodes[m].dir.cached.term, self.nodes[m].dir.cached.accepted)
                      for m in self.masters)
            self.log("admin", "force-voters", best.name, new_set, f"min_term={top}")
            self.deliver_local(best, AdminForceVoters(new_set, top))
        self.at(self.t + 1.5, "force")

    def journal_last(self, n):
        d = n.dir.cached
        if d.journal:
            return (d.journal[-1].term, d.journal[-1].version)
        return d.snapshot.last if d.snapshot else (0, 0)

    def fault_step_down(self, r) -> None:
        ldr = self.current_leader()
        if ldr is not None and not ldr.paused:
            self.log("admin", "step-down", ldr.name)
            self.deliver_local(ldr, AdminStepDown())

    def current_leader(self):
        for name in self.masters:
            n = self.nodes[name]
            if n.up and n.machine.role == "LEADER":
                return n
        return None
