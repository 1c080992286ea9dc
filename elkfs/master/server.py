"""The master daemon: a thin asyncio shell around the metadata store and chunk registry.

It moves bytes between sockets and the pure parts: client requests become namespace
queries or journaled changes (`MetadataStore`), chunkserver reports feed the
`ChunkRegistry`, and chunk operations that need chunkservers (create a chunk, raise its
version, cut its tail, delete it) are sent to them only after the change that decided them
is durable in the journal.

Background loops: the replication loop (every CHUNKS_LOOP_PERIOD seconds it asks the pure
`replication.Planner` what to copy or delete and has the chunkservers do it), the trash
loop (journals `PurgeTrash` for files whose trash time has passed, by this master's wall
clock), sessions and checkpoints.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import secrets
import signal
import time

from .. import config as cfgmod
from ..config import Option, ranged_int
from ..proto import messages as m
from ..proto import rpc
from ..proto.errors import BAD_SESSION, NO_CHUNK, NO_SERVERS, FsError
from ..proto.layout import CHUNK_SIZE
from . import replication as rep
from .chunkservers import ChunkRegistry
from .locks import ChunkLocks
from .listings import ListingLeases, touched_dirs
from .namespace import DeleteChunkEffect, DuplicateChunkEffect, TruncateChunkEffect
from .nodes import FileNode
from .records import CloseSession, OpenSession
from .store import MetadataStore

log = logging.getLogger("mfsmaster")


OPTIONS = {
    "DATA_PATH": Option("/var/lib/mfs", "str", "metadata, journal, lock and log files"),
    "MATOCL_LISTEN_HOST": Option("*", "str", "address for clients"),
    "MATOCL_LISTEN_PORT": Option(9421, "port"),
    "MATOCS_LISTEN_HOST": Option("*", "str", "address for chunkservers (and masters)"),
    "MATOCS_LISTEN_PORT": Option(9420, "port"),
    "CHANGELOG_SAVE_MODE": Option(0, ranged_int(0, 1),
                                  "0: to the OS before the reply, fsync within 1 s; 1: fsync before the reply"),
    "METADATA_SAVE_FREQ": Option(1.0, "float", "hours between checkpoints"),
    "BACK_LOGS": Option(50, "int", "old journal segments kept"),
    "SESSION_SUSTAIN_TIME": Option(86400, "int", "seconds a disconnected session is kept"),
    "CHUNK_LOCK_WAIT": Option(30.0, "float", "seconds a writer waits for a locked chunk"),
    "CS_COMMAND_TIMEOUT": Option(30.0, "float", "seconds to wait for a chunkserver command"),
    "REPLICATIONS_DELAY_INIT": Option(60.0, "nonneg_float",
                                      "seconds after start before chunks are replicated or deleted"),
    "REPLICATIONS_DELAY_DISCONNECT": Option(3600.0, "nonneg_float",
                                            "seconds a disconnected chunkserver is waited for"),
    "CHUNKS_WRITE_REP_LIMIT": Option(2, ranged_int(1, 1000),
                                     "replications into one chunkserver at a time"),
    "CHUNKS_READ_REP_LIMIT": Option(10, ranged_int(1, 1000),
                                    "replications out of one chunkserver at a time"),
    "CHUNKS_DEL_LIMIT": Option(10, ranged_int(1, 10000),
                               "chunk deletions on one chunkserver at a time"),
    "CHUNKS_LOOP_PERIOD": Option(1.0, "float", "seconds between replication passes"),
    "REPLICATION_TIMEOUT": Option(300.0, "float", "seconds one chunk replication may take"),
    "TRASH_PURGE_PERIOD": Option(1.0, "float", "seconds between checks for expired trash"),
}


LOW_SPACE = 16 << 20  # a server with less free space gets no writes while others can

RESTART_KEYS = ("DATA_PATH", "MATOCL_LISTEN_HOST", "MATOCL_LISTEN_PORT", "MATOCS_LISTEN_HOST",
                "MATOCS_LISTEN_PORT")


def _host(value: str) -> str | None:
    return None if value in ("*", "0.0.0.0", "") else value


class MasterServer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.store = MetadataStore(cfg.DATA_PATH, cfg.CHANGELOG_SAVE_MODE, cfg.BACK_LOGS)
        self.registry = ChunkRegistry()
        self.locks = ChunkLocks(cfg.CHUNK_LOCK_WAIT)
        self.session_links: dict[bytes, rpc.Connection] = {}
        self.session_gone_at: dict[bytes, float] = {}
        self.leases = ListingLeases()
        self.servers: list[asyncio.AbstractServer] = []
        self.tasks: set[asyncio.Task] = set()
        self.started_at = time.time()
        self.planner = rep.Planner(self._limits(cfg), time.monotonic())
        self.busy_chunks: dict[int, int] = {}  # chunk id -> operations changing its copies
        # New chunks being made by their writer's session: (inode, index) -> (chunk id,
        # version, chunkservers); their copies are registered at WriteChunkEnd.
        self.creating: dict[tuple[int, int], tuple[int, int, list]] = {}

    @staticmethod
    def _limits(cfg) -> rep.Limits:
        return rep.Limits(cfg.CHUNKS_WRITE_REP_LIMIT, cfg.CHUNKS_READ_REP_LIMIT,
                          cfg.CHUNKS_DEL_LIMIT, cfg.REPLICATIONS_DELAY_INIT,
                          cfg.REPLICATIONS_DELAY_DISCONNECT)

    @property
    def ns(self):
        return self.store.ns

    # ------------------------------------------------------------ lifecycle

    async def run(self, ready) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.store.load)
        now = time.monotonic()
        self.planner.started_at = now
        for session_id in self.ns.sessions:
            self.session_gone_at[session_id] = now
        cfg = self.cfg
        self.servers.append(await rpc.serve(_host(cfg.MATOCL_LISTEN_HOST), cfg.MATOCL_LISTEN_PORT,
                                            self.on_client, "client", on_close=self.on_client_close))
        self.servers.append(await rpc.serve(_host(cfg.MATOCS_LISTEN_HOST), cfg.MATOCS_LISTEN_PORT,
                                            self.on_chunkserver, "chunkserver",
                                            on_close=self.on_chunkserver_close))
        log.info("listening for clients on %s:%d, chunkservers on %s:%d",
                 cfg.MATOCL_LISTEN_HOST, cfg.MATOCL_LISTEN_PORT, cfg.MATOCS_LISTEN_HOST,
                 cfg.MATOCS_LISTEN_PORT)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        background = [self.store.sync_loop(), self.checkpoint_loop(), self.session_loop(),
                      self.replication_loop(), self.trash_loop()]
        workers = [asyncio.create_task(c) for c in background]
        ready()
        try:
            await asyncio.Future()
        finally:
            for w in workers:
                w.cancel()
            for server in self.servers:
                server.close()
            log.info("writing final checkpoint")
            self.store.close(checkpoint=True)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; apply what can change while running."""
        try:
            fresh = cfgmod.load(self.cfg.path, OPTIONS)
        except cfgmod.ConfigError as e:
            log.error("reload: %s (keeping the running config)", e)
            return
        for key in RESTART_KEYS:
            if getattr(fresh, key) != getattr(self.cfg, key):
                log.warning("reload: %s changed; it takes effect after a restart", key)
        self.cfg = fresh
        self.store.save_mode = fresh.CHANGELOG_SAVE_MODE
        self.store.back_logs = fresh.BACK_LOGS
        self.locks.wait_s = fresh.CHUNK_LOCK_WAIT
        limits = self._limits(fresh)
        limits.delay_init = self.planner.limits.delay_init  # only matters at start
        self.planner.limits = limits
        log.info("reloaded %s", fresh.path)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.METADATA_SAVE_FREQ * 3600)
            await self.store.checkpoint()

    async def session_loop(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, max(0.5, self.cfg.SESSION_SUSTAIN_TIME / 4)))
            now = time.monotonic()
            self.leases.sweep(now)
            for session_id, gone_at in list(self.session_gone_at.items()):
                if now - gone_at >= self.cfg.SESSION_SUSTAIN_TIME and session_id in self.ns.sessions:
                    log.info("session %s expired", session_id.hex())
                    del self.session_gone_at[session_id]
                    self.store.change(CloseSession(session_id), time.time_ns())
                    self.run_effects()

    async def trash_loop(self) -> None:
        """Free trash files whose time is up: a journaled `PurgeTrash` naming them, so the
        decision (this master's clock) is replayed, never re-made."""
        while True:
            await asyncio.sleep(self.cfg.TRASH_PURGE_PERIOD)
            now = time.time_ns()
            expired = [inode for inode, (expire, _) in self.ns.trash.items() if expire <= now]
            for i in range(0, len(expired), 1000):
                self.store.change(m.PurgeTrash(expired[i:i + 1000]), now)
            if expired:
                log.info("purged %d expired files from the trash", len(expired))
                self.run_effects()

    # ------------------------------------------------------------ replication

    async def replication_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.CHUNKS_LOOP_PERIOD)
            try:
                self.replication_pass()
            except Exception:
                log.exception("replication pass failed")

    def replication_pass(self) -> None:
        actions = self.planner.plan(time.monotonic(), self.ns.chunks, self.chunk_goals(),
                                    self.registry, self.busy())
        for action in actions:
            if isinstance(action, rep.Forget):
                server = self.registry.servers.get(action.cs_id)
                log.warning("chunkserver %s gone for %.0fs: its %d copies count as lost",
                            server.name if server else action.cs_id.hex(),
                            self.cfg.REPLICATIONS_DELAY_DISCONNECT, action.copies)
            else:
                self.spawn(self.run_action(action))

    def chunk_goals(self) -> dict[int, int]:
        """Chunk id -> the highest goal of the files pointing at it (trash included)."""
        goals: dict[int, int] = {}
        get = goals.get
        for node in list(self.ns.nodes.values()):
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
            if isinstance(action, rep.Replicate):
                target = registry.servers.get(action.target)
                sources = [registry.servers[c].addr for c in action.sources
                           if c in registry.servers]
                ok = await self.command(target, m.ReplicateChunk(
                    action.chunk_id, action.version, sources), self.cfg.REPLICATION_TIMEOUT)
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

    async def command(self, server, cmd: m.CsCmd, timeout: float | None = None) -> bool:
        """Send one command to one chunkserver; True when it succeeded."""
        if server is None:
            return False
        link = server.link
        if link is None or not link.is_open:
            return False
        try:
            await link.call(m.CsCommand, command=cmd,
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

    # ------------------------------------------------------------ clients

    def on_client(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        if isinstance(msg, m.MetaRequest):
            self.handle_op(conn, msg)
        elif isinstance(msg, m.RegisterSession):
            self.register_session(conn, msg)
        else:
            conn.protocol_error(ValueError(f"unexpected {type(msg).__name__} on client port"))

    def on_client_close(self, conn: rpc.Connection) -> None:
        for key in [k for k in self.creating if self.locks.held_by(k) is conn]:
            # The writer is gone mid-creation: the lock stays until its copies are gone.
            self.locks.hand_over(key, self)
            self.spawn(self._unmake_then_release(key, self.creating.pop(key)))
        self.locks.release_owner(conn)
        session_id = conn.context
        if session_id is not None and self.session_links.get(session_id) is conn:
            self.leases.forget_session(session_id)  # it drops its listings when it reconnects
            del self.session_links[session_id]
            self.session_gone_at[session_id] = time.monotonic()

    def register_session(self, conn: rpc.Connection, msg: m.RegisterSession) -> None:
        session_id = msg.session
        if not session_id:
            session_id = secrets.token_bytes(16)
            _, version = self.store.change(OpenSession(session_id, msg.info[:200]), time.time_ns())
        elif session_id not in self.ns.sessions:
            conn.send(m.SessionReply(msg.req, BAD_SESSION, b""))
            return
        else:
            version = self.ns.version
        old = self.session_links.get(session_id)
        if old is not None and old is not conn:
            old.context = None
        conn.context = session_id
        self.session_links[session_id] = conn
        self.leases.set_ttl(session_id, msg.listing_ttl_ms)
        self.session_gone_at.pop(session_id, None)
        reply = m.SessionReply(msg.req, 0, session_id)
        self.store.when_durable(version, lambda: self._send(conn, reply))

    @staticmethod
    def _send(conn: rpc.Connection, msg: m.Msg) -> None:
        if conn.is_open:
            conn.send(msg)

    def handle_op(self, conn: rpc.Connection, msg: m.MetaRequest) -> None:
        op = msg.op
        try:
            if msg.session not in self.ns.sessions:
                raise FsError(BAD_SESSION, "unknown session: register first")
            if op.READ_ONLY:
                result = self.query(op)
                if isinstance(result, m.DirOut) and op.offset == 0 and result.next_offset == -1:
                    self.leases.grant(op.inode, msg.session, time.monotonic())
                conn.send(m.MetaReply(msg.req, 0, result))
                return
            if isinstance(op, (m.WriteChunk, m.Truncate, m.WriteChunkEnd)):
                if not self.chunk_op_now(conn, msg):
                    self.spawn(self.chunk_op(conn, msg))
                return
            done, result = self.ns.duplicate_result(msg.session, msg.seq)
            holders = None
            if done:
                version = self.ns.version
            else:
                result, version = self.store.change(op, time.time_ns(), msg.session, msg.seq)
                if self.ns.effects:
                    self.run_effects()
                now = time.monotonic()
                if self.leases.by_dir:
                    holders = self.leases.recall(touched_dirs(op), msg.session, now)
                if isinstance(op, m.Mkdir):
                    self.leases.grant(result.attr.inode, msg.session, now)  # it is empty
            reply = m.MetaReply(msg.req, 0, result)
            if holders:
                self.spawn(self._recall_then_reply(conn, reply, version, holders))
            else:
                self.store.when_durable(version, lambda: self._send(conn, reply))
        except FsError as e:
            conn.send(m.Error(msg.req, e.status, e.detail))

    async def _recall_then_reply(self, conn: rpc.Connection, reply: m.MetaReply, version: int,
                                 holders: dict[bytes, tuple[list[int], float]]) -> None:
        """Acknowledge a change only once every other holder of a listing it changed has
        dropped that listing (or the listing expired)."""
        now = time.monotonic()
        calls = []
        for session, (dirs, expires) in holders.items():
            link = self.session_links.get(session)
            if link is not None and link.is_open:
                calls.append(link.call(m.InvalidateListings, dirs=dirs,
                                       timeout=max(0.0, expires - now)))
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.info("listing recall not answered (%r): waited for it to expire", outcome)
        await self.store.wait_durable(version)
        self._send(conn, reply)

    def query(self, op: m.Op) -> m.Result | None:
        if isinstance(op, m.ReadChunk):
            return self.read_chunk(op.inode, op.index)
        if isinstance(op, m.FileChunks):
            return self.file_chunks(op.inode)
        if isinstance(op, m.StatFs):
            total, used = self.registry.totals()
            return m.StatFsOut(total, max(0, total - used), used, len(self.ns.nodes))
        if isinstance(op, m.ClusterInfo):
            return m.JsonOut(json.dumps(self.cluster_info()))
        return self.ns.query(op)

    def read_chunk(self, inode: int, index: int) -> m.ChunkOut:
        node = self.ns.file(inode)
        chunk = self.ns.chunk_of(inode, index)
        if chunk is None:
            return m.ChunkOut(0, 0, node.length, [])
        servers = self.registry.valid_servers(chunk.chunk_id, chunk.version)
        return m.ChunkOut(chunk.chunk_id, chunk.version, node.length, [s.addr for s in servers])

    def file_chunks(self, inode: int) -> m.FileChunksOut:
        node = self.ns.file(inode)
        out = []
        for index, chunk_id in enumerate(node.chunks):
            if not chunk_id:
                continue
            chunk = self.ns.chunks[chunk_id]
            copies = []
            for cs_id, copy in self.registry.holders(chunk_id).items():
                server = self.registry.servers.get(cs_id)
                if server is not None:  # not valid while its server is away
                    copies.append(m.ChunkCopy(server.addr, copy.version,
                                              copy.valid and copy.version == chunk.version
                                              and server.connected))
            out.append(m.ChunkDesc(index, chunk_id, chunk.version, copies))
        return m.FileChunksOut(out)

    def cluster_info(self) -> dict:
        """Counts of chunk health come from the replication planner's last pass
        (`replication_passes` tells a caller when a fresh one ran)."""
        ns = self.ns
        planner = self.planner
        st = planner.stats
        total, used = self.registry.totals()
        now = time.monotonic()
        trash_bytes = sum(ns.nodes[i].size() for i in ns.trash)
        replicating = sum(1 for acts in planner.inflight.values() for a in acts
                          if isinstance(a, rep.Replicate))
        return {
            "metadata_version": ns.version,
            "inodes": len(ns.nodes),
            "chunks": len(ns.chunks),
            "sessions": len(ns.sessions),
            "total_bytes": total,
            "used_bytes": used,
            "missing_chunks": st.missing,
            "endangered_chunks": st.endangered,
            "undergoal_chunks": st.undergoal,
            "overgoal_chunks": st.overgoal,
            "stale_copies": st.stale_copies,
            "damaged_copies": st.damaged_copies,
            "chunks_by_copies": {str(k): v for k, v in sorted(st.by_copies.items())},
            "replications_in_flight": replicating,
            "replications_done": planner.replicated,
            "replications_failed": planner.replication_failures,
            "deletions_done": planner.deleted,
            "replication_passes": planner.passes,
            "replication_active": now - planner.started_at >= planner.limits.delay_init,
            "trash_files": len(ns.trash),
            "trash_bytes": trash_bytes,
            "last_checkpoint_version": self.store.last_checkpoint_version,
            "chunkservers": [
                {"id": s.cs_id.hex(), "address": s.name, "connected": s.connected,
                 "lost": s.lost,
                 "disconnected_s": 0 if s.connected else round(now - s.disconnected_at, 1),
                 "total_bytes": s.total_bytes, "used_bytes": s.used_bytes,
                 "chunks": s.chunk_count,
                 "marked_chunks": s.marked_copies,
                 "marked_chunks_needed": st.marked_needed.get(s.cs_id, 0),
                 "removal": planner.removal_state(s, self.registry)}
                for s in self.registry.servers.values()
            ],
            "masters": [
                {"address": f"{self.cfg.MATOCL_LISTEN_HOST}:{self.cfg.MATOCL_LISTEN_PORT}",
                 "state": "LEADER", "metadata_version": ns.version, "term": 0,
                 "uptime_s": round(time.time() - self.started_at)}
            ],
        }

    # ------------------------------------------------------------ chunk operations

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
            result, version = self._end_chunk(conn, msg)
        else:
            return False
        reply = m.MetaReply(msg.req, 0, result)
        self.store.when_durable(version, lambda: self._send(conn, reply))
        return True

    async def chunk_op(self, conn: rpc.Connection, msg: m.MetaRequest) -> None:
        op = msg.op
        try:
            if isinstance(op, m.WriteChunk):
                result = await self.write_chunk(conn, msg)
            elif isinstance(op, m.WriteChunkEnd):
                result = await self.write_chunk_end(conn, msg)
            else:
                result = await self.truncate(conn, msg)
            self._send(conn, m.MetaReply(msg.req, 0, result))
        except FsError as e:
            self._send(conn, m.Error(msg.req, e.status, e.detail))
        except (rpc.ConnectionClosed, asyncio.CancelledError):
            pass
        except Exception as e:
            log.exception("chunk operation %s failed", type(op).__name__)
            self._send(conn, m.Error(msg.req, errno.EIO, str(e)))

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
            # A chunk whose creation every chunkserver refused has no copy and no data:
            # create it again, wherever there is room now.
            fresh = (chunk.refs == 1 and not self.registry.holders(chunk.chunk_id)
                     and node.length <= op.index * CHUNK_SIZE)
            if fresh:
                targets = self._targets(node.goal)
            else:
                targets = self.registry.valid_servers(chunk.chunk_id, chunk.version)
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
                cmd = lambda s: m.SetChunkVersion(result.chunk_id, result.version - 1, result.version)
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
                more = self.registry.choose_servers(done.count(False), exclude=tried)
                if more:
                    targets = targets + more
                    done = done + await self.command_all(more, cmd, refusals)
            chain = []
            for server, ok in zip(targets, done):
                if ok:
                    self.registry.set_copy(result.chunk_id, server.cs_id, result.version)
                    chain.append(server.addr)
                else:
                    self.registry.drop_copy(result.chunk_id, server.cs_id)
            if not chain:
                if refusals and all(r in (errno.ENOSPC, errno.EDQUOT) for r in refusals):
                    raise FsError(errno.ENOSPC, "every chunkserver asked is full")
                raise FsError(errno.EIO, f"no chunkserver accepted chunk {result.chunk_id:016X}")
            return m.ChunkOut(result.chunk_id, result.version, node.length, chain)
        except BaseException:
            self.locks.release(key)
            raise

    def _targets(self, goal: int) -> list:
        """Chunkservers for a new chunk's copies, or why there are none."""
        targets = self.registry.choose_servers(goal)
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
                          [s.addr for s in targets], create=True), version

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

    def _unmaking(self, conn: rpc.Connection, op: m.WriteChunkEnd) -> bool:
        """Whether ending this session deletes the copies its failed creation made."""
        key = (op.inode, op.index)
        made = self.creating.get(key)
        return (made is not None and self.locks.held_by(key) is conn
                and not (op.ok and made[0] == op.chunk_id))

    async def write_chunk_end(self, conn: rpc.Connection, msg: m.MetaRequest):
        op: m.WriteChunkEnd = msg.op
        key = (op.inode, op.index)
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
            if self.locks.held_by(key) is conn and key in self.creating:
                chunk_id, version, servers = self.creating.pop(key)
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
        await self.store.wait_durable(version)
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
                new_version = effect.new_version + 1
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
            if link is None or not link.is_open:
                return False
            try:
                await link.call(m.CsCommand, command=make_cmd(server),
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

    # ------------------------------------------------------------ chunkservers

    def on_chunkserver(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        if isinstance(msg, m.CsRegister):
            self.register_chunkserver(conn, msg)
            return
        cs_id = conn.context
        if cs_id is None:
            conn.protocol_error(ValueError(f"{type(msg).__name__} before registration"))
        elif isinstance(msg, m.CsSpace):
            self.registry.space(cs_id, msg.total_bytes, msg.used_bytes, msg.chunk_count)
        elif isinstance(msg, m.CsChunkMade):
            if msg.chunk_id in self.ns.chunks:
                known = self.registry.holders(msg.chunk_id).get(cs_id)
                if known is None or known.version <= msg.version:
                    self.registry.set_copy(msg.chunk_id, cs_id, msg.version)
            else:  # its file was removed meanwhile
                self.spawn(self._delete_orphans(self.registry.servers[cs_id],
                                                [(msg.chunk_id, msg.version)]))
        elif isinstance(msg, m.CsChunkDamaged):
            server = self.registry.servers.get(cs_id)
            log.warning("chunkserver %s reports damaged copy of chunk %016X (version %d)",
                        server.name if server else cs_id.hex(), msg.chunk_id, msg.version)
            self.registry.mark_damaged(msg.chunk_id, cs_id)
        elif isinstance(msg, m.CsMarkedChunks):
            self.registry.set_marked(cs_id, msg.chunk_ids)
            server = self.registry.servers.get(cs_id)
            log.info("chunkserver %s has %d chunks on disks marked for removal",
                     server.name if server else cs_id.hex(), len(msg.chunk_ids))
        elif isinstance(msg, m.CsChunksLost):
            server = self.registry.servers.get(cs_id)
            log.warning("chunkserver %s lost %d copies (disk taken out)",
                        server.name if server else cs_id.hex(), len(msg.chunks))
            for chunk_id, version in msg.chunks:
                copy = self.registry.holders(chunk_id).get(cs_id)
                if copy is not None and copy.version == version:
                    self.registry.drop_copy(chunk_id, cs_id)
        else:
            conn.protocol_error(ValueError(f"unexpected {type(msg).__name__} on chunkserver port"))

    def register_chunkserver(self, conn: rpc.Connection, msg: m.CsRegister) -> None:
        if len(msg.cs_id) != 16:
            conn.protocol_error(ValueError("chunkserver id must be 16 bytes"))
            return
        old = self.registry.servers.get(msg.cs_id)
        if old is not None and old.link is not None and old.link is not conn:
            old.link.context = None
            old.link.close()
        server = self.registry.register(msg.cs_id, (msg.host, msg.port), msg.chunks,
                                        msg.total_bytes, msg.used_bytes, conn)
        conn.context = msg.cs_id
        conn.send(m.Ok(msg.req))
        orphans, stale = [], 0
        for chunk_id, version in msg.chunks:
            chunk = self.ns.chunks.get(chunk_id)
            if chunk is None:
                orphans.append((chunk_id, version))
                self.registry.drop_copy(chunk_id, msg.cs_id)
            elif version != chunk.version:
                stale += 1
        log.info("chunkserver %s registered (id %s, %d chunks, %d stale, %d unknown)",
                 server.name, msg.cs_id.hex(), len(msg.chunks), stale, len(orphans))
        if orphans:
            self.spawn(self._delete_orphans(server, orphans))

    async def _delete_orphans(self, server, orphans: list[tuple[int, int]]) -> None:
        """Delete copies of chunks the metadata does not know (their file is gone)."""
        for chunk_id, version in orphans:
            if chunk_id in self.ns.chunks:  # created meanwhile
                continue
            await self.command_all([server], lambda s: m.DeleteChunk(chunk_id, version))

    def on_chunkserver_close(self, conn: rpc.Connection) -> None:
        cs_id = conn.context
        if cs_id is not None:
            server = self.registry.servers.get(cs_id)
            if server is not None and server.link is conn:
                log.warning("chunkserver %s disconnected", server.name)
                self.registry.disconnect(cs_id, time.monotonic())


async def serve(cfg, ready) -> None:
    await MasterServer(cfg).run(ready)
