"""The master's HA shell: it drives the consensus core (`elkfs.consensus.master.Master`)
and keeps the metadata store in step with it.

The core decides everything about leadership, leases, the log and the commit point; this
shell only moves its inputs and outputs, in the order `docs/ha.md` ("The shell contract")
prescribes: persist (term file, fsynced), send, journal (the store's journal files), reply
(only while the lease holds, read against a fresh clock), `lease.log`, timer.

How the metadata store rides on the core:

* **Leader.** A change is applied to the namespace at once (the namespace decides the
  result and validates the op, as without HA) and its record is *proposed*: the records of
  one event-loop step go to the core as one `Propose`, which journals and replicates them.
  Every reply, of a change or of a read, waits until the commit point covers the state it
  was built from (`when_committed`), so nobody ever sees a change that a failover could
  lose. A change the core refuses (the lease just lapsed) leaves the namespace ahead of
  the log: losing leadership rebuilds the namespace at the commit point from disk.
* **Follower.** The core applies committed entries through `NamespaceState`, right after
  the step that committed them has sent its acknowledgements; the chunk side of those
  changes is the leader's business, so their effects are dropped.
* **Clock.** CLOCK_BOOTTIME (counts through a suspend), read after each input is taken.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import ipaddress
import logging
import os
import random
import secrets
import time
import uuid
from collections import deque
from typing import Callable

from .. import statefile
from ..consensus import messages as cm
from ..consensus import wire
from ..consensus.config import HAConfig
from ..consensus.identity import SAVE_DEFAULT, SAVE_FSYNC, incarnation_at_start
from ..consensus.journal import InvariantBroken
from ..consensus.leaselog import format_line
from ..consensus.master import LEADER, Master, MasterDisk
from ..consensus.sessions import Applied
from ..discovery import MasterDirectory, own_address
from ..proto import messages as m
from ..proto.errors import NOT_LEADER, FsError
from .peer_port import PeerLinks
from .records import RECORD_DECODER

log = logging.getLogger("mfsmaster.ha")

SAVE_MODE_FSYNC = 1


def clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class NamespaceState:
    """The core's replicated state in the daemon: the metadata store. Client operations
    are de-duplicated by the namespace itself (sessions and their results are metadata),
    so the core's own session table stays empty.

    Committed entries are not applied inside the core's step but queued and applied by
    `drain` once the step's outputs are out (`HANode.feed`): a follower learns that entry
    n is committed from the Append that carries n+1, and applying n there would delay
    the acknowledgement of n+1, which the leader and its client wait for. The queue is
    empty again before anything else runs (the same event-loop callback drains it), and
    the entries are applied in log order, as before."""

    sessions: dict = {}

    def __init__(self, node: "HANode"):
        self.node = node
        self.queued: list[cm.Entry] = []

    def apply(self, entry: cm.Entry) -> Applied:
        self.queued.append(entry)
        return Applied(entry.term, entry.version, None, 0, b"", True)

    def drain(self) -> None:
        """Apply the queued committed entries (those the leader applied when it proposed
        them are skipped); a follower drops their chunk effects, the leader has the
        chunkservers carry them out."""
        queued, self.queued = self.queued, []
        ns = self.node.store.ns
        for entry in queued:
            if entry.version <= ns.version:  # the leader applied it when it was proposed
                continue
            rec = RECORD_DECODER.decode(entry.payload)
            try:
                ns.apply(rec)
            except FsError as e:
                raise InvariantBroken(f"committed record {entry.version} does not apply: {e}")
        if queued and (self.node.core is None or self.node.core.role != LEADER):
            ns.effects.clear()

    def lookup(self, session: str, seq: int):
        return "unknown-session", None

    def snapshot(self) -> bytes:
        raise InvariantBroken("the daemon's snapshots are its checkpoints (SnapshotTaken)")

    def restore(self, data: bytes) -> None:
        self.drain()
        version = int(data)
        if self.node.store.ns.version != version:
            self.node.store.install_checkpoint(version)


class HANode:
    def __init__(self, master):
        self.master = master
        self.cfg = cfg = master.cfg
        self.store = master.store
        self.state_path = os.path.join(cfg.DATA_PATH, "ha.state")
        self.persisted = self._load_identity()
        self.ident = f"{self.persisted['uuid']}.{self.persisted['incarnation']}"
        self.cluster: str = self.persisted.get("cluster", "")
        self.lease_log = open(os.path.join(cfg.DATA_PATH, "lease.log"), "a", buffering=1)
        self.core: Master | None = None
        self.state = NamespaceState(self)
        self.addr: str = ""
        self.local_host: str | None = None
        self.directory = MasterDirectory(cfg.MASTER_HOST, cfg.DNS_SERVER or None,
                                         cfg.DNS_REFRESH_TIME)
        self.peers = PeerLinks(self)
        self.voters: dict[str, object] = {}  # voter uuid -> chunkserver connection
        self.voter_clusters: dict[str, str] = {}  # voter uuid -> the cluster it named
        self.voter_cs: dict[str, bytes] = {}  # voter uuid -> its chunkserver's id
        self._inputs: deque = deque()
        self._stepping = False
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._waiters: list = []  # heap of (version, n, ok, failed)
        self._n = 0
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        self._serving = False
        self._status = ""
        self._unsynced_write = 0
        self._peer_view: tuple = ()
        self._voter_change_due = False
        self._shape: tuple = ()  # what the state was last logged as
        self._voters_seen: tuple = ()  # (record, voters connected) last looked at
        self._armed_at: float | None = None  # the wake-up the timer is set for
        self.started_at = time.time()
        self.elections: list[tuple[float, str]] = []  # (wall time, what happened)

    # ------------------------------------------------------------ identity

    def _load_identity(self) -> dict:
        """uuid (made with the data directory), incarnation, cluster, terms. A master that
        starts after an unclean stop *and* a machine restart in the default save mode may
        have lost journal writes it had acknowledged to the OS: it comes back as a new
        incarnation, which must catch up before it counts as a member (HA.md)."""
        try:
            st = statefile.load(self.state_path)
        except ValueError as e:
            raise SystemExit(f"{e}: refusing to start with an unknown identity")
        boot = statefile.boot_id()
        if st is None:
            st = {"uuid": uuid.uuid4().hex[:16], "incarnation": 1, "cluster": "",
                  "term": 0, "accepted_term": 0}
        else:
            # ElkFS's mode 1 fsyncs before replying; mode 0 only hands writes to the OS.
            mode = SAVE_FSYNC if self.cfg.CHANGELOG_SAVE_MODE == SAVE_MODE_FSYNC \
                else SAVE_DEFAULT
            incarnation, why = incarnation_at_start(
                st["incarnation"], mode, clean_stop=not st.get("running"),
                stored_boot_id=st.get("boot_id"), boot_id=boot)
            if incarnation != st["incarnation"]:
                st["incarnation"] = incarnation
                log.warning("%s, so this master rejoins as incarnation %d and must catch "
                            "up before it can lead", why, incarnation)
        st["running"], st["boot_id"] = True, boot
        statefile.save(self.state_path, st)
        return st

    def _save_identity(self) -> None:
        statefile.save(self.state_path, self.persisted)

    def adopt_cluster(self, cluster: str, source: str) -> bool:
        """Join `cluster` if we have none; False when we belong to another one."""
        if not cluster or cluster == self.cluster:
            return True
        if self.cluster:
            return False
        self.cluster = self.persisted["cluster"] = cluster
        self._save_identity()
        log.info("joined cluster %s (learnt from %s)", cluster, source)
        return True

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self.directory.start()
        hosts = self.directory.addresses
        listen = (self.cfg.MATOCS_LISTEN_HOST, self.cfg.MATOCL_LISTEN_HOST)
        self.addr = own_address(hosts, listen) or ""
        if not self.addr:
            specific = [h for h in listen if h not in ("*", "0.0.0.0", "")]
            self.addr = specific[0] if specific else ""
            log.warning("this master's address is not among the A records of %s (%s): "
                        "the other masters cannot reach it, so it will never lead",
                        self.cfg.MASTER_HOST, ", ".join(hosts) or "none")
        if not self.addr:
            raise SystemExit(f"cannot tell which A record of {self.cfg.MASTER_HOST} is this "
                             "master: set MATOCS_LISTEN_HOST to its address")
        # Links to the other masters leave from our own address when we listen on one.
        self.local_host = self.addr if self.cfg.MATOCS_LISTEN_HOST not in \
            ("*", "0.0.0.0", "") else None
        base, entries = await loop.run_in_executor(None, self.store.load_ha)
        snap = cm.SaveSnapshot(base, str(base[1]).encode()) if base[1] else None
        disk = MasterDisk(self.persisted["term"], self.persisted["accepted_term"], snap,
                          [cm.Entry(t, v, p) for t, v, p in entries])
        hacfg = HAConfig(lease_duration_s=self.cfg.LEADER_LEASE_DURATION, snapshot_gap=0,
                         log_retain=self.cfg.HA_LOG_RETAIN,
                         master_addrs=tuple(sorted(set(hosts) | {self.addr}, key=_ip_key)))
        hacfg.validate()
        self.core = Master(self.ident, self.addr, hacfg, None, random.Random(), clock(), disk,
                           state=self.state)
        self.store.replicator = self
        log.info("HA master %s at %s (cluster %s): metadata version %d, journal to %d, "
                 "term %d", self.ident, self.addr, self.cluster or "not yet created",
                 base[1], entries[-1][1] if entries else base[1], self.persisted["term"])
        self.directory.on_change(lambda *_: self.peers_changed())
        self.peers_changed()
        self.feed(cm.Tick())

    def stop(self) -> None:
        """A clean stop: nothing acknowledged to the OS was lost."""
        if self._timer is not None:
            self._timer.cancel()
        self.peers.stop()
        self.directory.stop()
        self.persisted["running"] = False
        self._save_identity()
        self.lease_log.close()

    # ------------------------------------------------------------ the core's inputs

    def feed(self, msg) -> None:
        """Step the core with `msg` (after any changes proposed earlier in this step) and
        carry out its outputs; inputs that arrive meanwhile queue behind it."""
        if self._pending:
            self._inputs.append(self._take_proposal())
        self._inputs.append(msg)
        if self._stepping:
            return
        self._stepping = True
        try:
            while self._inputs:
                out = self.core.step(clock(), self._inputs.popleft())
                self._carry_out(out)
                if not self._inputs and self._unsynced_write:
                    self._sync_journal()
            self.state.drain()  # after the acknowledgements went out
            self._stepping = False
            self._settle()
        except Exception:
            # A broken invariant (or a disk that failed under the journal): never limp on
            # with a master that may promise what it does not hold.
            log.critical("HA state machine failed; stopping this master", exc_info=True)
            logging.shutdown()
            os._exit(70)

    def _carry_out(self, out) -> None:
        for p in out.persist:
            if isinstance(p, cm.PersistMasterTerm):
                self.persisted["term"], self.persisted["accepted_term"] = p.term, p.accepted_term
                self._save_identity()
        for dest, msg in out.send:
            self._send(dest, msg)
        for write in out.journal:
            if isinstance(write, cm.JournalWrite):
                self.store.journal_write(write.truncate_after, write.entries)
            # a SaveSnapshot (installing the leader's checkpoint) was done by `restore`
            if self.cfg.CHANGELOG_SAVE_MODE == SAVE_MODE_FSYNC:
                self._unsynced_write = write.write_id
            else:  # handed to the OS: what the default mode calls persisted
                self._inputs.append(cm.JournalSynced(write.write_id))
        for ev in out.lease_log:
            self._lease_event(ev)
        if out.wake_at is not None:
            self._wake_at = out.wake_at

    def _sync_journal(self) -> None:
        write_id, self._unsynced_write = self._unsynced_write, 0
        self.store.journal.sync()
        self._inputs.append(cm.JournalSynced(write_id))

    def _send(self, dest: str, msg) -> None:
        body = wire.encode(msg)
        voter = self.voters.get(dest)
        if voter is not None:
            voter.send_if_open(m.Consensus(self.cluster, body))
        elif isinstance(msg, cm.InstallSnapshot):
            self.peers.install(dest, msg.last[1], body)
        else:
            self.peers.send(dest, body)

    def _lease_event(self, ev) -> None:
        wall = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        line = format_line(f"{wall} mono={clock():.3f}", ev)
        self.lease_log.write(line + "\n")
        if ev.event in ("lease-acquired", "lease-lost", "lease-released", "serving",
                        "election-start", "election-lost", "deposed", "step-down",
                        "step-down-aborted", "not-eligible"):
            self.elections.append((time.time(), f"{ev.event} term={ev.term} {ev.detail}"))
            del self.elections[:-50]
            log.info("%s term=%d %s", ev.event, ev.term, ev.detail)

    def _tick(self) -> None:
        self._timer = None
        self._armed_at = None
        self.feed(cm.Tick())

    def _settle(self) -> None:
        """After the core moved: leadership gained or lost, replies now committed, timer."""
        core = self.core
        serving = core.serving(clock())
        if self._serving and not serving:
            self._serving = False
            self._lost_leadership()
        elif serving and not self._serving:
            self._serving = True
            self.master.became_leader()
        shape = (core.role, core.eligible, serving, core.accepted_term, core.leader_addr)
        if shape != self._shape:  # a state change: log it (cheap check on every input)
            self._shape = shape
            status = self.status()
            if status != self._status:
                log.info("state %s -> %s (term %d, leader %s)", self._status or "START",
                         status, core.accepted_term, core.leader_addr or "unknown")
                self._status = status
        if serving:
            if self._waiters:
                self._release_waiters()
            voters_now = (core.record, len(self.voters))
            if voters_now != self._voters_seen:
                self._voters_seen = voters_now
                self._maybe_change_voters()
        if self._wake_at is not None and self._wake_at != self._armed_at:
            if self._timer is not None:
                self._timer.cancel()
            self._armed_at = self._wake_at
            delay = max(0.0, self._wake_at - clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _maybe_change_voters(self) -> None:
        """Every chunkserver votes: the leader adds a connected voter that is not in the
        voter set, and drops the old voter of a chunkserver that came back with a new one
        (its voter state was lost), one change at a time (the core's rule)."""
        core = self.core
        if core.pending is not None or core.voter_changes or core.stepdown is not None \
                or core.record is None:
            return
        voters = set(core.record.voters)
        connected = {v for v, c in self.voters.items() if c.is_open}
        change = None
        for v in sorted(voters - connected):
            cs = self.voter_cs.get(v)
            if cs is not None and any(self.voter_cs.get(o) == cs for o in connected - voters):
                change = cm.AdminChangeVoters(remove=v)
                break
        else:
            new = sorted(connected - voters)
            if new:
                change = cm.AdminChangeVoters(add=new[0])
        if change is not None and not self._voter_change_due:
            log.info("voter set change: %s", change)
            self._voter_change_due = True
            asyncio.get_running_loop().call_soon(self._change_voters, change)

    def _change_voters(self, change) -> None:
        self._voter_change_due = False
        self._voters_seen = ()  # look again once this one is done
        self.feed(change)

    def _lost_leadership(self) -> None:
        waiters, self._waiters = self._waiters, []
        self._pending.clear()
        for _, _, _, failed in waiters:
            if failed is not None:
                failed()
        self.master.lost_leadership()
        if self.store.ns.version > self.core.applied:
            self.store.reload_to(self.core.applied)

    # ------------------------------------------------------------ the metadata store's side

    def writable_term(self) -> int:
        """The term a change is made in; FsError(NOT_LEADER) unless this master leads and
        takes changes right now."""
        core = self.core
        if not self._serving or not core.serving(clock()) or core.stepdown is not None:
            raise FsError(NOT_LEADER, self.leader_hint())
        if self.store.ns.version != core.log.last_version + len(self._pending):
            raise FsError(NOT_LEADER, "")  # the namespace is being rebuilt: try again
        return core.accepted_term

    def propose(self, payload: bytes) -> None:
        self._pending.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _take_proposal(self) -> cm.Propose:
        batch, self._pending = tuple(self._pending), []
        return cm.Propose(batch)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            self.feed(self._take_proposal())

    def when_committed(self, version: int, ok: Callable[[], None],
                       failed: Callable[[], None] | None = None) -> None:
        if self._serving and version <= self.core.commit and self.core.serving(clock()):
            ok()
            return
        if not self._serving:
            if failed is not None:
                failed()
            return
        self._n += 1
        heapq.heappush(self._waiters, (version, self._n, ok, failed))

    def _release_waiters(self) -> None:
        commit, waiters = self.core.commit, self._waiters
        while waiters and waiters[0][0] <= commit:
            _, _, ok, _ = heapq.heappop(waiters)
            try:
                ok()
            except Exception:
                log.exception("reply callback failed")

    async def wait_committed(self, version: int) -> bool:
        """True once `version` is committed; False if this master stops leading first
        (a follower's state is committed already)."""
        if self.is_committed(version):
            return True
        fut = asyncio.get_running_loop().create_future()
        self.when_committed(version, lambda: fut.done() or fut.set_result(True),
                            lambda: fut.done() or fut.set_result(False))
        return await fut

    def is_committed(self, version: int) -> bool:
        return self.core is not None and version <= self.core.commit

    def snapshot_taken(self, term: int, version: int) -> None:
        self.feed(cm.SnapshotTaken((term, version), str(version).encode()))

    # ------------------------------------------------------------ what the others see

    @property
    def leading(self) -> bool:
        return self._serving

    def command_term(self) -> int | None:
        """The term to put on a chunkserver command, or None when not leading now."""
        if self._serving and self.core.serving(clock()):
            return self.core.accepted_term
        return None

    def status(self) -> str:
        core = self.core
        if core.role == LEADER and not core.serving(clock()):
            return "LEADER (starting)" if core.lease_until > clock() else "LEADER (lease lost)"
        return core.status()

    def leader_hint(self) -> str:
        """"host:port" of the leader's client port, "" when unknown or this master."""
        host = self.core.leader_addr if self.core is not None else None
        if not host or host == self.addr:
            return ""
        return f"{host}:{self.peers.client_port(host)}"

    # ------------------------------------------------------------ peers and voters

    def peers_changed(self) -> None:
        hosts = set(self.directory.addresses) | {self.addr}
        masters = tuple(sorted(hosts, key=_ip_key))
        self.peers.set_hosts([h for h in masters if h != self.addr])
        voters = tuple(sorted(v for v, c in self.voters.items() if c.is_open))
        view = (masters, voters, self._bootstrap_voters(masters, voters))
        if view != self._peer_view:
            self._peer_view = view
            self.feed(cm.PeersChanged(*view))

    def _bootstrap_voters(self, masters, voters) -> tuple[str, ...]:
        """The voters this master may found the cluster with. The founder is the master
        `mfsmaster init` was run on, or else, at the first start of all, the one with the
        lowest address: only when every master in DNS answered and nobody (master or
        voter) belongs to a cluster yet; the cluster id is made at that moment. Whoever
        belongs to a cluster already makes everyone else join it instead
        (`adopt_cluster`). The voters only count while no voter holds a record."""
        if not voters:
            return ()
        if self.persisted.get("founded"):
            return voters
        if self.cluster or self.addr != masters[0]:
            return ()
        if any(self.voter_clusters.get(v) for v in voters):
            return ()
        if not self.peers.all_fresh([h for h in masters if h != self.addr]):
            return ()
        self.cluster = self.persisted["cluster"] = secrets.token_hex(8)
        self.persisted["founded"] = True
        self._save_identity()
        log.info("founding cluster %s with voters %s", self.cluster, ", ".join(voters))
        return voters

    def voter_connected(self, voter: str, cluster: str, conn) -> None:
        self.voters[voter] = conn
        self.voter_clusters[voter] = cluster
        self.voter_cs[voter] = conn.context
        self.peers_changed()

    def voter_gone(self, voter: str, conn) -> None:
        if self.voters.get(voter) is conn:
            del self.voters[voter]
            self.peers_changed()

    def from_voter(self, msg: m.Consensus) -> None:
        if not self.adopt_cluster(msg.cluster, "a voter"):
            return
        try:
            body = wire.decode(msg.body)
        except wire.DecodeError as e:
            log.warning("undecodable consensus message from a voter: %s", e)
            return
        self.feed(body)

    def from_master(self, body) -> None:
        self.feed(body)

    # ------------------------------------------------------------ admin

    def step_down(self, target_host: str = "") -> dict:
        core = self.core
        if not self._serving:
            raise FsError(NOT_LEADER, self.leader_hint())
        target = None
        if target_host:
            target = self.peers.ident_of(target_host)
            if target is None or target not in core.record.members:
                raise FsError(22, f"{target_host} is not an in-sync master")
        self.feed(cm.AdminStepDown(target))
        if core.stepdown is None and core.role == LEADER:
            raise FsError(11, "no in-sync master to hand over to")
        return {"stepping_down": True, "target": core.stepdown[0] if core.stepdown else None}

    def force_voters(self, voters: tuple[str, ...], min_term: int) -> dict:
        """The operator's way out when a voter majority is gone for good (`mfscli -C FV`):
        the core arms, refuses or fires the force and says so in lease.log; the command
        is repeated until a leader shows up (a repeat keeps the first timer)."""
        if self.core.role == LEADER:
            raise FsError(errno.EBUSY, "this master leads: there is nothing to force")
        unknown = sorted(set(voters) - set(self.voters))
        if not voters or unknown:
            raise FsError(errno.EINVAL, "the forced voters must be connected to this master"
                          + (f" (not connected: {', '.join(unknown)})" if unknown else ""))
        log.warning("operator forces the voter set {%s} above term %d",
                    ",".join(sorted(voters)), min_term)
        self.feed(cm.AdminForceVoters(tuple(sorted(voters)), min_term))
        return {"voters": sorted(voters), "min_term": min_term, "state": self.status()}

    async def hand_over(self) -> None:
        """Before a clean stop: a leader hands the leadership to an in-sync follower (as
        `mfscli -C SD`) and waits, at most a lease, until it is no longer leading."""
        if not self._serving:
            return
        log.info("stopping: handing the leadership over")
        try:
            self.step_down()
        except FsError as e:
            log.info("no hand-over (%s): the others take over when the lease runs out", e)
            return
        deadline = clock() + self.cfg.LEADER_LEASE_DURATION
        while self._serving and clock() < deadline:
            await asyncio.sleep(0.01)

    def view(self) -> dict:
        """This master's view of the cluster (`MasterStatus`, `mfscli -S IM`, the web)."""
        core, now = self.core, clock()
        rec = core.record or core.known_record
        members = set(rec.members) if rec else set()
        masters = []
        for host in sorted(set(self.directory.addresses) | {self.addr}, key=_ip_key):
            if host == self.addr:
                masters.append({"address": host, "ident": self.ident, "self": True,
                                "state": self.status(), "reachable": True,
                                "metadata_version": self.store.ns.version,
                                "log_version": core.log.last_version, "term": core.term,
                                "in_sync": self.ident in members})
                continue
            info = self.peers.info(host)
            entry = {"address": host, "ident": info.get("ident", ""), "self": False,
                     "reachable": info.get("connected", False),
                     "in_sync": info.get("ident") in members}
            p = core.progress.get(host) if core.role == LEADER else None
            if p is not None:
                entry["match_version"] = p.match_version
                entry["lag"] = core.log.last_version - p.match_version
            if host == core.leader_addr:
                entry["state"] = "LEADER"
            masters.append(entry)
        lease = None
        if core.role == LEADER:
            acked = core.lease.acked  # voter -> send time of the newest round it acknowledged
            # the lease rests on the newest renewal round a majority acknowledged
            base = core.lease_until - core.lease.lease_s
            known = base > float("-inf")
            lease = {"expires_in": round(max(0.0, core.lease_until - now), 3),
                     "acked_by": sorted(acked),
                     "acked_ago_s": {v: round(now - t, 3) for v, t in acked.items()},
                     "renewed_ago_s": round(now - base, 3) if known else None,
                     "renewal_acks": sum(1 for t in acked.values() if known and t >= base),
                     "voter_count": len(rec.voters) if rec else 0}
        return {
            "cluster": self.cluster, "ident": self.ident, "address": self.addr,
            "state": self.status(), "term": core.term, "accepted_term": core.accepted_term,
            "leader": core.leader_addr or "", "leader_client": self.leader_hint(),
            "metadata_version": self.store.ns.version, "commit": core.commit,
            "log": [core.log.last()[0], core.log.last_version],
            "record": rec.describe() if rec else None, "lease": lease,
            "record_voters": list(rec.voters) if rec else [],
            "voters": sorted(self.voters), "masters": masters,
            "wall_time": time.time(), "uptime_s": round(time.time() - self.started_at),
            "elections": [{"time": t, "event": e} for t, e in self.elections[-10:]],
        }


def found_cluster(data_path: str) -> str:
    """`mfsmaster init`: make this data directory the founder of a new cluster. Refused
    when it already belongs to one or holds metadata."""
    path = os.path.join(data_path, "ha.state")
    st = statefile.load(path) or {}
    if st.get("cluster"):
        raise ValueError(f"{data_path} already belongs to cluster {st['cluster']}")
    if any(n.startswith(("metadata.", "journal.")) for n in os.listdir(data_path)):
        raise ValueError(f"{data_path} holds metadata: a cluster is founded on an empty one")
    st.setdefault("uuid", uuid.uuid4().hex[:16])
    st.setdefault("incarnation", 1)
    st.setdefault("term", 0)
    st.setdefault("accepted_term", 0)
    st.update(cluster=secrets.token_hex(8), founded=True, running=False)
    statefile.save(path, st)
    return st["cluster"]


def _ip_key(host: str):
    try:
        return (0, int(ipaddress.ip_address(host)))
    except ValueError:
        return (1, host)
