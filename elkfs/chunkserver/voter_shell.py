"""The chunkserver's voter: the consensus `Voter` with its state file, clock and fence.

Every chunkserver votes for the leader (HA.md): a master leads only while a majority of
the voters grant it a lease. The state the voter promises from (`term`, `voted_for`, the
in-sync record) is written to `voter.state` and fsynced *before* the answer that depends
on it leaves; the lease itself is volatile, and after a restart the voter grants nothing
for a whole lease (the core's restart silence) because a promise made before the crash
may still run.

The voter's uuid is the identity of that state file: a chunkserver whose file is lost or
unreadable starts under a new uuid (the file is set aside, never silently reset), which
the leader must add to the voter set before it counts.

Fence: chunkserver commands and new chunk versions carry the leader's term; once the
voter accepted a term (voted in it, or followed its leader) or a command of a term came
in, anything of a lower term is refused (invariant 4: a deposed leader changes nothing).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid

import msgspec

from elkfs import statefile
from elkfs.consensus import wire
from elkfs.consensus.config import HAConfig
from elkfs.consensus.leaselog import format_line
from elkfs.consensus.messages import PersistVoterState
from elkfs.consensus.records import Record
from elkfs.consensus.voter import Voter

log = logging.getLogger("elkfs.chunkserver.voter")


def clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class VoterShell:
    def __init__(self, data_path: str, lease_s: float = 2.0):
        self.path = os.path.join(data_path, "voter.state")
        self.lease_log = open(os.path.join(data_path, "lease.log"), "a", buffering=1)
        st = self._load()
        self.uuid: str = st["uuid"]
        self.cluster: str = st.get("cluster", "")
        self.fence_term: int = st.get("fence_term", 0)
        record = st.get("record")
        persisted = PersistVoterState(st.get("term", 0), st.get("voted_for"),
                                      msgspec.convert(record, Record) if record else None)
        self.voter = Voter(self.uuid, HAConfig(lease_duration_s=lease_s), clock(), persisted)

    def _load(self) -> dict:
        try:
            st = statefile.load(self.path)
        except ValueError as e:
            aside = f"{self.path}.damaged.{int(time.time())}"
            os.rename(self.path, aside)
            log.error("%s; kept as %s: voting under a new identity, which the leader must "
                      "add to the voters", e, aside)
            st = None
        if st is None:
            st = {"uuid": uuid.uuid4().hex[:16], "term": 0, "voted_for": None, "record": None,
                  "cluster": "", "fence_term": 0}
            statefile.save(self.path, st)
            log.info("new voter %s", st["uuid"])
        return st

    def _save(self) -> None:
        v = self.voter
        statefile.save(self.path, {
            "uuid": self.uuid, "term": v.term, "voted_for": v.voted_for,
            "record": msgspec.to_builtins(v.record) if v.record else None,
            "cluster": self.cluster, "fence_term": self.fence_term})

    # ------------------------------------------------------------ configuration

    def lease_at_least(self, lease_s: float) -> None:
        """Promise at least the masters' lease (a longer promise is always safe; a shorter
        one than a leader counts on is not)."""
        if lease_s > self.voter.cfg.lease_duration_s:
            self.voter.cfg = dataclasses.replace(self.voter.cfg, lease_duration_s=lease_s)
            self.voter.quiet_until = max(self.voter.quiet_until, clock() + lease_s)

    def adopt_cluster(self, cluster: str, source: str) -> bool:
        if not cluster or cluster == self.cluster:
            return True
        if self.cluster:
            return False
        self.cluster = cluster
        self._save()
        log.info("joined cluster %s (learnt from %s)", cluster, source)
        return True

    # ------------------------------------------------------------ votes

    def step(self, body: bytes, reply) -> None:
        """Handle one message from a master; `reply(body)` sends an answer back on the
        connection it came on."""
        try:
            msg = wire.decode(body)
        except wire.DecodeError as e:
            log.warning("undecodable message from a master: %s", e)
            return
        out = self.voter.step(clock(), msg)
        if out.persist:
            self._save()  # before any answer that depends on it
        for _, answer in out.send:
            reply(wire.encode(answer))
        for ev in out.lease_log:
            wall = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
            self.lease_log.write(format_line(f"{wall} mono={clock():.3f}", ev) + "\n")

    # ------------------------------------------------------------ fence

    def admit_term(self, term: int) -> bool:
        """Whether a command of `term` may act on this chunkserver's chunks; a higher
        term than any seen raises the fence (persisted)."""
        highest = max(self.fence_term, self.voter.term)
        if term < highest:
            return False
        if term > self.fence_term:
            self.fence_term = term
            self._save()
        return True

    @property
    def term(self) -> int:
        return max(self.fence_term, self.voter.term)

    def close(self) -> None:
        self.lease_log.close()
