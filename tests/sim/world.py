"""A seeded, deterministic world around the real HA state machines (VOPR style).

One seed derives separate seeds for the cluster shape, the network, the clocks, the disks,
the faults and the workload.  Nodes are thin shells exactly like the daemons' will be: they
dequeue a message, may stall (a slow fsync) and *then* read their clock, call
``machine.step(now, msg)``, persist ``Output.persist`` synchronously, hand ``journal``
writes to a disk that completes them later (and loses the unsynced ones on a crash), and put
sends in a user-space write buffer that a paused (SIGSTOPped or suspended) process keeps
until it wakes.  Clocks run at rates within ``rho`` with arbitrary offsets; a host suspend
keeps CLOCK_BOOTTIME counting.  The network delays, loses, duplicates and reorders
messages and applies full, one-way and per-master partitions.

A faulty phase is followed by a healed phase (everything restarted, resumed, connected) in
which a leader must appear within the documented bound and every master must converge.
"""
from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field

import msgspec

from elkfs.consensus.config import STALE_NOW, HAConfig
from elkfs.consensus.fencing import ChunkCommand, ChunkVersionFence
from elkfs.consensus.journal import InvariantBroken
from elkfs.consensus.master import Master, MasterDisk
from elkfs.consensus.messages import (AdminStepDown, ClientRead, ClientRegister, ClientReply,
                                      ClientWrite, JournalSynced, JournalWrite,
                                      PersistMasterTerm, PersistVoterState, SaveSnapshot, Tick)
from elkfs.consensus.voter import Voter

from .app import ToyStore, op
from .oracle import Oracle, Violation, _decode_body


# ====================================================================== parameters =======
@dataclass
class SimParams:
    seed: int
    n_masters: int
    n_voters: int
    lease_s: float
    rho: float
    faulty_s: float
    healed_s: float
    loss: float
    dup: float
    delay_base_s: float
    delay_tail_s: float
    long_delay_p: float
    fault_rate: float
    fsync_max_s: float
    n_clients: int
    op_rate: float
    mutations: frozenset = frozenset()

    @staticmethod
    def from_seed(seed: int, mutations=frozenset(), faulty_s: float = 10.0,
                  healed_s: float = 8.0, realistic: bool = False) -> "SimParams":
        r = random.Random(seed)
        n_m = r.choice([2, 3, 3, 3, 4, 5])
        n_v = r.choice([1, 2, 3, 3, 3, 4, 5, 5, 7])
        if realistic:
            return SimParams(seed, n_m, n_v, 2.0, 0.01, faulty_s, healed_s, 0.0, 0.0,
                             0.0002, 0.0003, 0.0, r.uniform(0.2, 0.5), 0.004, 2, 20.0,
                             frozenset(mutations))
        return SimParams(
            seed=seed, n_masters=n_m, n_voters=n_v,
            lease_s=r.choice([2.0, 2.0, 2.0, 1.0]),
            rho=r.choice([0.0, 0.01, 0.05, 0.1]),
            faulty_s=faulty_s, healed_s=healed_s,
            loss=r.choice([0.0, 0.01, 0.05, 0.15]),
            dup=r.choice([0.0, 0.02, 0.1]),
            delay_base_s=r.uniform(0.0001, 0.003),
            delay_tail_s=r.choice([0.001, 0.005, 0.03]),
            long_delay_p=r.choice([0.0, 0.002, 0.02, 0.05]),
            fault_rate=r.uniform(0.5, 2.0),
            fsync_max_s=r.choice([0.002, 0.01, 0.1]),
            n_clients=r.choice([1, 2, 3]),
            op_rate=r.uniform(5, 30),
            mutations=frozenset(mutations))


# ====================================================================== clock ============
class Clock:
    """CLOCK_BOOTTIME of one host: ``local = base_local + rate * (real - base_real)``."""

    def __init__(self, offset: float, rate: float) -> None:
        self.base_real, self.base_local, self.rate = 0.0, offset, rate

    def local(self, t: float) -> float:
        return self.base_local + self.rate * (t - self.base_real)

    def to_real(self, local: float) -> float:
        return self.base_real + (local - self.base_local) / self.rate

    def set_rate(self, t: float, rate: float) -> None:
        self.base_local, self.base_real, self.rate = self.local(t), t, rate


# ====================================================================== nodes ============
@dataclass
class MasterDiskState:
    term: int = 0
    accepted: int = 0
    snapshot: SaveSnapshot | None = None
    journal: list = field(default_factory=list)


class Node:
    def __init__(self, name: str, kind: str, clock: Clock) -> None:
        self.name, self.kind, self.clock = name, kind, clock
        self.machine = None
        self.up = False
        self.paused = False
        self.epoch = 0
        self.inbox: deque = deque()
        self.busy = False
        self.deferred = None           # a message whose processing a pause interrupted
        self.held: list = []           # frames in the user-space write buffer while paused
        self.stall_until = -1.0
        self.stall_max = 0.0
        self.tick_token = 0
        self.tick_queued = False
        self.pending_disk: list = []
        self.disk_free_at = 0.0
        self.incarnation = 1
        self.arrivals: dict = {}
        self.lease_log: deque = deque(maxlen=40)
        # voter / chunkserver
        self.voter_disk: PersistVoterState | None = None
        self.fence_term = 0
        self.fence: ChunkVersionFence | None = None
        # master
        self.mdisk = MasterDiskState()

    @property
    def ident(self) -> str:
        return f"{self.name}.{self.incarnation}"


class Client:
    def __init__(self, name: str, session: str) -> None:
        self.name, self.session = name, session
        self.registered = False
        self.next_seq = 1
        self.next_req = 1
        self.outstanding: dict[int, dict] = {}     # seq -> {op, target, deadline}
        self.reads: dict[int, dict] = {}
        self.target = 0
        self.reg_deadline = 0.0
        self.answered = 0
        self.hinted = False


# ====================================================================== world ============
class World:
    def __init__(self, p: SimParams, verbose: bool = False) -> None:
        self.p = p
        self.verbose = verbose
        root = random.Random(p.seed ^ 0x5EED)
        self.r_net = random.Random(root.getrandbits(64))
        self.r_clock = random.Random(root.getrandbits(64))
        self.r_disk = random.Random(root.getrandbits(64))
        self.r_fault = random.Random(root.getrandbits(64))
        self.r_work = random.Random(root.getrandbits(64))
        self.r_elect = random.Random(root.getrandbits(64))
        self.t = 0.0
        self.q: list = []
        self.seq = 0
        self.trace: deque = deque(maxlen=None if verbose else 400)
        self.oracle = Oracle()
        self.blocked: set[tuple[str, str]] = set()
        self.slow: dict[tuple[str, str], float] = {}
        self.lease_seen: dict[str, float] = {}
        self.faulty_arrivals_end = 0.0
        self.healed = False
        self.heal_at = p.faulty_s
        self.end_at = p.faulty_s + p.healed_s
        self.loss, self.dup = p.loss, p.dup
        self.wiped_master = self.wiped_voter = False
        self.stats = {"events": 0, "elections": 0, "acks": 0, "reads": 0, "faults": 0}
        self.gaps: list[tuple[str, float]] = []
        masters = tuple(f"m{i + 1}" for i in range(p.n_masters))
        voters = tuple(f"v{i + 1}" for i in range(p.n_voters))
        self.cfg = HAConfig(lease_duration_s=p.lease_s, rho=p.rho,
                            max_round_trip_s=min(0.5, p.lease_s * (0.5 - 2 * p.rho) * 0.9),
                            election_jitter_s=0.15, align_timeout_s=0.1,
                            isr_lag_timeout_s=0.6 * p.lease_s / 2,
                            log_retain=30, snapshot_gap=40,
                            voter_addrs=voters, master_addrs=masters,
                            initial_voters=tuple(f"{v}.1" for v in voters),
                            mutations=frozenset(p.mutations)).validate()
        self.nodes: dict[str, Node] = {}
        for name in masters + voters:
            rate = 1.0 + self.r_clock.uniform(-p.rho, p.rho)
            self.nodes[name] = Node(name, "master" if name in masters else "voter",
                                    Clock(self.r_clock.uniform(0, 1e6), rate))
        self.masters, self.voters = masters, voters
        self.clients = [Client(f"c{i + 1}", f"{self.r_work.getrandbits(128):032x}")
                        for i in range(p.n_clients)]

    # ------------------------------------------------------------------ plumbing --------
    def at(self, t: float, kind: str, *args) -> None:
        self.seq += 1
        heapq.heappush(self.q, (t, self.seq, kind, args))

    def log(self, what: str, *args) -> None:
        self.trace.append((self.t, what, args))

    @staticmethod
    def fmt(item) -> str:
        t, what, args = item
        return f"{t:10.4f} {what:<10} " + " ".join(str(a) for a in args)

    # ------------------------------------------------------------------ run -------------
    def run(self) -> None:
        for n in self.nodes.values():
            self.at(0.0, "start", n.name)
        for c in self.clients:
            self.at(self.r_work.uniform(0.1, 1.0), "client", c.name)
        if self.p.fault_rate > 0:
            self.at(self.r_fault.expovariate(self.p.fault_rate), "fault")
        self.at(self.heal_at, "heal")
        self.at(self.end_at, "end")
        while self.q:
            t, _, kind, args = heapq.heappop(self.q)
            self.t = t
            self.stats["events"] += 1
            if kind == "end":
                self.final_checks()
                return
            try:
                getattr(self, "ev_" + kind)(*args)
            except InvariantBroken as e:
                raise Violation("internal-invariant", str(e)) from e

    # ------------------------------------------------------------------ node lifecycle --
    def ev_start(self, name: str) -> None:
        n = self.nodes[name]
        if n.up:
            return
        n.up, n.paused, n.busy, n.deferred = True, False, False, None
        n.epoch += 1
        n.inbox.clear()
        n.held.clear()
        n.tick_queued = False
        now = n.clock.local(self.t)
        if n.kind == "voter":
            n.machine = Voter(f"{name}.{n.incarnation}", self.cfg, now, n.voter_disk)
            n.fence = ChunkVersionFence(n.fence_term)
        else:
            d = n.mdisk
            disk = MasterDisk(d.term, d.accepted, d.snapshot, list(d.journal))
            n.machine = Master(n.ident, name, self.cfg, ToyStore(), self.r_elect, now, disk)
        self.log("start", name, n.machine.__class__.__name__, getattr(n.machine, "ident",
                                                                      n.incarnation))
        self.deliver_local(n, Tick())

    def crash(self, n: Node, why: str = "crash") -> None:
        if not n.up:
            return
        self.log(why, n.name)
        n.up = False
        n.machine = None
        n.epoch += 1
        n.inbox.clear()
        n.held.clear()
        n.deferred = None
        n.busy = False
        n.pending_disk.clear()     # handed to the disk but not synced: lost
        if n.kind == "master":
            self.oracle.crashed(n.name, self.t)

    # ------------------------------------------------------------------ message path ----
    def deliver_local(self, n: Node, msg) -> None:
        n.inbox.append((msg, self.t))
        self.kick(n)

    def kick(self, n: Node) -> None:
        if n.up and not n.paused and not n.busy and n.inbox:
            n.busy = True
            self.at(self.t, "dequeue", n.name, n.epoch)

    def ev_dequeue(self, name: str, epoch: int) -> None:
        n = self.nodes[name]
        if n.epoch != epoch or not n.up:
            return
        if n.paused:
            n.busy = False
            return
        msg, arrived = n.inbox.popleft()
        if isinstance(msg, Tick):
            n.tick_queued = False
        stale = n.clock.local(self.t)
        stall = 0.0
        if self.t < n.stall_until and n.stall_max > 0 and self.r_disk.random() < 0.5:
            stall = self.r_disk.uniform(0, n.stall_max)
        self.at(self.t + stall, "process", name, epoch, msg, stale, arrived)

    def ev_process(self, name: str, epoch: int, msg, stale: float, arrived: float) -> None:
        n = self.nodes[name]
        if n.epoch != epoch or not n.up:
            return
        if n.paused:
            n.deferred = (msg, stale, arrived)
            return
        now = stale if STALE_NOW in self.cfg.mutations else n.clock.local(self.t)
        if isinstance(msg, ChunkCommand):
            rep = n.fence.step(msg)
            n.fence_term = n.fence.highest_term
            if rep.accepted:
                self.oracle.chunk_accepted(name, msg.version)
            out = None
        else:
            out = n.machine.step(now, msg)
        if self.verbose or len(self.trace) < 10**9:
            self.trace.append((self.t, "recv", (name, _short(msg))))
        if out is not None:
            self.apply_output(n, out, now, arrived, msg)
        n.busy = False
        self.kick(n)

    def apply_output(self, n: Node, out, now: float, arrived: float, msg) -> None:
        m = n.machine
        for a in out.persist:
            if isinstance(a, PersistVoterState):
                n.voter_disk = a
            elif isinstance(a, PersistMasterTerm):
                n.mdisk.term, n.mdisk.accepted = a.term, a.accepted_term
            elif isinstance(a, SaveSnapshot):
                n.mdisk.snapshot = a
        for w in out.journal:
            done = max(n.disk_free_at, self.t) + self.r_disk.uniform(0, self.p.fsync_max_s)
            n.disk_free_at = done
            n.pending_disk.append(w)
            self.at(done, "synced", n.name, n.epoch, w)
        for ev in out.lease_log:
            n.lease_log.append((self.t, ev))
            self.trace.append((self.t, "lease", (ev.node, f"t{ev.term}", ev.event, ev.detail)))
            if ev.event == "election-start":
                self.stats["elections"] += 1
            if self.healed and ev.event == "election-lost":
                self.gaps.append((ev.detail, self.t))
        for dest, msg_out in out.send:
            self.send_from(n, dest, msg_out)
        if n.kind == "master":
            for a in out.applied:
                self.oracle.applied(n.name, a)
                if m.role == "LEADER" and a.executed:
                    body = _decode_body(a.payload)
                    if body and body[0] == "bump":
                        ver = tuple(msgspec.msgpack.decode(a.result))
                        for v in self.voters:
                            self.send_from(n, v, ChunkCommand(m.accepted_term, m.ident, body[1], ver))
            fresh = now if STALE_NOW in self.cfg.mutations else n.clock.local(self.t)
            for client, rep in out.replies:
                if rep.status == "ok" and fresh >= out.reply_deadline:
                    continue
                is_read = isinstance(msg, ClientRead)
                self.oracle.reply(n.name, self.t, rep, arrived, is_read)
                if rep.status == "ok":
                    self.stats["reads" if is_read else "acks"] += 1
                self.send_from(n, client, rep)
            self.oracle.master_state(n.name, m, n.clock, self.t)
            if m.role == "LEADER" and m.lease_until > self.lease_seen.get(n.name, -1e18):
                self.lease_seen[n.name] = m.lease_until
                self.check_lease_backed(n, m)
            elif m.role != "LEADER":
                self.lease_seen.pop(n.name, None)
        elif self.p.fault_rate > 0 and self.r_fault.random() < 0.1 and not self.healed and any(
                e.event == "vote-granted" for e in out.lease_log):
            # a voter restarts right after voting (its reply may still be in the buffer)
            if self.r_fault.random() < 0.5:
                self.ev_flush(n.name, n.epoch)
            self.crash(n, "crash-after-vote")
            self.at(self.t + self.r_fault.uniform(0.0, 0.05), "start", n.name)
        if out.wake_at is not None:
            n.tick_token += 1
            at = max(self.t, n.clock.to_real(out.wake_at))
            self.at(at + 1e-9, "tick", n.name, n.epoch, n.tick_token)

    def check_lease_backed(self, n: Node, m) -> None:
        """The lease lemma behind invariant 1: whatever lease a leader believes it holds is
        covered, in real time, by the promises of a majority of its voters (a voter that is
        down or in its restart silence promises by construction)."""
        until_real = n.clock.to_real(m.lease_until)
        if until_real <= self.t:
            return
        by_uuid = {}
        for v in self.voters:
            x = self.nodes[v]
            by_uuid[f"{v}.{x.incarnation}"] = x
        for voters in m._voter_sets():
            backing = 0
            for uuid in voters:
                x = by_uuid.get(uuid)
                if x is None or not x.up:     # a lost uuid never grants again
                    backing += 1
                    continue
                vm = x.machine
                if x.clock.to_real(vm.quiet_until) >= until_real - 1e-9 or (
                        vm.holder == m.ident and
                        x.clock.to_real(vm.until) >= until_real - 1e-9):
                    backing += 1
            if backing < len(voters) // 2 + 1:
                raise Violation("lease-unbacked",
                                f"{m.ident} counts a lease until {until_real:.4f} but only "
                                f"{backing} of {len(voters)} voters promise it that long")

    def ev_tick(self, name: str, epoch: int, token: int) -> None:
        n = self.nodes[name]
        if n.epoch != epoch or not n.up or token != n.tick_token or n.tick_queued:
            return
        n.tick_queued = True
        self.deliver_local(n, Tick())

    def ev_synced(self, name: str, epoch: int, w) -> None:
        n = self.nodes[name]
        if n.epoch != epoch or not n.up or not n.pending_disk or n.pending_disk[0] is not w:
            return
        n.pending_disk.pop(0)
        d = n.mdisk
        if isinstance(w, JournalWrite):
            if w.truncate_after is not None:
                d.journal = [e for e in d.journal if e.version <= w.truncate_after]
            d.journal.extend(w.entries)
        elif isinstance(w, SaveSnapshot):
            d.snapshot = w
            d.journal = []
        base = d.snapshot.last[1] if d.snapshot else 0
        if d.journal and d.journal[0].version <= base:
            d.journal = [e for e in d.journal if e.version > base]
        self.deliver_local(n, JournalSynced(w.write_id))

    # ------------------------------------------------------------------ network ---------
    def send_from(self, n: Node, dest: str, msg) -> None:
        n.held.append((dest, msg))
        if len(n.held) == 1:
            self.at(self.t + self.r_net.uniform(0, 0.0005), "flush", n.name, n.epoch)

    def ev_flush(self, name: str, epoch: int) -> None:
        n = self.nodes[name]
        if n.epoch != epoch or n.paused:
            return
        held, n.held = n.held, []
        for dest, msg in held:
            self.transmit(name, dest, msg)

    def transmit(self, src: str, dest: str, msg) -> None:
        if (src, dest) in self.blocked:
            return
        copies = 1
        if self.r_net.random() < self.loss:
            copies = 0
        elif self.r_net.random() < self.dup:
            copies = 2
        for _ in range(copies):
            tail = min(self.p.delay_tail_s, 0.003) if self.healed else self.p.delay_tail_s
            d = self.p.delay_base_s + self.r_net.expovariate(1 / tail)
            d += self.slow.get((src, dest), 0.0) * self.r_net.random()
            if not self.healed and self.r_net.random() < self.p.long_delay_p:
                d += self.r_net.uniform(0.2, 3.0)
            self.at(self.t + d, "arrive", src, dest, msg)
            if not self.healed:
                self.faulty_arrivals_end = max(self.faulty_arrivals_end, self.t + d)

    def ev_arrive(self, src: str, dest: str, msg) -> None:
        if (src, dest) in self.blocked:
            return
        if dest.startswith("c"):
            return self.client_reply(self.clients[int(dest[1:]) - 1], src, msg)
        if "." in dest:
            # a reply addressed to a master identity travels back on the requester's
            # connection: it reaches that incarnation only
            addr, inc = dest.split(".")
            if self.nodes[addr].incarnation != int(inc):
                return
            dest = addr
        n = self.nodes[dest]
        if n.up:
            self.deliver_local(n, msg)

    # ------------------------------------------------------------------ faults ----------
    def ev_fault(self) -> None:
        if self.healed:
            return
        self.stats["faults"] += 1
        r = self.r_fault
        kind = r.choices(["crash-m", "crash-v", "pause", "suspend", "partition", "stall",
                          "rate", "wipe-v", "wipe-m", "step-down", "net", "strand",
                          "slow-links", "bounce", "slow-election"],
                         [10, 8, 6, 3, 14, 5, 3, 1, 1, 4, 2, 4, 4, 4, 4])[0]
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

    def fault_net(self, r) -> None:
        self.loss = r.choice([0.0, 0.05, 0.3])
        self.log("net", f"loss={self.loss}")

    def fault_wipe_v(self, r) -> None:
        if self.wiped_voter or len(self.voters) < 3:
            return
        n = self._pick(r, self.voters)
        self.wiped_voter = True
        self.crash(n, "wipe")
        n.voter_disk = None
        n.incarnation += 1     # a lost state file means a new uuid
        self.at(self.t + r.uniform(0.0, 2.0), "start", n.name)

    def fault_wipe_m(self, r) -> None:
        if self.wiped_master or len(self.masters) < 2:
            return
        n = self._pick(r, self.masters)
        records = [v.voter_disk.record for v in self.nodes.values()
                   if v.kind == "voter" and v.voter_disk and v.voter_disk.record]
        for x in self.nodes.values():
            if x.kind == "master" and x.up and x.machine.role == "LEADER":
                records += [rec for rec in (x.machine.pending, x.machine.record) if rec]
        if not records or any(set(rec.members) <= {n.ident} for rec in records):
            return   # keep an eligible master: the fault budget of invariant 2
        self.wiped_master = True
        self.crash(n, "wipe")
        n.mdisk = MasterDiskState()
        n.incarnation += 1
        self.at(self.t + r.uniform(0.0, 2.0), "start", n.name)

    def fault_step_down(self, r) -> None:
        ldr = self.current_leader()
        if ldr is not None and not ldr.paused:
            self.log("admin", "step-down", ldr.name)
            self.deliver_local(ldr, AdminStepDown())

    def current_leader(self) -> Node | None:
        for name in self.masters:
            n = self.nodes[name]
            if n.up and n.machine.role == "LEADER":
                return n
        return None

    # ------------------------------------------------------------------ heal / checks ---
    def ev_heal(self) -> None:
        self.healed = True
        self.log("HEAL", "all faults end")
        self.blocked.clear()
        self.slow.clear()
        self.loss, self.dup = 0.0, 0.0
        for n in self.nodes.values():
            n.stall_until = -1.0
            if not n.up:
                self.at(self.t, "start", n.name)
            elif n.paused:
                self.at(self.t, "resume", n.name, n.epoch)
        # faulty-phase messages still in flight (long delays) are part of the faults
        self.live_from = max(self.t, self.faulty_arrivals_end)
        self.at(self.live_from + self.liveness_bound(), "check_live")

    def liveness_bound(self) -> float:
        c = self.cfg
        rtt = 2 * (self.p.delay_base_s + 8 * min(self.p.delay_tail_s, 0.003)) + 2 * 0.0005
        return (c.lease_duration_s * (1 + c.rho) + c.election_jitter_s + c.align_timeout_s
                + 8 * rtt + 4 * self.p.fsync_max_s + 0.1)

    def ev_check_live(self) -> None:
        if not any(self.oracle.serving_at(m, self.t) for m in self.masters):
            extra = len(self.gaps)
            if extra and self.t < self.live_from + self.liveness_bound() * (1 + extra):
                self.at(self.live_from + self.liveness_bound() * (1 + extra), "check_live")
                return
            raise Violation("liveness", f"no leader {self.t - self.live_from:.3f}s after the "
                                        f"faults healed (bound {self.liveness_bound():.3f}s)")
        self.live_term = {(iv.ident, iv.term) for iv in self.oracle.open.values()}
        self.at(self.t + 0.05, "check_stable")

    def ev_check_stable(self) -> None:
        if not any(self.oracle.serving_at(m, self.t) for m in self.masters):
            raise Violation("liveness", f"leadership lost at {self.t:.3f} in the healed phase")
        if self.t < self.end_at - 0.1:
            self.at(self.t + 0.05, "check_stable")

    def final_checks(self) -> None:
        ldr = self.current_leader()
        if ldr is None or not ldr.machine.serving(ldr.clock.local(self.t)):
            raise Violation("liveness", "no serving leader at the end of the healed phase")
        lm = ldr.machine
        idents = {self.nodes[m].ident for m in self.masters}
        for name in self.masters:
            m = self.nodes[name].machine
            if m.last() != lm.last() or m.applied != lm.commit:
                raise Violation("convergence", f"{m.ident} at {m.last()} applied {m.applied}, "
                                               f"leader {lm.ident} at {lm.last()} commit "
                                               f"{lm.commit}")
        if set(lm.record.members) != idents:
            raise Violation("convergence", f"record {lm.record.describe()} != masters {idents}")
        for c in self.clients:
            stuck = [s for s, o in c.outstanding.items() if o["issued"] < self.end_at - 2.5]
            if stuck:
                raise Violation("liveness", f"client {c.name} ops {stuck} never answered")

    # ------------------------------------------------------------------ clients ---------
    def ev_client(self, name: str) -> None:
        c = self.clients[int(name[1:]) - 1]
        r = self.r_work
        if not c.registered:
            if self.t >= c.reg_deadline:
                c.target += 0 if c.hinted else 1
                c.hinted = False
                self.client_send(c, ClientRegister(c.name, c.session))
                c.reg_deadline = self.t + 0.3
        else:
            due = [o for o in c.outstanding.values() if self.t >= o["deadline"]]
            if due and not c.hinted:
                c.target += 1
            c.hinted = False
            for o in due:
                self.client_send(c, o["msg"])
                o["deadline"] = self.t + 0.3
            for req, o in list(c.reads.items()):
                if self.t >= o["deadline"]:
                    del c.reads[req]
            if len(c.outstanding) < 2 and self.t < self.end_at - 3.0 and \
                    r.random() < self.p.op_rate * 0.05:
                self.client_new_op(c, r)
        self.at(self.t + 0.05, "client", name)

    def client_new_op(self, c: Client, r) -> None:
        k = f"k{r.randrange(3)}"
        kind = r.choices(["set", "append", "bump", "read"], [3, 4, 1, 3])[0]
        if kind == "read":
            req = c.next_req
            c.next_req += 1
            msg = ClientRead(c.name, req, op("list" if r.random() < 0.5 else "get", k))
            c.reads[req] = {"deadline": self.t + 0.3}
            self.client_send(c, msg)
            return
        seq = c.next_seq
        c.next_seq += 1
        body = {"set": lambda: op("set", k, f"{c.session[:4]}:{seq}"),
                "append": lambda: op("append", k, f"{c.session[:4]}:{seq}"),
                "bump": lambda: op("bump", r.randrange(4))}[kind]()
        lowest = min([seq] + list(c.outstanding))
        msg = ClientWrite(c.name, c.session, seq, lowest, body)
        c.outstanding[seq] = {"msg": msg, "deadline": self.t + 0.3, "issued": self.t}
        self.client_send(c, msg)

    def client_send(self, c: Client, msg) -> None:
        dest = self.masters[c.target % len(self.masters)]
        self.trace.append((self.t, "client", (c.name, dest, _short(msg))))
        self.transmit(c.name, dest, msg)

    def client_reply(self, c: Client, src: str, rep: ClientReply) -> None:
        if rep.status == "redirect" and rep.leader_hint in self.masters:
            c.target = self.masters.index(rep.leader_hint)
            c.hinted = True
        if rep.status == "error" and rep.session == c.session and rep.seq in c.outstanding:
            raise Violation("exactly-once", f"client {c.name} got error {rep.detail} for "
                                            f"{rep.seq} from {src}")
        if rep.session == "" and rep.seq in c.reads:
            if rep.status == "ok":
                del c.reads[rep.seq]
            return
        if rep.seq == 0 and rep.session == c.session:
            if rep.status == "ok":
                c.registered = True
            return
        o = c.outstanding.get(rep.seq)
        if o is None or rep.session != c.session:
            return
        if rep.status == "ok":
            del c.outstanding[rep.seq]
            c.answered += 1
        else:
            o["deadline"] = min(o["deadline"], self.t + 0.02)


def _short(msg) -> str:
    s = repr(msg)
    return s if len(s) < 220 else s[:217] + "..."
