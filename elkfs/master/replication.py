"""The chunk replication planner: keeps every chunk at its goal (the MooseFS chunk loop).

Theory of operation
-------------------
`Planner.plan(now, chunks, goals, registry, busy)` looks at every chunk of the metadata
(`chunks`: id -> `nodes.Chunk`, `goals`: id -> the highest goal of the files pointing at
it) and at the copies the chunkservers reported (`ChunkRegistry`), and returns what to
do now: `Replicate` (a chunkserver fetches a copy from others) and `Delete` (a chunkserver
drops a copy). It is pure: no sockets, no clock (`now` comes in), no journal (copies are
soft state; nothing here changes metadata). The master shell runs it every
CHUNKS_LOOP_PERIOD seconds, carries the actions out and reports each outcome with
`finished`. Its only side effect is on the registry: a server disconnected for longer
than `delay_disconnect` is forgotten (its copies count as lost from then on).

A copy of a chunk is, for the planner:
- good: on a connected server, right version, not damaged, not on a disk marked for
  removal;
- marked: like good but on a disk marked for removal (`*` in mfshdd.cfg): readable and
  a replication source, but not counted toward the goal, so it gets copied elsewhere;
- waiting: on a server that disconnected less than `delay_disconnect` ago, right version:
  counted toward the goal (no rebuild storm when a chunkserver restarts), not readable;
- bad: on a connected server with another version (stale: it missed a write) or reported
  damaged (CRC): deleted, once the chunk has a readable copy elsewhere.

Per chunk, in this order: bad copies are deleted; if good + waiting + replications in
flight < goal, copies are made (one per missing copy, from readable copies to servers that
hold no copy of the chunk, most free space first); if good > goal and nothing is waiting
or in flight, the extra copies on the fullest servers are deleted. Chunks that are being
written (`busy`) are left alone: their versions are changing.

Limits (MooseFS-like): at most `write_rep` replications into one server and `read_rep`
out of one server at a time, at most `delete` deletions per server at a time, nothing
after a master start until every known chunkserver registered (`complete`) or
`delay_init` seconds passed. A server that disconnects is given up on (its copies count as
lost and are rebuilt, most endangered first) after `delay_disconnect` seconds (default 0,
as in MooseFS 2+), unless it is in maintenance: a planned absence, whose copies are
waited for. Replications are handed out most urgent first: chunks with one readable
copy left, then by the share of the goal that is missing.

A chunk with no copy at its version but copies at an older one had a version raise
committed whose commands never reached the chunkservers (the master that decided it
died first, or, with HA, the change was committed by the next leader): nothing was
written under the new version, since a chunkserver takes writes only at the version it
holds and the raise is told to a writer only after it was carried out. So the copies at
the highest version any server reported hold the newest data, and `Raise` brings them up
to the chunk's version. Only when the registry is complete (`complete`: every
chunkserver of the cluster registered here) and no disconnected server holds a copy
that high: a copy not heard of could hold newer data.

Counts of the last pass (`stats`): missing (no readable copy), endangered (one readable
copy, goal >= 2), undergoal (fewer good copies than the goal, missing excluded), overgoal,
stale/damaged copies, and per server how many of its marked copies are still needed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

from ..proto.layout import CHUNK_SIZE
from .chunkservers import ChunkRegistry, ChunkServer

MIN_FREE = CHUNK_SIZE + (1 << 20)  # a target needs room for one whole chunk


@dataclass(frozen=True)
class Replicate:
    chunk_id: int
    version: int
    target: bytes
    sources: tuple[bytes, ...]  # readable copies, best first


@dataclass(frozen=True)
class Delete:
    chunk_id: int
    version: int  # the version of the copy to delete
    cs_id: bytes
    reason: str  # "stale", "damaged", "overgoal", "orphan"


@dataclass(frozen=True)
class Raise:
    """Set the copies at `version` on `cs_ids` to the chunk's `new_version`."""

    chunk_id: int
    version: int
    new_version: int
    cs_ids: tuple[bytes, ...]


def raisable(version: int, holders: Mapping | None, servers: Mapping) -> Raise | None:
    """The `Raise` that brings a chunk with no copy at `version` back (see the module
    docstring), or None. `chunk_id` is filled in by the caller."""
    if not holders:
        return None
    valid = {cs: c for cs, c in holders.items() if c.valid and cs in servers}
    if not valid or any(c.version >= version for c in valid.values()):
        return None
    top = max(c.version for c in valid.values())
    at_top = tuple(sorted(cs for cs, c in valid.items() if c.version == top))
    if not all(servers[cs].connected for cs in at_top):
        return None
    return Raise(0, top, version, at_top)


@dataclass(frozen=True)
class Forget:
    """Not an action: a note that a server was given up on (already applied)."""

    cs_id: bytes
    copies: int


@dataclass
class Limits:
    write_rep: int = 2  # CHUNKS_WRITE_REP_LIMIT
    read_rep: int = 10  # CHUNKS_READ_REP_LIMIT
    delete: int = 10  # CHUNKS_DEL_LIMIT
    delay_init: float = 60.0  # REPLICATIONS_DELAY_INIT
    delay_disconnect: float = 3600.0  # REPLICATIONS_DELAY_DISCONNECT


@dataclass
class Stats:
    chunks: int = 0
    missing: int = 0
    endangered: int = 0
    undergoal: int = 0
    overgoal: int = 0
    stale_copies: int = 0
    damaged_copies: int = 0
    marked_needed: Counter = field(default_factory=Counter)  # cs_id -> marked copies needed
    by_copies: Counter = field(default_factory=Counter)  # readable copies -> chunks
    by_goal: Counter = field(default_factory=Counter)  # (goal, readable copies) -> chunks
    mark_reports: int = 0  # the registry's count of removal marks these stats include


class Planner:
    def __init__(self, limits: Limits, started_at: float):
        self.limits = limits
        self.started_at = started_at
        self.inflight: dict[int, list] = {}  # chunk id -> actions in flight
        self.maintenance: frozenset = frozenset()  # as of the last pass
        self.reading: Counter = Counter()  # cs_id -> replications it is a source of
        self.writing: Counter = Counter()  # cs_id -> replications into it
        self.deleting: Counter = Counter()  # cs_id -> deletions in flight
        self.stats = Stats()
        self.passes = 0
        self.replicated = 0  # replications finished well (for reports and benchmarks)
        self.replication_failures = 0
        self.deleted = 0

    # ------------------------------------------------------------ outcomes

    def started(self, action) -> None:
        self.inflight.setdefault(action.chunk_id, []).append(action)
        if isinstance(action, Replicate):
            self.writing[action.target] += 1
            self.reading[action.sources[0]] += 1
        elif isinstance(action, Delete):
            self.deleting[action.cs_id] += 1

    def finished(self, action, ok: bool) -> None:
        actions = self.inflight.get(action.chunk_id)
        if actions and action in actions:
            actions.remove(action)
            if not actions:
                del self.inflight[action.chunk_id]
        if isinstance(action, Replicate):
            self.writing[action.target] -= 1
            self.reading[action.sources[0]] -= 1
            if ok:
                self.replicated += 1
            else:
                self.replication_failures += 1
        elif isinstance(action, Delete):
            self.deleting[action.cs_id] -= 1
            if ok:
                self.deleted += 1

    # ------------------------------------------------------------ planning

    def plan(self, now: float, chunks: Mapping, goals: Mapping[int, int],
             registry: ChunkRegistry, busy: set[int] = frozenset(),
             complete: bool = False, maintenance: frozenset = frozenset()) -> list:
        """`complete`: every chunkserver of the cluster is registered (the master knows
        every copy), so it may act without waiting `delay_init`; `maintenance`: servers
        whose absence is planned (their copies are waited for, they get no new ones)."""
        self.passes += 1
        limits = self.limits
        actions: list = []
        for server in list(registry.servers.values()):
            if (not server.connected and not server.lost and server.cs_id not in maintenance
                    and now - server.disconnected_at >= limits.delay_disconnect):
                actions.append(Forget(server.cs_id, registry.forget(server.cs_id)))
        servers = registry.servers
        acting = complete or now - self.started_at >= limits.delay_init
        self.maintenance = maintenance
        stats = Stats(mark_reports=registry.mark_reports)
        urgent = []  # (priority, chunk_id, version, need, readable, holders)
        for chunk_id, chunk in chunks.items():
            version = chunk.version
            goal = goals.get(chunk_id, 1)
            holders = registry.copies.get(chunk_id)
            good, marked, bad = [], [], []
            waiting = 0
            if holders:
                for cs_id, copy in holders.items():
                    server = servers.get(cs_id)
                    if server is None:
                        continue
                    if not server.connected:
                        if copy.version == version and copy.valid:
                            waiting += 1
                        continue
                    if copy.version != version or not copy.valid:
                        bad.append((cs_id, copy))
                    elif copy.marked:
                        marked.append(cs_id)
                    else:
                        good.append(cs_id)
            readable = len(good) + len(marked)
            stats.chunks += 1
            stats.by_copies[readable] += 1
            stats.by_goal[(goal, readable)] += 1
            if readable == 0:
                stats.missing += 1
            elif readable == 1 and goal >= 2:
                stats.endangered += 1
            if readable and len(good) < goal:
                stats.undergoal += 1
            elif len(good) > goal:
                stats.overgoal += 1
            for cs_id, copy in bad:
                if copy.valid:
                    stats.stale_copies += 1
                else:
                    stats.damaged_copies += 1
            if marked and len(good) + waiting < goal:
                for cs_id in marked:
                    stats.marked_needed[cs_id] += 1
            if readable == 0 and complete and chunk_id not in busy \
                    and chunk_id not in self.inflight:
                r = raisable(version, holders, servers)
                if r is not None:
                    action = Raise(chunk_id, r.version, r.new_version, r.cs_ids)
                    self.started(action)
                    actions.append(action)
            if not acting or chunk_id in busy:
                continue
            inflight = self.inflight.get(chunk_id, ())
            if readable and bad:
                for cs_id, copy in bad:
                    if self.deleting[cs_id] < limits.delete and not any(
                            isinstance(a, Delete) and a.cs_id == cs_id for a in inflight):
                        action = Delete(chunk_id, copy.version, cs_id,
                                        "damaged" if not copy.valid else "stale")
                        self.started(action)
                        actions.append(action)
            pending = sum(1 for a in inflight if isinstance(a, Replicate))
            need = goal - len(good) - waiting - pending
            if need > 0 and readable:
                priority = (0 if readable == 1 else 1, -need / goal, chunk_id)
                urgent.append((priority, chunk_id, version, need, good + marked, holders))
            elif len(good) > goal and not waiting and not inflight:
                extra = sorted(good, key=lambda c: (servers[c].free_bytes, c))
                for cs_id in extra[:len(good) - goal]:
                    if self.deleting[cs_id] < limits.delete:
                        action = Delete(chunk_id, version, cs_id, "overgoal")
                        self.started(action)
                        actions.append(action)
        if acting:
            for chunk_id, holders in registry.copies.items():
                if chunk_id not in chunks and chunk_id not in self.inflight:
                    for cs_id, copy in holders.items():
                        server = servers.get(cs_id)
                        if server is not None and server.connected \
                                and self.deleting[cs_id] < limits.delete:
                            action = Delete(chunk_id, copy.version, cs_id, "orphan")
                            self.started(action)
                            actions.append(action)
            actions.extend(self._replications(urgent, registry))
        self.stats = stats
        return actions

    def removal_state(self, server: ChunkServer, registry: ChunkRegistry) -> str:
        """How the removal of the server's marked disks stands, for reports: "" (none
        marked), "in progress", "ready" (every marked copy has its goal elsewhere), or
        "counting" until a pass has seen the latest marks (a chunkserver that just came
        back reports its marks after its copies, which count as good until then)."""
        if not server.marked_copies:
            return ""
        if self.stats.mark_reports != registry.mark_reports:
            return "counting"
        return "in progress" if self.stats.marked_needed.get(server.cs_id, 0) else "ready"

    def _replications(self, urgent: list, registry: ChunkRegistry) -> list:
        if not urgent:
            return []
        limits = self.limits
        targets = [s for s in registry.servers.values() if s.connected
                   and s.free_bytes >= MIN_FREE and s.cs_id not in self.maintenance]
        if not targets:
            return []
        out = []
        urgent.sort(key=lambda u: u[0])
        for _, chunk_id, version, need, readable, holders in urgent:
            sources = [c for c in readable if self.reading[c] < limits.read_rep]
            if not sources:
                continue
            taken = set(holders or ())
            taken.update(a.target for a in self.inflight.get(chunk_id, ())
                         if isinstance(a, Replicate))
            choices = [s for s in targets
                       if s.cs_id not in taken and self.writing[s.cs_id] < limits.write_rep]
            if not choices:
                continue
            choices.sort(key=lambda s: (self.writing[s.cs_id], -s.free_bytes, s.cs_id))
            for target in choices[:need]:
                sources.sort(key=lambda c: self.reading[c])
                action = Replicate(chunk_id, version, target.cs_id, tuple(sources))
                self.started(action)
                out.append(action)
                if self.reading[sources[0]] >= limits.read_rep:
                    sources = sources[1:]
                    if not sources:
                        break
        return out
