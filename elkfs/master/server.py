"""The master daemon: a thin asyncio shell around the metadata store and chunk registry.

It owns the shared tables (the `MetadataStore`, the `ChunkRegistry`, chunk locks, the
replication planner) and the background loops; one part per connection kind serves the
ports: `ClientPort` (clients), `ChunkserverPort` (chunkservers), and `ChunkOps` has the
chunkservers carry out what changes decided, only once those changes are durable.

Background loops: the replication loop (every CHUNKS_LOOP_PERIOD seconds it asks the pure
`replication.Planner` what to copy or delete and has the chunkservers do it), the trash
loop (journals `PurgeTrash` for files whose trash time has passed, by this master's wall
clock), sessions and checkpoints.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time

from .. import config as cfgmod
from ..config import Option, ranged_int
from ..proto import messages as m
from ..proto import rpc
from . import exports
from ..proto.auth import ClusterKey
from ..proto.handshake import Acceptor
from . import replication as rep
from .chunkops import ChunkOps
from .chunkservers import ChunkRegistry
from .client_port import ClientPort
from .cs_port import ChunkserverPort
from .ha import HANode
from .gcpolicy import settle_gc, settle_loop, watch_gc
from .locks import ChunkLocks
from .longops import LongOps
from .records import CloseSession, DropSessionLocks, KnowChunkserver
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
    "EMPTY_SESSION_SUSTAIN_TIME": Option(120.0, "nonneg_float",
                                         "seconds a disconnected session holding no open "
                                         "file and no lock is kept (its client opens a new "
                                         "one if it comes back later)"),
    # Limits (docs/security.md, "Limits")
    "MAX_CONNECTIONS_PER_ADDRESS": Option(256, ranged_int(0, 1 << 20),
                                          "open connections from one address, on each "
                                          "port (0: no limit)"),
    "MAX_SESSIONS_PER_ADDRESS": Option(256, ranged_int(0, 1 << 20),
                                       "sessions opened from one address and kept "
                                       "(0: no limit)"),
    "UNREGISTERED_TIMEOUT": Option(10.0, "nonneg_float",
                                   "seconds a connection that has not registered (a "
                                   "session, a chunkserver, a master) may stay silent "
                                   "(0: forever)"),
    "FRAME_TIMEOUT": Option(30.0, "nonneg_float",
                            "seconds a message may take to arrive whole once it began "
                            "(0: forever)"),
    "LOCKS_SUSTAIN_TIME": Option(30.0, "nonneg_float",
                                 "seconds a disconnected client keeps its file locks "
                                 "(its session is kept longer: SESSION_SUSTAIN_TIME)"),
    "CHUNK_LOCK_WAIT": Option(30.0, "float", "seconds a writer waits for a locked chunk"),
    "CS_COMMAND_TIMEOUT": Option(30.0, "float", "seconds to wait for a chunkserver command"),
    "REPLICATIONS_DELAY_INIT": Option(60.0, "nonneg_float",
                                      "seconds after start before chunks are replicated or "
                                      "deleted, unless every known chunkserver is back sooner"),
    "REPLICATIONS_DELAY_DISCONNECT": Option(0.0, "nonneg_float",
                                            "seconds a disconnected chunkserver is waited for "
                                            "before its chunks are rebuilt (0: at once; use "
                                            "maintenance mode for planned restarts)"),
    "MAINTENANCE_MODE_TIMEOUT": Option(3600.0, "float",
                                       "seconds a chunkserver stays in maintenance mode "
                                       "unless switched off sooner"),
    "CHUNKS_WRITE_REP_LIMIT": Option(2, ranged_int(1, 1000),
                                     "replications into one chunkserver at a time"),
    "CHUNKS_READ_REP_LIMIT": Option(10, ranged_int(1, 1000),
                                    "replications out of one chunkserver at a time"),
    "CHUNKS_DEL_LIMIT": Option(10, ranged_int(1, 10000),
                               "chunk deletions on one chunkserver at a time"),
    "CHUNKS_LOOP_PERIOD": Option(1.0, "float", "seconds between replication passes"),
    "REPLICATION_TIMEOUT": Option(300.0, "float", "seconds one chunk replication may take"),
    "TRASH_PURGE_PERIOD": Option(1.0, "float", "seconds between checks for expired trash"),
    # High availability (docs/ha.md)
    "HA_ENABLED": Option(False, "bool", "several masters, one leader elected by the chunkservers"),
    "LEADER_LEASE_DURATION": Option(2.0, "float", "seconds of a leader's lease (renewed every half)"),
    "MASTER_PORT": Option(9420, "port", "port the masters reach each other on (HA)"),
    "MASTER_HOST": Option("mfsmaster", "str", "name whose A records are the masters (HA)"),
    "DNS_SERVER": Option("", "str", "DNS server (IP or IP:PORT) to resolve MASTER_HOST with; "
                                    "empty: the system resolver"),
    "DNS_REFRESH_TIME": Option(5.0, "float", "seconds between resolutions of MASTER_HOST"),
    "HA_LOG_RETAIN": Option(100000, "int", "journal records kept in memory for lagging "
                                           "followers (older ones get the checkpoint)"),
    # The web interface (elkfs/web, docs/operations.md)
    "HTTP_LISTEN_HOST": Option("*", "str", "address of the web interface"),
    "HTTP_LISTEN_PORT": Option(9425, "port", "port of the web interface"),
    "HTTP_MAX_CONNECTIONS_PER_ADDRESS": Option(64, ranged_int(0, 1 << 20),
                                               "open web connections from one address "
                                               "(0: no limit)"),
    "HTTP_REQUEST_TIMEOUT": Option(10.0, "nonneg_float",
                                   "seconds a web request (headers and body) may take to "
                                   "arrive whole once it began (0: forever)"),
    "HTTP_IDLE_TIMEOUT": Option(60.0, "nonneg_float",
                                "seconds a web connection may stay with no request under "
                                "way (0: forever)"),
    "ADMIN_PASSWORD": Option("", "str", "password of the web interface's Step Down; "
                                        "empty: Step Down is disabled there"),
    # Who may mount what (elkfs/master/exports.py, docs/security.md)
    "EXPORTS_FILENAME": Option("", "str", "the exports file; empty: mfsexports.cfg in the "
                                          "directory of this config file"),
    # Security (docs/security.md)
    "AUTH_CODE": Option("", "str", "secret shared by every master and chunkserver: "
                                   "members prove it on connect, chunk tokens are made with "
                                   "it; empty: no authentication (a warning at start)"),
    "CHUNK_TOKEN_TTL": Option(300.0, "float", "seconds a chunk token given to a client "
                                              "is good for"),
}

RESTART_KEYS = ("DATA_PATH", "MATOCL_LISTEN_HOST", "MATOCL_LISTEN_PORT", "MATOCS_LISTEN_HOST",
                "MATOCS_LISTEN_PORT", "HA_ENABLED", "MASTER_PORT", "MASTER_HOST", "DNS_SERVER",
                "LEADER_LEASE_DURATION", "HTTP_LISTEN_HOST", "HTTP_LISTEN_PORT", "AUTH_CODE")


def _host(value: str) -> str | None:
    return None if value in ("*", "0.0.0.0", "") else value


class MasterServer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.store = MetadataStore(cfg.DATA_PATH, cfg.CHANGELOG_SAVE_MODE, cfg.BACK_LOGS)
        self.registry = ChunkRegistry()
        self.locks = ChunkLocks(cfg.CHUNK_LOCK_WAIT)
        self.servers: list[rpc.Listener] = []
        self.tasks: set[asyncio.Task] = set()
        self.started_at = time.time()
        self.planner = rep.Planner(self._limits(cfg), time.monotonic())
        self.clients = ClientPort(self)
        self.chunkservers = ChunkserverPort(self)
        self.chunks = ChunkOps(self)
        self.key = ClusterKey(cfg.AUTH_CODE)
        self.acceptor = Acceptor(self.key, log)  # the handshake of the chunkserver port
        self.longops = LongOps(self)
        self.ha = HANode(self) if cfg.HA_ENABLED else None
        self.web = None  # the web interface (elkfs.web.app.WebInterface) once started
        self.clients.set_rules(load_exports(exports_path(cfg)))

    @staticmethod
    def _limits(cfg) -> rep.Limits:
        return rep.Limits(cfg.CHUNKS_WRITE_REP_LIMIT, cfg.CHUNKS_READ_REP_LIMIT,
                          cfg.CHUNKS_DEL_LIMIT, cfg.REPLICATIONS_DELAY_INIT,
                          cfg.REPLICATIONS_DELAY_DISCONNECT)

    @staticmethod
    def connection_limits(cfg) -> rpc.ConnectionLimits:
        """Both ports: a connection is registered once it opened a session, or
        registered as a chunkserver or a master (its `context` is set)."""
        return rpc.ConnectionLimits(per_address=cfg.MAX_CONNECTIONS_PER_ADDRESS,
                                    idle_s=cfg.UNREGISTERED_TIMEOUT,
                                    frame_s=cfg.FRAME_TIMEOUT)

    @property
    def ns(self):
        return self.store.ns

    # ------------------------------------------------------------ lifecycle

    async def run(self, ready) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        if not self.key.enabled:
            log.warning("AUTH_CODE is not set: any host can register as a chunkserver or "
                        "master here, and chunkservers serve chunks without tokens "
                        "(docs/security.md)")
        cs_port = cfg.MATOCS_LISTEN_PORT
        if self.ha is not None:
            if cfg.MASTER_PORT != cs_port:
                log.warning("HA: masters and chunkservers share MASTER_PORT %d "
                            "(MATOCS_LISTEN_PORT %d is not used)", cfg.MASTER_PORT, cs_port)
                cs_port = cfg.MASTER_PORT
            await self.ha.start()
        else:
            await loop.run_in_executor(None, self.store.load)
            self.became_leader()
        self.planner.started_at = time.monotonic()
        self.servers.append(await rpc.serve(_host(cfg.MATOCL_LISTEN_HOST), cfg.MATOCL_LISTEN_PORT,
                                            self.clients.on_client, "client",
                                            on_close=self.clients.on_client_close,
                                            limits=self.connection_limits(cfg)))
        self.servers.append(await rpc.serve(_host(cfg.MATOCS_LISTEN_HOST), cs_port,
                                            self.chunkservers.on_chunkserver, "chunkserver",
                                            on_close=self.chunkservers.on_chunkserver_close,
                                            limits=self.connection_limits(cfg)))
        log.info("listening for clients on %s:%d, chunkservers%s on %s:%d",
                 cfg.MATOCL_LISTEN_HOST, cfg.MATOCL_LISTEN_PORT,
                 " and masters" if self.ha else "", cfg.MATOCS_LISTEN_HOST, cs_port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self._start_web()
        watch_gc()
        gc.collect()
        settle_gc()  # the metadata just loaded
        background = [self.store.sync_loop(), self.checkpoint_loop(), self.session_loop(),
                      self.replication_loop(), self.trash_loop(),
                      settle_loop(lambda: len(self.ns.nodes))]
        workers = [asyncio.create_task(c) for c in background]
        ready()
        try:
            await asyncio.Future()
        finally:
            if self.ha is not None:
                await self.ha.hand_over()  # a planned stop costs clients no failover
            for w in workers:
                w.cancel()
            for server in self.servers:
                server.close()
            if self.web is not None:
                await self.web.stop()
            log.info("writing final checkpoint")
            self.store.close(checkpoint=True)
            if self.ha is not None:
                self.ha.stop()

    async def _start_web(self) -> None:
        """The web interface shares this event loop and reads the tables directly. A port
        it cannot bind costs the web page, never the metadata service."""
        from ..web.app import WebInterface

        web = WebInterface(self)
        try:
            await web.start(_host(self.cfg.HTTP_LISTEN_HOST), self.cfg.HTTP_LISTEN_PORT)
        except OSError as e:
            log.error("web interface not started: cannot listen on %s:%d: %s",
                      self.cfg.HTTP_LISTEN_HOST, self.cfg.HTTP_LISTEN_PORT, e)
            return
        self.web = web
        log.info("web interface on http://%s:%d/", self.cfg.HTTP_LISTEN_HOST,
                 self.cfg.HTTP_LISTEN_PORT)

    def reload(self) -> None:
        """SIGHUP: re-read the config file; apply what can change while running."""
        try:
            fresh = cfgmod.load(self.cfg.path, OPTIONS)
        except cfgmod.ConfigError as e:
            log.error("reload: %s (keeping the running config)", e)
            return
        try:
            rules = load_exports(exports_path(fresh))
        except exports.ExportsError as e:
            log.error("reload: %s (keeping the running config and exports)", e)
            return
        for key in RESTART_KEYS:
            if getattr(fresh, key) != getattr(self.cfg, key):
                log.warning("reload: %s changed; it takes effect after a restart", key)
        self.clients.set_rules(rules)
        self.cfg = fresh
        self.store.save_mode = fresh.CHANGELOG_SAVE_MODE
        self.store.back_logs = fresh.BACK_LOGS
        self.locks.wait_s = fresh.CHUNK_LOCK_WAIT
        for server in self.servers:
            server.limits = self.connection_limits(fresh)
        if self.web is not None:
            self.web.reload(fresh)
        limits = self._limits(fresh)
        limits.delay_init = self.planner.limits.delay_init  # only matters at start
        self.planner.limits = limits
        log.info("reloaded %s", fresh.path)

    # ------------------------------------------------------------ leadership

    @property
    def leading(self) -> bool:
        """Whether this master serves clients and commands chunkservers now (always,
        without HA)."""
        return self.ha is None or self.ha.leading

    def command_term(self) -> int | None:
        """The term chunkserver commands carry (0 without HA); None when this master must
        not command chunkservers now."""
        return 0 if self.ha is None else self.ha.command_term()

    def registry_complete(self) -> bool:
        """Whether every chunkserver of the cluster (the journaled set) is registered
        here, so the chunk registry knows every copy."""
        servers = self.registry.servers
        return all(cs_id in servers and servers[cs_id].connected
                   for cs_id in self.ns.chunkservers)

    def in_maintenance(self) -> frozenset:
        """Chunkservers whose maintenance mode runs now (leader's wall clock)."""
        now_ns = time.time_ns()
        return frozenset(cs_id for cs_id, k in self.ns.chunkservers.items()
                         if k.maintenance_until_ns > now_ns)

    def know_chunkservers(self) -> None:
        """Journal every registered chunkserver the metadata does not know yet (or knows
        at another address): the leader only, as registrations come in."""
        for server in list(self.registry.servers.values()):
            known = self.ns.chunkservers.get(server.cs_id)
            if server.connected and (known is None or known.addr != server.name):
                self.store.change(KnowChunkserver(server.cs_id, server.name), time.time_ns())

    def became_leader(self) -> None:
        """This master now serves: sessions not connected to it start their sustain time.
        (With HA, chunkservers registered with it all along: the replication planner's
        initial delay counts from the master's start, not from its election.)"""
        self.clients.leading_since_ns = time.time_ns()
        self.know_chunkservers()
        if self.ns.effects:  # changes committed at the election: carry out their chunk side
            self.chunks.run_effects()
        if self.ns.building:  # snapshots in steps a restart or a failover cut short
            self.spawn(self.longops.resume())

    def lost_leadership(self) -> None:
        """Another master leads: its clients must go there (they reconnect and resend)."""
        self.clients.drop_all()

    def token(self, chunk_id: int, version: int, mode: int, ttl: float | None = None) -> bytes:
        """A chunk access token (b"" without AUTH_CODE) good for `ttl` seconds
        (CHUNK_TOKEN_TTL)."""
        if not self.key.enabled or not chunk_id:
            return b""
        expiry = int(time.time() + (ttl or self.cfg.CHUNK_TOKEN_TTL)) + 1
        return self.key.token(chunk_id, version, mode, expiry)

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def checkpoint_loop(self) -> None:
        """A checkpoint every METADATA_SAVE_FREQ hours; with HA also after every
        HA_LOG_RETAIN changes, since the consensus core keeps the records after the last
        checkpoint in memory (for followers that lag)."""
        period = self.cfg.METADATA_SAVE_FREQ * 3600
        due = time.monotonic() + period
        while True:
            await asyncio.sleep(min(5.0, period))
            store = self.store
            behind = store.ns.version - store.last_checkpoint_version
            if time.monotonic() >= due or (self.ha is not None
                                           and behind >= self.cfg.HA_LOG_RETAIN):
                due = time.monotonic() + period
                await store.checkpoint()

    async def session_loop(self) -> None:
        """Expire sessions whose client is away: after SESSION_SUSTAIN_TIME, or after
        EMPTY_SESSION_SUSTAIN_TIME when they hold nothing a client could come back for (no
        open file, no lock; its next request opens a new session), so sessions opened
        and abandoned by the thousand do not stay for a day."""
        while True:
            await asyncio.sleep(min(10.0, max(0.5, self.cfg.SESSION_SUSTAIN_TIME / 4,
                                              self.cfg.LOCKS_SUSTAIN_TIME / 4)))
            now = time.monotonic()
            self.clients.leases.sweep(now)
            if not self.leading:
                continue
            # Sustain times count by the leaders' clocks as journaled (`SessionGone`), so a
            # failover or a restart does not start them again.
            now_ns = time.time_ns()
            sustain_ns = self.cfg.SESSION_SUSTAIN_TIME * 1_000_000_000
            empty_sustain_ns = int(self.cfg.EMPTY_SESSION_SUSTAIN_TIME * 1_000_000_000)
            locks_sustain_ns = int(self.cfg.LOCKS_SUSTAIN_TIME * 1_000_000_000)
            links = self.clients.session_links
            lockers = {lk.session for locks in self.ns.locks.by_file.values() for lk in locks}
            expired = 0
            for session_id, sess in list(self.ns.sessions.items()):
                if session_id in links or session_id not in self.ns.sessions:
                    continue
                if not self.leading:
                    break
                gone_ns = sess.gone_ns or self.clients.leading_since_ns
                away_ns = now_ns - gone_ns
                empty = not sess.open_files and session_id not in lockers
                if away_ns >= sustain_ns or (empty and away_ns >= empty_sustain_ns):
                    expired += 1
                    if expired <= 10:
                        log.info("session %s expired", session_id.hex())
                    self.clients.drop_session_locks(session_id, CloseSession(session_id))
                    self.chunks.run_effects()
                    if expired % 1000 == 0:
                        await asyncio.sleep(0)  # many at once: let clients in between
                elif session_id in lockers and away_ns >= locks_sustain_ns:
                    log.info("session %s away for %.0fs: its file locks are released",
                             session_id.hex(), away_ns / 1e9)
                    self.clients.drop_session_locks(session_id, DropSessionLocks(session_id))
            if expired > 10:
                log.info("%d sessions expired", expired)

    async def trash_loop(self) -> None:
        """Free trash files whose time is up: a journaled `PurgeTrash` naming them, so the
        decision (this master's clock) is replayed, never re-made."""
        while True:
            await asyncio.sleep(self.cfg.TRASH_PURGE_PERIOD)
            if not self.leading:
                continue
            now = time.time_ns()
            entries = list(self.ns.trash.items())  # a copy: the trash changes between steps
            if len(entries) > 50_000:
                settle_gc()  # no collection walks that copy while we step through it
            expired = []
            for i in range(0, len(entries), 50_000):  # a huge trash: checked in steps
                if i:
                    await asyncio.sleep(0)
                expired.extend(inode for inode, (expire, _) in entries[i:i + 50_000]
                               if expire <= now)
            del entries
            if not self.leading:
                continue
            for i in range(0, len(expired), 1000):
                if i:
                    await asyncio.sleep(0)  # a big purge: clients get in between steps
                    if not self.leading:
                        break
                self.store.change(m.PurgeTrash(expired[i:i + 1000]), now)
            if expired:
                log.info("purged %d expired files from the trash", len(expired))
                self.chunks.run_effects()

    # ------------------------------------------------------------ replication

    async def replication_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.CHUNKS_LOOP_PERIOD)
            if not self.leading:
                continue
            try:
                await self.chunks.replication_pass()
            except Exception:
                log.exception("replication pass failed")


def exports_path(cfg) -> str:
    """Where the exports file is: EXPORTS_FILENAME, or next to the config file."""
    if cfg.EXPORTS_FILENAME:
        return cfg.EXPORTS_FILENAME
    return os.path.join(os.path.dirname(os.path.abspath(cfg.path or "/etc/mfs/mfsmaster.cfg")),
                        "mfsexports.cfg")


def load_exports(path: str) -> list[exports.Rule]:
    """The rules of the exports file at `path`; without one, MooseFS's shipped default
    (everyone may mount everything). `ExportsError` names the bad line."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        log.warning("%s not found: every client may mount everything, read-write", path)
        return exports.parse(exports.DEFAULT_TEXT, "default exports")
    except OSError as e:
        raise exports.ExportsError(f"{path}: cannot read: {e.strerror}") from None
    rules = exports.parse(text, path)
    log.info("%s: %d export rules", path, len(rules))
    return rules


async def serve(cfg, ready) -> None:
    await MasterServer(cfg).run(ready)
