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

from elkfs.consensus.config import ALL_MUTATIONS, STALE_NOW, HAConfig
from elkfs.consensus.fencing import ChunkCommand
from elkfs.consensus.identity import SAVE_DEFAULT, SAVE_FSYNC, incarnation_at_start
from elkfs.consensus.journal import InvariantBroken
from elkfs.consensus.master import MasterDisk
from elkfs.consensus.records import highest
from elkfs.consensus.messages import (AdminStepDown, Append, AppendReply, InstallSnapshot,
                                      ClientRead, ClientRegister, ClientReply,
                                      ClientWrite, JournalSynced, JournalWrite,
                                      PersistMasterTerm, PersistVoterState, SaveSnapshot, Tick)
from elkfs.consensus.voter import Voter

from .app import ToyStore, op
from .broken import (FOLLOWER_FORGETS_ACCEPTED_TERM, POWER_LOSS_KEEPS_INCARNATION,
                     fence_class, master_class)
from .disk import MasterDir
from .faults import UNFAIR_WEIGHTS, Faults, swarm_weights
from .oracle import Oracle, Violation, _decode_body


# Events that change what the faults leave standing: they restart the quiet window of the
# liveness-under-faults check.
DISTURBING = {"fault", "start", "resume", "unpartition", "unslow", "bounce_voters",
              "crash_at", "readd", "replay_to", "destroy", "force", "hang",
              "crash_leader"}


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
    save_mode: int = SAVE_FSYNC
    unfair: frozenset = frozenset()   # classes of faults no protocol survives (faults.py)
    weights: dict = field(default_factory=dict)   # fault kind -> weight (swarm testing)

    @staticmethod
    def from_seed(seed: int, mutations=frozenset(), faulty_s: float = 10.0,
                  healed_s: float = 8.0, realistic: bool = False,
                  unfair=frozenset()) -> "SimParams":
        r = random.Random(seed)
        n_m = r.choice([2, 3, 3, 3, 4, 5])
        n_v = r.choice([1, 2, 3, 3, 3, 4, 5, 5, 7])
        if realistic:
            return SimParams(seed, n_m, n_v, 2.0, 0.01, faulty_s, healed_s, 0.0, 0.0,
                             0.0002, 0.0003, 0.0, r.uniform(0.2, 0.5), 0.004, 2, 20.0,
                             frozenset(mutations), SAVE_DEFAULT)
        # drawn from a second source so that the shape drawn above stays what it was
        x = random.Random(seed * 1_000_003 + 17)
        p = SimParams(
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
            mutations=frozenset(mutations),
            save_mode=x.choice([SAVE_DEFAULT, SAVE_FSYNC]),
            weights=swarm_weights(x))
        if x.random() < 0.3:
            # a calm network and sparser faults: room for the liveness-under-faults check
            p.loss, p.long_delay_p, p.fault_rate = 0.0, 0.0, x.uniform(0.2, 0.6)
        p.unfair = frozenset(unfair)
        for kind in sorted(p.unfair):
            p.weights.update(UNFAIR_WEIGHTS.get(kind, {}))
        return p


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
        self.incarnation = 1           # stored in the data directory
        self.boot_id = 1               # the host's kernel boot id: changes on power loss
        self.power_epoch = 0
        self.tail_lost = False         # lost power; its incarnation rises at the restart
        self.arrivals: dict = {}
        self.lease_log: deque = deque(maxlen=40)
        # voter / chunkserver
        self.voter_disk: PersistVoterState | None = None
        self.voter_history: list = []  # earlier versions of the state file (stale-voter)
        self.frozen_at: float | None = None
        self.fence_term = 0
        self.fence: ChunkVersionFence | None = None
        # master
        self.dir = MasterDir()

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
class World(Faults):
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
        self.oracle = Oracle(clocks_bounded=not (p.unfair & {"clock", "freeze"})
                             or "time-checks" in p.unfair)
        self.blocked: set[tuple[str, str]] = set()
        self.slow: dict[tuple[str, str], float] = {}
        self.lease_seen: dict[str, float] = {}
        self.faulty_arrivals_end = 0.0
        self.healed = False
        self.heal_at = p.faulty_s
        self.end_at = p.faulty_s + p.healed_s
        self.loss, self.dup = p.loss, p.dup
        self.wiped_master = False
        self.wiped_voters = 0
        self.stats = {"events": 0, "elections": 0, "acks": 0, "reads": 0, "faults": 0}
        self.gaps: list[tuple[str, float]] = []
        self.recent: deque = deque(maxlen=400)
        self.gaps_faulty: list[tuple[str, float]] = []
        self.quiet_since: float | None = None
        self.quiet_lost = 0
        self.force_state: str | None = None      # None, "pending", "done"
        self.by_term: dict[int, list] = {}
        masters = tuple(f"m{i + 1}" for i in range(p.n_masters))
        voters = tuple(f"v{i + 1}" for i in range(p.n_voters))
        self.cfg = HAConfig(lease_duration_s=p.lease_s, rho=p.rho,
                            max_round_trip_s=min(0.5, p.lease_s * (0.5 - 2 * p.rho) * 0.9),
                            election_jitter_s=0.15, align_timeout_s=0.1,
                            isr_lag_timeout_s=0.6 * p.lease_s / 2,
                            log_retain=30, snapshot_gap=40,
                            voter_addrs=voters, master_addrs=masters,
                            initial_voters=tuple(f"{v}.1" for v in voters),
                            mutations=frozenset(p.mutations) & set(ALL_MUTATIONS)).validate()
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
        return f"{t:10.4f} {what:<10} " + " ".join(
            a if isinstance(a, str) else _short(a) for a in args)

    # ------------------------------------------------------------------ run -------------
    def run(self) -> None:
        for n in self.nodes.values():
            self.at(0.0, "start", n.name)
        for c in self.clients:
            self.at(self.r_work.uniform(0.1, 1.0), "client", c.name)
        if self.p.fault_rate > 0:
            self.at(self.r_fault.expovariate(self.p.fault_rate), "fault")
        self.at(0.05, "watch")
        self.at(self.heal_at, "heal")
        self.at(self.end_at, "end")
        while self.q:
            t, _, kind, args = heapq.heappop(self.q)
            self.t = t
            self.stats["events"] += 1
            if kind == "end":
                if t < self.end_at:
                    continue  # the run was extended
                self.final_checks()
                return
            if kind in DISTURBING:
                self.quiet_since = None
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
            n.fence = fence_class(self.p.mutations)(n.fence_term)
        else:
            self.incarnation_rule(n)
            d = n.dir.cached
            disk = MasterDisk(d.term, d.accepted, d.snapshot, list(d.journal))
            n.machine = master_class(self.p.mutations)(n.ident, name, self.cfg, ToyStore(),
                                                       self.r_elect, now, disk)
        self.log("start", name, n.machine.__class__.__name__, getattr(n.machine, "ident",
                                                                      n.incarnation))
        if not self.healed and n.kind == "master" and self.r_fault.random() < 0.3:
            self.at(self.t + self.r_fault.uniform(0.0, 0.1), "replay_to", name)
        self.deliver_local(n, Tick())

    def incarnation_rule(self, n: Node) -> None:
        """The master shell's start-up rule (identity.py): under SAVE_DEFAULT, an unclean
        stop across a machine restart raises the incarnation.  Every simulated stop is
        unclean.  The result and the boot id are fsynced before the machine starts."""
        d = n.dir.cached
        inc, why = incarnation_at_start(n.incarnation, self.p.save_mode, False,
                                        None if d.boot_id is None else str(d.boot_id),
                                        str(n.boot_id))
        if inc != n.incarnation and not self.mutant(POWER_LOSS_KEEPS_INCARNATION):
            self.log("incarnate", n.name, f"{n.incarnation} -> {inc}", why)
            n.incarnation = inc
        n.dir.persist(lambda x: setattr(x, "boot_id", n.boot_id))
        n.tail_lost = False

    def persist_term(self, n: Node, a: PersistMasterTerm) -> None:
        def store(d):
            d.term = a.term
            if not (self.mutant(FOLLOWER_FORGETS_ACCEPTED_TERM)
                    and n.machine.role == "FOLLOWER"):
                d.accepted = a.accepted_term
        n.dir.persist(store)

    def mutant(self, name: str) -> bool:
        return name in self.p.mutations

    def ev_os_flush(self, name: str, power_epoch: int, w) -> None:
        n = self.nodes[name]
        if n.power_epoch == power_epoch:
            n.dir.flush_one(w)

    def power_loss(self, n: Node) -> None:
        """The host loses power: the process dies, unflushed writes are gone, and the
        kernel's boot id changes.  Voter state and small files were fsynced."""
        self.crash(n, "power-loss")
        lost = n.dir.power_loss()
        n.tail_lost = n.kind == "master" and self.p.save_mode != SAVE_FSYNC
        n.power_epoch += 1
        n.boot_id += 1
        self.log("power", n.name, f"lost {lost} unflushed writes")

    def crash(self, n: Node, why: str = "crash") -> None:
        if not n.up:
            return
        self.log(why, n.name)
        self.quiet_since = None
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
                self.oracle.chunk_accepted(name, msg.version, msg.term)
            out = None
        else:
            out = n.machine.step(now, msg)
        self.trace.append((self.t, "recv", (name, msg)))     # formatted when printed
        if out is not None:
            self.apply_output(n, out, now, arrived, msg)
        n.busy = False
        self.kick(n)

    def apply_output(self, n: Node, out, now: float, arrived: float, msg) -> None:
        m = n.machine
        for a in out.persist:
            if isinstance(a, PersistVoterState):
                n.voter_disk = a
                n.voter_history = (n.voter_history + [a])[-12:]
            elif isinstance(a, PersistMasterTerm):
                self.persist_term(n, a)
            elif isinstance(a, SaveSnapshot):
                n.dir.persist(lambda d, a=a: setattr(d, "snapshot", a))
        for w in out.journal:
            # SAVE_FSYNC reports a write after its fsync; SAVE_DEFAULT once the OS has it
            took = self.p.fsync_max_s if self.p.save_mode == SAVE_FSYNC else 0.0005
            done = max(n.disk_free_at, self.t) + self.r_disk.uniform(0, took)
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
            elif ev.event == "election-lost":
                self.gaps_faulty.append((ev.detail, self.t))
        for dest, msg_out in out.send:
            self.send_from(n, dest, msg_out)
        if n.kind == "master":
            if isinstance(msg, (Append, InstallSnapshot)) and (out.journal or any(
                    isinstance(x, AppendReply) and x.ok for _, x in out.send)):
                self.oracle.master_acted_on(m.ident, msg.term, type(msg).__name__)
            self.oracle.master_term(m.ident, m.accepted_term)
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
            seen = self.lease_seen.get(n.name)
            if m.role == "LEADER" and (seen is None or m.lease_until > seen[0]
                                       or m._voter_sets() != seen[1]):
                # the lease grew, or the voter sets it must be backed by changed
                self.lease_seen[n.name] = (m.lease_until, m._voter_sets())
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
        if not self.oracle.clocks_bounded:
            return
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

    def ev_replay_to(self, name: str) -> None:
        if not self.healed:
            self.replay_to(name)

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
        fsynced = self.p.save_mode == SAVE_FSYNC
        n.dir.written(w, fsynced)
        if not fsynced:
            # the kernel flushes dirty pages in order, within about a second
            n.dir.flush_at = max(n.dir.flush_at, self.t + self.r_disk.uniform(0.05, 1.0))
            self.at(n.dir.flush_at, "os_flush", name, n.power_epoch, w)
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
        if not self.healed and src in self.masters and not dest.startswith("c"):
            self.recent.append((src, dest, msg))     # material for the replay fault
            term = getattr(msg, "term", None)
            if term:
                kept = self.by_term.setdefault(term, [])
                if len(kept) < 24:
                    kept.append((src, dest, msg))
                else:
                    kept[self.r_net.randrange(24)] = (src, dest, msg)
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

    # ------------------------------------------------------------------ heal / checks ---
    def ev_heal(self) -> None:
        self.healed = True
        self.log("HEAL", "all faults end")
        self.blocked.clear()
        self.slow.clear()
        self.loss, self.dup = 0.0, 0.0
        for n in self.nodes.values():
            n.stall_until = -1.0
            if abs(n.clock.rate - 1.0) > self.p.rho:
                n.clock.set_rate(self.t, 1.0)
            if not n.up:
                self.at(self.t, "start", n.name)
            elif n.paused:
                self.at(self.t, "resume", n.name, n.epoch)
        # faulty-phase messages still in flight (long delays) are part of the faults
        self.live_from = max(self.t, self.faulty_arrivals_end)
        self.at(self.live_from + self.liveness_bound(), "check_live")
        if self.force_state == "pending":
            # a late message of the old leader (a long delay of the faulty phase) makes
            # the force wait again: the run lasts until the force's bound has passed
            end = self.live_from + self.force_bound() + 3.0
            if end > self.end_at:
                self.end_at = end
                self.at(end, "end")

    # ------------------------------------------------------------------ liveness under faults
    def quiet_majority(self) -> bool:
        """True when faults, though still running, leave a connected majority: the network
        loses nothing, and among the masters and voters that are up, awake and not
        stalling, no link is cut or slowed, a majority of the voters of the highest record
        they hold is present, and so is a member of that record."""
        if self.loss > 0 or self.p.long_delay_p > 0 or self.slow or self.p.unfair:
            return False
        t = self.t
        here = [n for n in self.nodes.values()
                if n.up and not n.paused and t >= n.stall_until + n.stall_max]
        names = {n.name for n in here}
        for a, b in self.blocked:
            if a in names and b in names:
                return False
        voters = [n for n in here if n.kind == "voter"]
        rstar = highest(n.voter_disk.record for n in voters if n.voter_disk)
        if rstar is None:
            return False
        uuids = {self.voter_uuid(n.name) for n in voters}
        if len(uuids & set(rstar.voters)) < len(rstar.voters) // 2 + 1:
            return False
        return any(n.kind == "master" and n.ident in rstar.members for n in here)

    def ev_watch(self) -> None:
        """Invariant 6 while faults go on: a connected majority elects within the bound
        (extended by each election lost to a split vote, as in the healed phase)."""
        if self.healed:
            return
        if not self.quiet_majority():
            self.quiet_since = None
        elif self.quiet_since is None:
            self.quiet_since, self.quiet_lost = self.t, len(self.gaps_faulty)
        else:
            lost = len(self.gaps_faulty) - self.quiet_lost
            bound = self.liveness_bound(faulty=True) * (1 + lost)
            if self.t - self.quiet_since <= bound:
                pass
            elif any(self.oracle.serving_at(m, self.t) for m in self.masters):
                self.stats["quiet-checked"] = self.stats.get("quiet-checked", 0) + 1
            else:
                raise Violation("liveness-under-faults",
                                f"a connected majority has had no leader for "
                                f"{self.t - self.quiet_since:.3f}s (bound {bound:.3f}s)")
        self.at(self.t + 0.05, "watch")

    def liveness_bound(self, faulty: bool = False) -> float:
        c = self.cfg
        tail = self.p.delay_tail_s if faulty else min(self.p.delay_tail_s, 0.003)
        rtt = 2 * (self.p.delay_base_s + 8 * tail) + 2 * 0.0005
        return (c.lease_duration_s * (1 + c.rho) + c.election_jitter_s + c.align_timeout_s
                + 8 * rtt + 4 * self.p.fsync_max_s + 0.1)

    def force_bound(self) -> float:
        """From the last message of a leader to a leader under the forced voter set: the
        operator's next try (every 1.5 s), the refusal window and the armed wait (each
        D*(1+rho)/(1-rho)), then an election."""
        c = self.cfg
        wait = c.lease_duration_s * (1 + c.rho) / (1 - c.rho)
        return 1.5 + 2 * wait + self.liveness_bound()

    def ev_check_live(self) -> None:
        if not any(self.oracle.serving_at(m, self.t) for m in self.masters):
            if self.force_state == "pending":
                # no leader is possible until the operator's forced voter set takes
                # effect: it waits out old promises first (D and more)
                if self.t > self.live_from + self.force_bound():
                    raise Violation("liveness", "the forced voter set never took effect "
                                                f"within {self.force_bound():.3f}s")
                self.at(self.t + 0.1, "check_live")
                return
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
        self.trace.append((self.t, "client", (c.name, dest, msg)))
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
