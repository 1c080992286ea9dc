"""Chunk operations: everything the master has chunkservers do.

The chunk side of clients' writes and truncations (locks, new chunks made by the writer's
session, version raises, copy-on-write), the chunkserver side of applied changes
(`run_effects`: deletions, truncations, duplications), and the replication planner's
actions. Commands go to chunkservers only after the change that decided them is durable
(committed, with HA).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time

from ..proto import messages as m
from ..proto import rpc
from ..proto.auth import READ, WRITE
from ..proto.errors import NO_CHUNK, NO_SERVERS, FsError
from ..proto.layout import CHUNK_SIZE
from . import replication as rep
from .namespace import DeleteChunkEffect, DuplicateChunkEffect, TruncateChunkEffect
from .gcpolicy import paused as gc_paused
from .nodes import FileNode
from .part import MasterPart
from .writereports import WriteReports

log = logging.getLogger("mfsmaster")

GOALS_STEP = 50_000  # files added up between two looks at the clients
LOW_SPACE = 16 << 20  # a server with less free space gets no writes while others can
REPLICATION_WRITER_WAIT_S = 10.0  # how long a writer lets a replication of its chunk finish
# How long WriteChunkEnd waits for copies' own reports that the session ended well (they
# are sent before the chain answers the writer, so they are normally here already).
REPORT_WAIT_S = 5.0


class ChunkOps(MasterPart):
    def __init__(self, master):
        super().__init__(master)
        self.busy_chunks: dict[int, int] = {}  # chunk id -> operations changing its copies
        # chunk id -> set when its replication in flight ends (writers wait for it)
        self.replicating: dict[int, asyncio.Event] = {}
        # New chunks being made by their writer's session: (inode, index) -> (chunk id,
        # version, chunkservers); their copies are registered at WriteChunkEnd.
        self.creating: dict[tuple[int, int], tuple[int, int, list]] = {}
        # Chains handed out for writes of existing chunks: (inode, index) -> (chunk id,
        # version, chunkservers). At WriteChunkEnd only the copies that reported the
        # session done themselves (`reports`) count; see writereports.py.
        self.writing: dict[tuple[int, int], tuple[int, int, list]] = {}
        self.reports = WriteReports()
        self._reported = asyncio.Event()  # set at every report (waiters check theirs)

    # ------------------------------------------------------------ replication

    async def replication_pass(self) -> None:
        goals = await self.chunk_goals_in_steps()
        if not self.master.leading:
            return  # lost the lead meanwhile: the new leader plans
        busy = self.busy()
        # Chunks made while the goals were added up have none yet: the next pass.
        busy.update(c for c in self.ns.chunks if c not in goals)
        actions = self.planner.plan(time.monotonic(), self.ns.chunks, goals,
                                    self.registry, busy, self.master.registry_complete(),
                                    self.master.in_maintenance())
        for action in actions:
            if isinstance(action, rep.Forget):
                server = self.registry.servers.get(action.cs_id)
                log.warning("chunkserver %s gone for %.0fs: its %d copies count as lost",
                            server.name if server else action.cs_id.hex(),
                            self.cfg.REPLICATIONS_DELAY_DISCONNECT, action.copies)
            else:
                self.spawn(self.run_action(action))

    async def chunk_goals_in_steps(self, step: int = GOALS_STEP) -> dict[int, int]:
        """Chunk id -> the highest goal of the files pointing at it (trash included),
        added up `step` files at a time with the event loop free in between: with
        millions of files, adding them all up at once held every client for seconds,
        every pass (every CHUNKS_LOOP_PERIOD). A file changed meanwhile may count with its goal of a
        moment ago for this one pass; a chunk made meanwhile has no goal and is left for
        the next pass (the caller marks it busy)."""
        goals: dict[int, int] = {}
        get = goals.get
        with gc_paused():  # no collection walks the lists meanwhile
            for i, piece in enumerate(self.ns.nodes.pieces(step)):
                if i:
                    await asyncio.sleep(0)
                for node in piece:
                    if type(node) is FileNode and node.chunks:
                        goal = node.goal
                        for chunk_id in node.chunks:
                            if chunk_id and get(chunk_id, 0) < goal:
                                goals[chunk_id] = goal
        return goals

    def busy(self) -> set[int]:
        """Chunks whose versions or copies are being changed (writes, truncations,
        copy-on-write): the planner leaves them alone."""
        busy = set(self.busy_chunks)
        for inode, index in list(self.locks.holders):
            try:
                chunk = self.ns.chunk_of(inode, index)
            except FsError:
                continue
            if chunk is not None:
                busy.add(chunk.chunk_id)
        return busy

    def _mark_busy(self, *chunk_ids: int) -> None:
        for c in chunk_ids:
            self.busy_chunks[c] = self.busy_chunks.get(c, 0) + 1

    def _unmark_busy(self, *chunk_ids: int) -> None:
        for c in chunk_ids:
            n = self.busy_chunks.get(c, 0) - 1
            if n > 0:
                self.busy_chunks[c] = n
            else:
                self.busy_chunks.pop(c, None)

    async def run_action(self, action) -> None:
        ok = False
        registry = self.registry
        try:
            if isinstance(action, rep.Raise):
                ok = bool(await self.raise_copies(action))
            elif isinstance(action, rep.Replicate):
                done = self.replicating.setdefault(action.chunk_id, asyncio.Event())
                target = registry.servers.get(action.target)
                sources = [registry.servers[c].addr for c in action.sources
                           if c in registry.servers]
                token = self.master.token(action.chunk_id, action.version, READ,
                                          ttl=self.cfg.REPLICATION_TIMEOUT + 60)
                ok = await self.command(target, m.ReplicateChunk(
                    action.chunk_id, action.version, sources, token),
                    self.cfg.REPLICATION_TIMEOUT)
                if ok and target.connected:
                    registry.set_copy(action.chunk_id, action.target, action.version)
            else:
                server = registry.servers.get(action.cs_id)
                ok = await self.command(server, m.DeleteChunk(action.chunk_id, action.version))
                copy = registry.holders(action.chunk_id).get(action.cs_id)
                if ok and copy is not None and copy.version == action.version:
                    registry.drop_copy(action.chunk_id, action.cs_id)
                if ok and action.reason != "orphan":
                    log.info("deleted %s copy of chunk %016X v%d on %s", action.reason,
                             action.chunk_id, action.version, server.name)
        except Exception:
            log.exception("replication action %r failed", action)
        finally:
            self.planner.finished(action, ok)
            if isinstance(action, rep.Replicate):
                self.replicating.pop(action.chunk_id, asyncio.Event()).set()

    async def raise_copies(self, action: rep.Raise) -> list:
        """Carry out a `Raise`: the servers whose copies now have the chunk's version."""
        servers = [self.registry.servers[c] for c in action.cs_ids if c in self.registry.servers]
        done = await self.command_all(servers, lambda s: m.SetChunkVersion(
            action.chunk_id, action.version, action.new_version))
        raised = [s for s, ok in zip(servers, done) if ok]
        for server in raised:
            self.registry.set_copy(action.chunk_id, server.cs_id, action.new_version)
        if raised:
            log.info("chunk %016X: copies at version %X raised to %X (a raise decided but "
                     "never carried out) on %s", action.chunk_id, action.version,
                     action.new_version, ", ".join(s.name for s in raised))
        return raised

    async def command(self, server, cmd: m.CsCmd, timeout: float | None = None) -> bool:
        """Send one command to one chunkserver; True when it succeeded."""
        if server is None:
            return False
        link = server.link
        term = self.master.command_term()
        if link is None or not link.is_open or term is None:
            return False
        try:
            await link.call(m.CsCommand, command=cmd, term=term,
                            timeout=timeout or self.cfg.CS_COMMAND_TIMEOUT)
            return True
        except FsError as e:
            if e.status == NO_CHUNK and isinstance(cmd, m.DeleteChunk):
                return True  # already gone
            log.warning("chunkserver %s refused %s of chunk %016X: %s", server.name,
                        type(cmd).__name__, cmd.chunk_id, e)
        except (rpc.ConnectionClosed, asyncio.TimeoutError, OSError) as e:
            log.warning("chunkserver %s did not answer %s of chunk %016X: %r", server.name,
                        type(cmd).__name__, cmd.chunk_id, e)
        return False

    # ------------------------------------------------------------ chunk operations of clients

    def chunk_op_now(self, conn: rpc.Connection, msg: m.MetaRequest) -> bool:
        """The common chunk operations that need no waiting but for durability, done in
        this step (no task, no extra loop iteration): a WriteChunk of a chunk that does
        not exist yet and nobody locks, and a WriteChunkEnd with nothing to delete.
        Returns False for the others (`chunk_op`). Raises FsError as `handle_op` expects."""
        op = msg.op
        if isinstance(op, m.WriteChunk):
            key = (op.inode, op.index)
            if self.ns.chunk_of(op.inode, op.index) is not None:
                return False
            node = self.ns.file(op.inode)
            if not self.locks.try_acquire(key, conn):
                return False
            try:
                result, version = self._make_chunk(msg, node)
            except BaseException:
                self.locks.release(key)
                raise
        elif isinstance(op, m.WriteChunkEnd) and not self._unmaking(conn, op):
            session = self._session_of(conn, op)
            if session is not None and self._unconfirmed(session):
                return False  # wait for the copies' reports (write_chunk_end)
            result, version = self._end_chunk(conn, msg)
            if self.master.clients.open_elsewhere(op, msg.session):
                self.spawn(self._recall_then_reply(conn, msg, result, version))
                return True
        else:
            return False
        reply = m.MetaReply(msg.req, 0, result)
        self.store.when_durable(version, lambda: conn.send_if_open(reply))
        return True

    async def _recall_then_reply(self, conn, msg: m.MetaRequest, result, version: int) -> None:
        """A file other sessions hold open changed: they drop their caches first."""
        await self.master.clients.recall_inode(msg.op, msg.session)
        try:
            await self.store.wait_durable(version)
        except FsError:
            return  # no longer leading: the client resends to the new leader
        conn.send_if_open(m.MetaReply(msg.req, 0, result))

    async def chunk_op(self, conn: rpc.Connection, msg: m.MetaRequest) -> None:
        op = msg.op
        try:
            if isinstance(op, m.WriteChunk):
                result = await self.write_chunk(conn, msg)
            elif isinstance(op, m.WriteChunkEnd):
                result = await self.write_chunk_end(conn, msg)
            else:
                result = await self.truncate(conn, msg)
            await self.master.clients.recall_inode(op, msg.session)
            conn.send_if_open(m.MetaReply(msg.req, 0, result))
        except FsError as e:
            conn.send_if_open(m.Error(msg.req, e.status, e.detail))
        except (rpc.ConnectionClosed, asyncio.CancelledError):
            pass
        except Exception as e:
            log.exception("chunk operation %s failed", type(op).__name__)
            conn.send_if_open(m.Error(msg.req, errno.EIO, str(e)))

    async def _after_replication(self, chunk_id: int) -> bool:
        """A write raises the chunk's version, which makes a copy in flight fail: a chunk
        written without a pause (an appending log) would never get its lost copy back.
        So a writer waits (a while at most) for the chunk's replication to end, and the
        new copy gets the raise with the others. True when it waited."""
        done = self.replicating.get(chunk_id)
        if done is None:
            return False
        try:
            await asyncio.wait_for(done.wait(), REPLICATION_WRITER_WAIT_S)
        except asyncio.TimeoutError:
            log.info("chunk %016X: replication still running after %.0f s; writing anyway",
                     chunk_id, REPLICATION_WRITER_WAIT_S)
        return True

    async def write_chunk(self, conn: rpc.Connection, msg: m.MetaRequest) -> m.ChunkOut:
        op: m.WriteChunk = msg.op
        self.ns.file(op.inode)  # fail fast before waiting for the lock
        key = (op.inode, op.index)
        await self.locks.acquire(key, conn)
        try:
            node = self.ns.file(op.inode)
            chunk = self.ns.chunk_of(op.inode, op.index)
            if chunk is None:
                out, version = self._make_chunk(msg, node)
                await self.store.wait_durable(version)
                return out
            if await self._after_replication(chunk.chunk_id):
                node = self.ns.file(op.inode)
                chunk = self.ns.chunk_of(op.inode, op.index)
            # A chunk whose creation every chunkserver refused has no copy and no data:
            # create it again, wherever there is room now.
            fresh = (chunk.refs == 1 and not self.registry.holders(chunk.chunk_id)
                     and node.length <= op.index * CHUNK_SIZE)
            if fresh:
                targets = self._targets(node.goal)
            else:
                targets = self.registry.valid_servers(chunk.chunk_id, chunk.version)
                if not targets:
                    targets = await self._raise_for_write(chunk)
                if not targets:
                    raise FsError(errno.EIO, f"chunk {chunk.chunk_id:016X} has no valid copy")
                # A (nearly) full server is left out while others have room: its copy goes
                # stale and the replication loop rebuilds it on a server with space.
                roomy = [s for s in targets if s.free_bytes >= LOW_SPACE]
                if roomy and len(roomy) < len(targets):
                    targets = roomy
            shared = not fresh and chunk.refs > 1
            old = (chunk.chunk_id, chunk.version)
            result, version = self.store.change(op, time.time_ns(), msg.session, msg.seq)
            await self.store.wait_durable(version)
            if fresh:
                cmd = lambda s: m.CreateChunk(result.chunk_id, result.version)
            elif shared:  # copy-on-write: the chunkservers copy the shared chunk
                cmd = lambda s: m.DuplicateChunk(old[0], old[1], result.chunk_id,
                                                 result.version)
            else:
                cmd = lambda s: m.SetChunkVersion(result.chunk_id, old[1], result.version)
            if shared:
                self._mark_busy(old[0])
            refusals: list[int] = []
            try:
                done = await self.command_all(targets, cmd, refusals)
            finally:
                if shared:
                    self._unmark_busy(old[0])
            if fresh and not all(done):
                # Full or failing servers: try others for the copies they refused.
                tried = {s.cs_id for s in targets}
                more = self.registry.choose_servers(
                    done.count(False), exclude=tried | self.master.in_maintenance())
                if more:
                    targets = targets + more
                    done = done + await self.command_all(more, cmd, refusals)
            chain, chain_servers = [], []
            for server, ok in zip(targets, done):
                if ok:
                    self.registry.set_copy(result.chunk_id, server.cs_id, result.version)
                    chain.append(server.addr)
                    chain_servers.append(server)
                else:
                    self.registry.drop_copy(result.chunk_id, server.cs_id)
            self.writing[key] = (result.chunk_id, result.version, chain_servers)
            if not chain:
                if refusals and all(r in (errno.ENOSPC, errno.EDQUOT) for r in refusals):
                    raise FsError(errno.ENOSPC, "every chunkserver asked is full")
                raise FsError(errno.EIO, f"no chunkserver accepted chunk {result.chunk_id:016X}")
            return m.ChunkOut(result.chunk_id, result.version, node.length, chain,
                              token=self.master.token(result.chunk_id, result.version, WRITE))
        except BaseException:
            self.locks.release(key)
            raise

    async def _raise_for_write(self, chunk) -> list:
        """A chunk to write whose copies all missed a raise that was never carried out:
        raise them now (the planner would, at its next pass)."""
        if not self.master.registry_complete() or chunk.chunk_id in self.planner.inflight:
            return []
        r = rep.raisable(chunk.version, self.registry.holders(chunk.chunk_id),
                         self.registry.servers)
        if r is None:
            return []
        return await self.raise_copies(rep.Raise(chunk.chunk_id, r.version, r.new_version,
                                                 r.cs_ids))

    def _targets(self, goal: int) -> list:
        """Chunkservers for a new chunk's copies, or why there are none."""
        targets = self.registry.choose_servers(goal, exclude=self.master.in_maintenance())
        if not targets:
            servers = [s for s in self.registry.servers.values() if not s.lost]
            if servers and all(s.connected for s in servers):
                # Every chunkserver is here and full: no point in retrying.
                raise FsError(errno.ENOSPC, "every chunkserver is full")
            raise FsError(NO_SERVERS, "no chunkserver with free space")
        return targets

    def _make_chunk(self, msg: m.MetaRequest, node) -> tuple[m.ChunkOut, int]:
        """A brand-new chunk (its lock held): the writer's session makes it on each
        chunkserver (WriteInit.create). Its copies count once WriteChunkEnd says it
        worked. Returns the answer and the version to be durable before it goes."""
        op: m.WriteChunk = msg.op
        targets = self._targets(node.goal)
        result, version = self.store.change(op, time.time_ns(), msg.session, msg.seq)
        self.creating[(op.inode, op.index)] = (result.chunk_id, result.version, targets)
        return m.ChunkOut(result.chunk_id, result.version, node.length,
                          [s.addr for s in targets], create=True,
                          token=self.master.token(result.chunk_id, result.version,
                                                  WRITE)), version

    async def _unmake(self, made: tuple[int, int, list]) -> None:
        """Delete what a failed creating session may have made, before anyone writes the
        chunk again (a new attempt makes it anew, with a higher version)."""
        chunk_id, version, servers = made
        deleted = await asyncio.gather(*(self.command(s, m.DeleteChunk(chunk_id, version))
                                         for s in servers))
        for server, ok in zip(servers, deleted):
            # Reported made (CsChunkMade) before the deletion's answer, on the same link.
            copy = self.registry.holders(chunk_id).get(server.cs_id)
            if ok and copy is not None and copy.version == version:
                self.registry.drop_copy(chunk_id, server.cs_id)

    async def _unmake_then_release(self, key, made) -> None:
        try:
            await self._unmake(made)
        finally:
            self.locks.release(key)

    # ------------------------------------------------------------ copies' own reports

    def write_done(self, cs_id: bytes, chunk_id: int, version: int) -> None:
        """A chunkserver says its write session on (chunk, version) ended well."""
        self.reports.add(time.monotonic(), chunk_id, version, cs_id)
        self._reported.set()
        self._reported = asyncio.Event()

    def _session_of(self, conn: rpc.Connection, op: m.WriteChunkEnd):
        """The chain this writer was handed for the chunk it ends well: (chunk id,
        version, chunkservers), or None (nothing to check: a failed session, a chunk
        changed meanwhile, or handed out before this master started)."""
        key = (op.inode, op.index)
        if not op.ok or self.locks.held_by(key) is not conn:
            return None
        session = self.creating.get(key) or self.writing.get(key)
        if session is None or session[0] != op.chunk_id:
            return None
        return session

    def _unconfirmed(self, session) -> list:
        chunk_id, version, servers = session
        done = self.reports.reporters(chunk_id, version)
        return [s for s in servers if s.cs_id not in done]

    async def _wait_reports(self, session) -> list:
        """The chain's chunkservers that have not reported the session done, after
        waiting up to REPORT_WAIT_S for them."""
        deadline = time.monotonic() + REPORT_WAIT_S
        while True:
            missing = self._unconfirmed(session)
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return missing
            try:
                await asyncio.wait_for(self._reported.wait(), left)
            except asyncio.TimeoutError:
                pass

    def _drop_unconfirmed(self, key, session, missing: list) -> None:
        """Copies of the session whose chunkservers did not say they stored it: not
        counted (a new chunk's), or counted bad (the replication loop replaces them from
        a copy that did)."""
        chunk_id, version, servers = session
        for server in missing:
            log.warning("chunk %016X v%d: chunkserver %s did not report the write the "
                        "client ended as done; its copy is not counted", chunk_id, version,
                        server.name)
            copy = self.registry.holders(chunk_id).get(server.cs_id)
            if copy is not None and copy.version == version:
                self.registry.mark_damaged(chunk_id, server.cs_id)
        if self.creating.get(key) is session:
            self.creating[key] = (chunk_id, version, [s for s in servers if s not in missing])

    def _unmaking(self, conn: rpc.Connection, op: m.WriteChunkEnd) -> bool:
        """Whether ending this session deletes the copies its failed creation made."""
        key = (op.inode, op.index)
        made = self.creating.get(key)
        return (made is not None and self.locks.held_by(key) is conn
                and not (op.ok and made[0] == op.chunk_id))

    async def write_chunk_end(self, conn: rpc.Connection, msg: m.MetaRequest):
        op: m.WriteChunkEnd = msg.op
        key = (op.inode, op.index)
        session = self._session_of(conn, op)
        if session is not None:
            missing = await self._wait_reports(session)
            if missing and len(missing) == len(session[2]):
                # No copy says it holds the data: the write is lost, whatever the head
                # of the chain answered. A new chunk's copies go; an old chunk's stay.
                self.writing.pop(key, None)
                if key in self.creating:
                    made = self.creating.pop(key)
                    try:
                        await self._unmake(made)
                    finally:
                        self.locks.release(key)
                else:
                    self.locks.release(key)
                raise FsError(errno.EIO, f"no chunkserver confirmed the write of chunk "
                                         f"{op.chunk_id:016X}")
            if missing:
                self._drop_unconfirmed(key, session, missing)
        if self._unmaking(conn, op):
            try:
                await self._unmake(self.creating.pop(key))
            except BaseException:
                self.locks.release(key)
                raise
        result, version = self._end_chunk(conn, msg)
        await self.store.wait_durable(version)
        return result

    def _end_chunk(self, conn: rpc.Connection, msg: m.MetaRequest) -> tuple[m.Result, int]:
        """Record the session's outcome and release the chunk. A new chunk's copies count
        from here (a failed creation's were deleted before). The lock goes now, before
        the change is durable: a later writer's change is journaled after this one."""
        op: m.WriteChunkEnd = msg.op
        key = (op.inode, op.index)
        try:
            if self.locks.held_by(key) is conn:
                session = self.writing.pop(key, None)
                if session is not None:
                    self.reports.forget(session[0], session[1])
            if self.locks.held_by(key) is conn and key in self.creating:
                chunk_id, version, servers = self.creating.pop(key)
                self.reports.forget(chunk_id, version)
                for server in servers:
                    self.registry.set_copy(chunk_id, server.cs_id, version)
            chunk = self.ns.chunk_of(op.inode, op.index)
            if chunk is None or chunk.chunk_id != op.chunk_id:
                raise FsError(errno.ESTALE, "chunk changed while written")
            return self.store.change(op, time.time_ns(), msg.session, msg.seq)
        finally:
            if self.locks.held_by(key) is conn:
                self.locks.release(key)

    async def truncate(self, conn: rpc.Connection, msg: m.MetaRequest):
        op: m.Truncate = msg.op
        node = self.ns.file(op.inode)
        key = (op.inode, op.length // CHUNK_SIZE)
        locked = op.length < node.length and op.length % CHUNK_SIZE
        if locked:
            await self.locks.acquire(key, conn)
        try:
            done, result = self.ns.duplicate_result(msg.session, msg.seq)
            if done:
                return result
            result, version = self.store.change(op, time.time_ns(), msg.session, msg.seq)
            await self.store.wait_durable(version)
            await self.run_effects()
            return result
        finally:
            if locked:
                self.locks.release(key)

    def run_effects(self):
        """Carry out the chunkserver side of applied changes. Deletions run in the
        background; returns an awaitable for the truncations (callers that reply after
        them await it)."""
        effects, self.ns.effects = self.ns.effects, []
        truncations = []
        durable = self.ns.version
        for effect in effects:
            if isinstance(effect, DeleteChunkEffect):
                versions = {cs_id: copy.version for cs_id, copy
                            in self.registry.holders(effect.chunk_id).items()}
                self.registry.copies.pop(effect.chunk_id, None)
                servers = [self.registry.servers[c] for c in versions if c in self.registry.servers]
                if servers:
                    self.spawn(self._delete_after(durable, servers, effect.chunk_id, versions))
            elif isinstance(effect, TruncateChunkEffect):
                truncations.append(self.truncate_chunk(effect))
            elif isinstance(effect, DuplicateChunkEffect):
                truncations.append(self.duplicate_chunk(effect))
        return asyncio.gather(*truncations)

    async def _delete_after(self, version: int, servers, chunk_id: int, versions) -> None:
        try:
            await self.store.wait_durable(version)
        except FsError:
            return  # not leading any more: the new leader deletes what nothing points at
        await self.command_all(servers, lambda s: m.DeleteChunk(chunk_id, versions[s.cs_id]))

    async def duplicate_chunk(self, effect: DuplicateChunkEffect) -> None:
        """Copy-on-write for a truncate: a private copy of a shared chunk, then its cut."""
        self._mark_busy(effect.chunk_id, effect.new_chunk_id)
        try:
            servers = self.registry.valid_servers(effect.chunk_id, effect.version)
            done = await self.command_all(servers, lambda s: m.DuplicateChunk(
                effect.chunk_id, effect.version, effect.new_chunk_id, effect.new_version))
            made = [s for s, ok in zip(servers, done) if ok]
            for server in made:
                self.registry.set_copy(effect.new_chunk_id, server.cs_id, effect.new_version)
            if effect.length >= 0 and made:
                new_version = effect.cut_version
                done = await self.command_all(made, lambda s: m.TruncateChunk(
                    effect.new_chunk_id, effect.new_version, new_version, effect.length))
                for server, ok in zip(made, done):
                    if ok:
                        self.registry.set_copy(effect.new_chunk_id, server.cs_id, new_version)
                    else:
                        self.registry.drop_copy(effect.new_chunk_id, server.cs_id)
        finally:
            self._unmark_busy(effect.chunk_id, effect.new_chunk_id)

    async def truncate_chunk(self, effect: TruncateChunkEffect) -> None:
        self._mark_busy(effect.chunk_id)
        try:
            servers = self.registry.valid_servers(effect.chunk_id, effect.version)
            done = await self.command_all(servers, lambda s: m.TruncateChunk(
                effect.chunk_id, effect.version, effect.new_version, effect.length))
            for server, ok in zip(servers, done):
                if ok:
                    self.registry.set_copy(effect.chunk_id, server.cs_id, effect.new_version)
                else:
                    self.registry.drop_copy(effect.chunk_id, server.cs_id)
        finally:
            self._unmark_busy(effect.chunk_id)

    async def command_all(self, servers, make_cmd, refusals: list[int] | None = None) -> list[bool]:
        """Send a command to each server at once; True where it succeeded. The statuses of
        refusals are appended to `refusals`."""

        async def one(server) -> bool:
            link = server.link
            term = self.master.command_term()
            if link is None or not link.is_open or term is None:
                return False
            try:
                await link.call(m.CsCommand, command=make_cmd(server), term=term,
                                timeout=self.cfg.CS_COMMAND_TIMEOUT)
                return True
            except FsError as e:
                if refusals is not None:
                    refusals.append(e.status)
                log.warning("chunkserver %s refused %s: %s", server.name,
                            type(make_cmd(server)).__name__, e)
            except (rpc.ConnectionClosed, asyncio.TimeoutError, OSError) as e:
                log.warning("chunkserver %s did not answer %s: %r", server.name,
                            type(make_cmd(server)).__name__, e)
            return False

        return list(await asyncio.gather(*(one(s) for s in servers)))
