"""The chunkserver daemon: the data port (9422) and the link to the master (9420).

Data port, one `Connection` per peer (clients, and upstream chunkservers of a chain):

- `ReadReq` -> `ReadData(status)` + the bytes. A CRC error is answered with status
  CRC_ERROR (the client reads another copy) and reported to the master (`CsChunkDamaged`).
- A write session per connection: `WriteInit(chunk, version, chain)` opens the next hop
  (`chain[0]`, told `chain[1:]`) and answers `Ok` once this copy and the rest of the chain
  are ready; data is taken and forwarded as soon as the next hop is connected (each hop
  holds data that arrives before it is ready), so a session costs one trip down the chain. Each `WriteData(offset)` is forwarded downstream first, then written locally
  (the local writes of a session run in order, one at a time, in the thread pool, so the
  disk write overlaps the network), and answered `WriteStatus` once both are done: the
  first non-zero status of this copy or of the chain. Any number of frames may be in
  flight. `WriteEnd(sync)` waits for the session's writes, fsyncs when asked, ends the
  downstream session and answers `Ok` (or the first error the session met). Sessions
  follow one another on a connection: clients keep pooled connections for them, and a
  chunkserver keeps its connection to the next hop of a chain after a session that ended
  well (`_chain_idle`), so a small file's write costs no new connection.
- `WriteOnce(chunk, version, chain, offset, create, sync)` + the bytes: a whole session
  in one message (what a small file's close sends): passed down the chain first, then made
  (with `create`), written and fsynced (with `sync`) here; answered `Ok` once the chain
  answered, or the first `Error`. One task per hop instead of one per message.
- `ChunkInfoReq` -> `ChunkInfoReply(status, version, stored length)`.

Master link: connect (every address the name resolves to, in turn), `CsRegister` with
the full chunk list, then `CsSpace` every second; `CsCommand`s are executed in arrival
order (replication runs beside them) and answered `Ok`/`Error`. When the link drops the
chunkserver reconnects with backoff forever and registers again. After registering (and
whenever mfshdd.cfg marks change) it sends `CsMarkedChunks`, the chunks on disks marked
for removal, which the master copies elsewhere; a disk taken out after I/O errors is
reported with `CsChunksLost`.

Scrub: a background task CRC-checks every chunk, one after another, at HDD_TEST_SPEED
MB/s (0 turns it off); a bad block or CRC table is reported like a bad read
(`CsChunkDamaged`) and the master replaces the copy.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from elkfs import config as cfgmod
from elkfs.config import Option, ranged_int
from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.auth import EXPIRED, READ, WRITE, ClusterKey
from elkfs.proto.errors import (BAD_TOKEN, CRC_ERROR, OK, TOKEN_EXPIRED, WRONG_VERSION,
                                FsError)
from elkfs.proto.frames import MAX_DATA, FrameError

from . import hddcfg
from .master_links import MasterLinks
from .store import CHUNK_SIZE, ChunkStore
from .voter_shell import VoterShell

log = logging.getLogger("elkfs.chunkserver")

OPTIONS: dict[str, Option] = {
    "DATA_PATH": Option("/var/lib/mfs", "str", "lock file, log and the chunkserver id"),
    "HDD_CONF_FILENAME": Option("/etc/mfs/mfshdd.cfg", "str", "the list of disks"),
    "CSSERV_LISTEN_HOST": Option("*", "str", "data port address (* = all)"),
    "CSSERV_LISTEN_PORT": Option(9422, "port", "data port"),
    "MASTER_HOST": Option("mfsmaster", "str", "master name (every address it resolves to)"),
    "MASTER_PORT": Option(9420, "port", "master port for chunkservers"),
    "MASTER_RECONNECTION_DELAY": Option(1.0, "float", "first delay before reconnecting, s"),
    "DNS_SERVER": Option("", "str", "DNS server (IP or IP:PORT) to resolve MASTER_HOST with; "
                                    "empty: the system resolver"),
    "DNS_REFRESH_TIME": Option(5.0, "float", "seconds between resolutions of MASTER_HOST"),
    "LEADER_LEASE_DURATION": Option(2.0, "float", "the least lease this voter promises, s "
                                                  "(the masters' longer one wins)"),
    "MASTER_TIMEOUT": Option(10.0, "float", "how long to wait for the master's replies, s"),
    "HDD_TEST_SPEED": Option(1.0, "nonneg_float", "background CRC scrub speed, MB/s (0: off)"),
    "HDD_STOCK_FILES": Option(1024, ranged_int(0, 4096),
                              "empty chunk files kept ready per disk, so that new chunks "
                              "do not wait for file creation (0: none)"),
    "HDD_MAX_ERRORS": Option(3, ranged_int(1, 1000000),
                             "I/O errors after which a disk is taken out of use"),
    "WORKERS_MAX": Option(8, ranged_int(1, 256), "disk I/O threads"),
    "OPEN_CHUNKS_LIMIT": Option(512, ranged_int(4, 1 << 20), "chunk files kept open"),
    "AUTH_CODE": Option("", "str", "the cluster's shared secret (as in mfsmaster.cfg): "
                                   "proven to the masters, and the key of the chunk tokens "
                                   "checked on every read and write; empty: none (a "
                                   "warning at start)"),
    # Limits of the data port (docs/security.md, "Limits")
    "MAX_CONNECTIONS_PER_ADDRESS": Option(256, ranged_int(0, 1 << 20),
                                          "open data-port connections from one address "
                                          "(0: no limit)"),
    "IDLE_CONNECTION_TIMEOUT": Option(120.0, "nonneg_float",
                                      "seconds a data-port connection without a write "
                                      "session in progress may stay silent (0: forever)"),
    "FRAME_TIMEOUT": Option(30.0, "nonneg_float",
                            "seconds a message may take to arrive whole once it began "
                            "(0: forever)"),
}

INLINE_IO = 128 << 10  # reads/writes up to this size run in the event loop
REPLICATION_PIECE = 4 << 20
REPLICATION_WINDOW = 4
REPLICATIONS_MAX = 4
CHAIN_TIMEOUT = 10.0
CHAIN_IDLE_MAX = 8  # idle connections kept per next chunkserver


def _hop_failed(where: str, e: BaseException) -> FsError:
    """The error a session answers when the next chunkserver of its chain cannot be reached."""
    return FsError(_status_of(e), f"{where}: {e or type(e).__name__}")


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, FsError):
        return exc.status
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, (rpc.ConnectionClosed, ConnectionError)):
        return errno.ECONNRESET
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return errno.ETIMEDOUT
    return errno.EIO


def load_cs_id(data_path: str) -> bytes:
    """The chunkserver's identity: 16 random bytes made on first start, kept forever."""
    path = os.path.join(data_path, "csid")
    try:
        with open(path, "rb") as f:
            cs_id = f.read()
        if len(cs_id) == 16:
            return cs_id
        log.warning("%s is damaged (%d bytes); making a new id", path, len(cs_id))
    except FileNotFoundError:
        pass
    cs_id = os.urandom(16)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(cs_id)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    return cs_id


class WriteSession:
    """One write session on one connection (between WriteInit and WriteEnd)."""

    def __init__(self, msg: m.WriteInit):
        self.chunk_id = msg.chunk_id
        self.version = msg.version
        self.chain = msg.chain
        self.ready = False
        self.ready_event = asyncio.Event()  # set once ready and the backlog is handled
        self.closed = False
        self.init_status = OK
        self.status = OK  # first error of the session
        self.down: rpc.Connection | None = None
        self.down_addr: tuple[str, int] | None = None
        self.backlog: list[tuple[m.WriteData, memoryview | None]] = []
        self.queue: deque = deque()  # local writes, in order
        self.wakeup: asyncio.Event = asyncio.Event()
        self.worker: asyncio.Task | None = None
        self.inflight: set[asyncio.Future] = set()  # replies not yet sent

    def close(self):
        self.closed = True
        self.ready_event.set()
        if self.worker is not None:
            self.worker.cancel()
        if self.down is not None:
            self.down.close()
        for _, _, fut in self.queue:
            if not fut.done():
                fut.set_result(errno.ECANCELED)
        self.queue.clear()


def _in_session(conn: rpc.Connection) -> bool:
    """A data-port connection in the middle of a write session is not idle: a writer may
    pause between pieces."""
    return isinstance(conn.context, WriteSession) and not conn.context.closed


def data_port_limits(per_address: int = 256, idle_s: float = 120.0,
                     frame_s: float = 30.0) -> rpc.ConnectionLimits:
    return rpc.ConnectionLimits(per_address=per_address, idle_s=idle_s, frame_s=frame_s,
                                keep=_in_session)


class ChunkServer:
    def __init__(self, store: ChunkStore, *, data_path: str, listen_host: str = "*",
                 listen_port: int = 9422, master_host: str = "mfsmaster",
                 master_port: int = 9420, reconnect_delay: float = 1.0,
                 dns_server: str | None = None, dns_refresh_s: float = 5.0,
                 lease_s: float = 2.0,
                 master_timeout: float = 10.0, workers: int = 8, hdd_conf: str | None = None,
                 test_speed: float = 0.0, auth_code: str = "",
                 limits: rpc.ConnectionLimits | None = None):
        self.store = store
        self.key = ClusterKey(auth_code)
        self.refused = 0  # data-port requests refused for their token
        self.limits = limits or data_port_limits()
        self.data_path = data_path
        self.listen_host = "0.0.0.0" if listen_host in ("*", "") else listen_host
        self.listen_port = listen_port
        self.reconnect_delay = reconnect_delay
        self.master_timeout = master_timeout
        self.hdd_conf = hdd_conf
        self.test_speed = test_speed  # scrub speed, MB/s
        self.scrubbed_bytes = 0
        self.scrubbed_chunks = 0
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cs-io")
        self.cs_id = load_cs_id(data_path)
        self.server: rpc.Listener | None = None
        self.voter = VoterShell(data_path, lease_s)
        self.masters = MasterLinks(self, master_host, master_port, dns_server, dns_refresh_s,
                                   reconnect_delay, master_timeout)
        self.made_unreported: set[tuple[int, int]] = set()  # see report_made
        self.damaged: set[tuple[int, int]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._commands: asyncio.Queue = asyncio.Queue()
        self._command_task: asyncio.Task | None = None
        self._replications = asyncio.Semaphore(REPLICATIONS_MAX)
        self._checks = asyncio.Semaphore(1)
        self._conns: set[rpc.Connection] = set()
        # Idle connections to the next chunkserver of a chain, kept after a session
        # ended well: a chain's next session needs no new connection.
        self._chain_idle: dict[tuple[str, int], list[rpc.Connection]] = {}

    @classmethod
    def from_config(cls, cfg: cfgmod.Config, store: ChunkStore) -> "ChunkServer":
        return cls(store, data_path=cfg.DATA_PATH, listen_host=cfg.CSSERV_LISTEN_HOST,
                   listen_port=cfg.CSSERV_LISTEN_PORT, master_host=cfg.MASTER_HOST,
                   master_port=cfg.MASTER_PORT, dns_server=cfg.DNS_SERVER or None,
                   dns_refresh_s=cfg.DNS_REFRESH_TIME, lease_s=cfg.LEADER_LEASE_DURATION,
                   reconnect_delay=cfg.MASTER_RECONNECTION_DELAY,
                   master_timeout=cfg.MASTER_TIMEOUT, workers=cfg.WORKERS_MAX,
                   hdd_conf=cfg.HDD_CONF_FILENAME, test_speed=cfg.HDD_TEST_SPEED,
                   auth_code=cfg.AUTH_CODE,
                   limits=data_port_limits(cfg.MAX_CONNECTIONS_PER_ADDRESS,
                                           cfg.IDLE_CONNECTION_TIMEOUT, cfg.FRAME_TIMEOUT))

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        if not self.key.enabled:
            log.warning("AUTH_CODE is not set: this chunkserver serves and takes chunks "
                        "without tokens and obeys any master (docs/security.md)")
        self.server = await rpc.serve(self.listen_host, self.listen_port, self._on_data,
                                      "data", on_close=self._on_data_close,
                                      on_connect=self._conns.add, limits=self.limits)
        if self.listen_port == 0:
            self.listen_port = self.server.sockets[0].getsockname()[1]
        log.info("data port listening on %s:%d; %d chunks", self.listen_host,
                 self.listen_port, len(self.store))
        self._command_task = asyncio.create_task(self._command_worker())
        self.masters.start()
        loop = asyncio.get_running_loop()
        self.store.on_disk_failed = lambda disk, lost: loop.call_soon_threadsafe(
            self._disk_failed, disk, lost)
        self._spawn(self._scrub_loop())

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.masters.stop()
        for t in (self._command_task, *self._tasks):
            if t is not None:
                t.cancel()
        for conn in list(self._conns):
            conn.close()
        for idle in self._chain_idle.values():
            for conn in idle:
                conn.close()
        self._chain_idle.clear()
        self.voter.close()
        await asyncio.sleep(0)
        self.pool.shutdown(wait=True)
        self.store.close()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def reload(self) -> None:
        """SIGHUP: re-read mfshdd.cfg; new disks are scanned and added, removal marks
        updated. Disks that left the file are kept until restart."""
        if not self.hdd_conf:
            return
        try:
            entries = hddcfg.load(self.hdd_conf)
        except hddcfg.HddConfigError as e:
            log.error("reload: %s (disks unchanged)", e)
            return
        known = {d.path: d for d in self.store.disks}
        marks_changed = False
        for entry in entries:
            disk = known.pop(entry.path, None)
            if disk is None:
                d = self.store.add_disk(entry)
                log.info("reload: added disk %s (%d chunks)", d.path, d.chunk_count)
            elif disk.marked_for_removal != entry.marked_for_removal:
                marks_changed = True
                disk.marked_for_removal = entry.marked_for_removal
                log.info("reload: disk %s %s", disk.path, "marked for removal"
                         if entry.marked_for_removal else "no longer marked for removal")
        for path in known:
            log.warning("reload: disk %s left %s; it stays in use until restart",
                        path, self.hdd_conf)
        if marks_changed:
            self._send_marked()

    def _send_marked(self) -> None:
        self.masters.send_all(m.CsMarkedChunks(self.store.marked_chunks()))

    def _disk_failed(self, disk, lost: list[tuple[int, int]]) -> None:
        """A disk was taken out: tell the master its copies are gone."""
        for chunk_id, version in lost:
            self.damaged.discard((chunk_id, version))
        self.masters.send_all(m.CsChunksLost(lost))
        # (A master not connected now gets the chunks left at its next registration.)

    async def _scrub_loop(self) -> None:
        """CRC-check every chunk in turn at `test_speed` MB/s, forever."""
        while True:
            if self.test_speed <= 0:
                await asyncio.sleep(5.0)
                continue
            ids = [(cid, v) for cid, v in self.store.chunks() if (cid, v) not in self.damaged]
            if not ids:
                await asyncio.sleep(1.0)
                continue
            for chunk_id, version in ids:
                if self.test_speed <= 0:
                    break
                try:
                    checked, problem = await self._io(self.store.scrub, chunk_id)
                except Exception as e:  # never let the scrub die
                    log.error("scrub of chunk %016X failed: %r", chunk_id, e)
                    checked, problem = 0, None
                self.scrubbed_bytes += checked
                self.scrubbed_chunks += 1
                if problem is not None:
                    try:
                        current = self.store.info(chunk_id)[0]
                    except FsError:
                        current = None
                    if current is not None:
                        log.warning("scrub: chunk %016X v%d: %s", chunk_id, current, problem)
                        self.report_damaged(chunk_id, current)
                await asyncio.sleep(max(checked, 1 << 16) / (self.test_speed * 1e6))

    async def _connect(self, host: str, port: int, handler=None, name: str = "",
                       timeout: float = 5.0) -> rpc.Connection:
        """Connect from our own address when we listen on one (so per-address firewall
        rules and the master's view of us match the data port)."""
        local = None
        if self.listen_host != "0.0.0.0" and ":" not in self.listen_host:
            local = self.listen_host
        return await rpc.connect(host, port, handler, name, timeout, local_host=local)

    # ------------------------------------------------------------ data port

    def _on_data(self, conn: rpc.Connection, msg: m.Msg, data: memoryview | None) -> None:
        t = type(msg)
        if t is m.WriteData:
            self._write_data(conn, msg, data)
        elif t is m.ReadReq:
            self._read(conn, msg)
        elif t is m.WriteInit:
            self._write_init(conn, msg)
        elif t is m.WriteEnd:
            self._write_end(conn, msg)
        elif t is m.WriteOnce:
            self._spawn(self._write_once(conn, msg, data))
        elif t is m.ChunkInfoReq:
            try:
                self._check_token(msg.token, msg.chunk_id, msg.version, READ, conn)
                version, length = self.store.info(msg.chunk_id)
                conn.send(m.ChunkInfoReply(msg.req, OK, version, length))
            except FsError as e:
                conn.send(m.ChunkInfoReply(msg.req, e.status, 0, 0))
        else:
            raise FrameError(f"{t.__name__} is not a data port message")

    def _on_data_close(self, conn: rpc.Connection) -> None:
        self._conns.discard(conn)
        if isinstance(conn.context, WriteSession):
            conn.context.close()
            conn.context = None

    # chunk tokens

    def _check_token(self, token: bytes, chunk_id: int, version: int, mode: int,
                     conn: rpc.Connection) -> None:
        """Raise FsError unless `token` allows `mode` access to this chunk version now
        (no AUTH_CODE: everything is allowed)."""
        if not self.key.enabled:
            return
        why = self.key.token_problem(token, chunk_id, version, mode, time.time())
        if why is None:
            return
        self.refused += 1
        if why == EXPIRED:
            raise FsError(TOKEN_EXPIRED, why)
        log.warning("refused %s of chunk %016X v%d from %s: %s", "write" if mode == WRITE
                    else "read", chunk_id, version, conn.peer, why)
        raise FsError(BAD_TOKEN, why)

    # reads

    def _read(self, conn: rpc.Connection, msg: m.ReadReq) -> None:
        try:
            self._check_token(msg.token, msg.chunk_id, msg.version, READ, conn)
        except FsError as e:
            if conn.is_open:
                conn.send(m.ReadData(msg.req, e.status))
            return
        if msg.size <= INLINE_IO:
            try:
                data, crcs = self._read_now(msg)
            except Exception as e:
                self._read_failed(conn, msg, e)
                return
            if conn.is_open:
                conn.send(m.ReadData(msg.req, OK, crcs), data)
        else:
            self._spawn(self._read_big(conn, msg))

    def _read_now(self, msg: m.ReadReq) -> tuple[memoryview, bytes]:
        """The bytes of a read, and the CRCs of its blocks if the reader checks them."""
        if msg.crcs:
            return self.store.read_with_crcs(msg.chunk_id, msg.version, msg.offset, msg.size)
        return self.store.read(msg.chunk_id, msg.version, msg.offset, msg.size), b""

    async def _read_big(self, conn: rpc.Connection, msg: m.ReadReq) -> None:
        try:
            if msg.size > MAX_DATA:
                raise FsError(errno.EINVAL, f"read of {msg.size} bytes over {MAX_DATA}")
            data, crcs = await self._io(self._read_now, msg)
        except Exception as e:
            self._read_failed(conn, msg, e)
            return
        try:
            conn.send(m.ReadData(msg.req, OK, crcs), data)
            await conn.drain()
        except rpc.ConnectionClosed:
            pass

    def _read_failed(self, conn: rpc.Connection, msg: m.ReadReq, exc: Exception) -> None:
        status = _status_of(exc)
        if status == CRC_ERROR:
            log.warning("read of chunk %016X v%d: %s", msg.chunk_id, msg.version, exc)
            self.report_damaged(msg.chunk_id, msg.version)
        elif not isinstance(exc, FsError):
            log.error("read of chunk %016X failed: %r", msg.chunk_id, exc)
        if conn.is_open:
            conn.send(m.ReadData(msg.req, status))

    def report_made(self, chunk_id: int, version: int) -> None:
        """Tell every master of a copy made or changed here (a write session, or a
        command of one master: the others learn it too); one made while a link is down
        or registering is told right after that registration."""
        self.masters.send_all(m.CsChunkMade(chunk_id, version))
        if self.masters.registering:  # its chunk list may have been taken before this
            self.made_unreported.add((chunk_id, version))

    def report_damaged(self, chunk_id: int, version: int) -> None:
        self.damaged.add((chunk_id, version))
        self.masters.send_all(m.CsChunkDamaged(chunk_id, version))

    # write sessions

    def _write_init(self, conn: rpc.Connection, msg: m.WriteInit) -> None:
        old = conn.context
        if isinstance(old, WriteSession):
            if not old.ready or old.init_status == OK:
                log.warning("new WriteInit from %s before WriteEnd; dropping the old "
                            "session", conn.peer)
            old.close()
        s = WriteSession(msg)
        conn.context = s
        self._spawn(self._init_session(conn, s, msg))

    async def _chain_conn(self, host: str, port: int) -> rpc.Connection:
        idle = self._chain_idle.get((host, port))
        while idle:
            conn = idle.pop()
            if rpc.reusable(conn):
                return conn
            conn.close()
        return await self._connect(host, port, name="chain", timeout=CHAIN_TIMEOUT)

    def _chain_put(self, addr: tuple[str, int], conn: rpc.Connection) -> None:
        idle = self._chain_idle.setdefault(addr, [])
        if conn.is_open and len(idle) < CHAIN_IDLE_MAX:
            idle.append(conn)
        else:
            conn.close()

    async def _init_session(self, conn: rpc.Connection, s: WriteSession, msg: m.WriteInit):
        """Check the chunk, connect to the next hop and pass WriteInit on. Pipelined:
        the session takes data (and forwards it) as soon as the next hop is connected,
        without waiting for its answer to WriteInit (it holds early data the same way);
        this hop answers WriteInit once the rest of the chain has."""
        detail = ""
        down_init = None
        where = ""
        try:
            self._check_token(msg.token, msg.chunk_id, msg.version, WRITE, conn)
            if not msg.create:
                self.store.check(msg.chunk_id, msg.version)
            if msg.chain:
                host, port = msg.chain[0]
                where = f"{host}:{port}"
                try:
                    s.down = await self._chain_conn(host, port)
                    s.down_addr = (host, port)
                    down_init = s.down.start_call(m.WriteInit(
                        s.down.next_req(), chunk_id=msg.chunk_id, version=msg.version,
                        chain=list(msg.chain[1:]), create=msg.create, token=msg.token))
                except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                    raise _hop_failed(where, e) from None
            if msg.create:  # after passing it on: the next hops make theirs meanwhile
                self._make_if_absent(msg.chunk_id, msg.version)
                self.store.check(msg.chunk_id, msg.version)
        except FsError as e:
            s.init_status = s.status = e.status
            detail = e.detail
        except Exception as e:  # pragma: no cover - a bug
            log.exception("write init failed")
            s.init_status = s.status = errno.EIO
            detail = str(e)
        if s.closed or not conn.is_open:  # replaced, or the connection closed
            if down_init is not None:
                down_init.cancel()
            s.close()
            return
        s.ready = True
        if s.init_status == OK:
            s.worker = self._spawn(self._local_writer(s))
        backlog, s.backlog = s.backlog, []
        for wmsg, data in backlog:
            self._session_write(conn, s, wmsg, data)
        s.ready_event.set()
        status = s.init_status
        if status == OK and down_init is not None:
            try:
                reply, _ = await rpc.wait_reply(down_init, CHAIN_TIMEOUT)
                if isinstance(reply, m.Error):
                    status, detail = reply.status, f"{where}: {reply.detail or reply.status}"
            except Exception as e:
                status, detail = _status_of(e), f"{where}: {e or type(e).__name__}"
            if status != OK and s.status == OK:
                s.status = status
        if conn.is_open:
            conn.send(m.Ok(msg.req) if status == OK else m.Error(msg.req, status, detail))

    def _make_if_absent(self, chunk_id: int, version: int, offset: int = 0,
                        data=None, report: bool = True) -> bool:
        """A creating session's copy (`create`): made here (with `data` written at
        `offset`) and reported to the master (unless the caller does it), unless it
        exists already (a retried session). Returns whether it was made."""
        if chunk_id in self.store:
            return False
        try:
            self.store.create(chunk_id, version, offset, data)
        except OSError as e:
            raise FsError(_status_of(e), f"cannot make the chunk: {e}") from None
        if report:
            self.report_made(chunk_id, version)
        return True

    def _write_data(self, conn: rpc.Connection, msg: m.WriteData, data) -> None:
        s = conn.context
        if not isinstance(s, WriteSession):
            conn.send(m.WriteStatus(msg.req, errno.EBADF))
            return
        self._session_write(conn, s, msg, data)

    def _session_write(self, conn: rpc.Connection, s: WriteSession, msg: m.WriteData,
                       data) -> None:
        if not s.ready:
            s.backlog.append((msg, data))
            return
        if s.init_status != OK:
            conn.send(m.WriteStatus(msg.req, s.init_status))
            return
        if data is None:
            data = memoryview(b"")
        loop = asyncio.get_running_loop()
        down_fut = None
        if s.down is not None:  # forward first: the next hop works while we write
            try:
                down_fut = s.down.start_call(m.WriteData(s.down.next_req(), msg.offset), data)
            except rpc.ConnectionClosed:
                down_fut = loop.create_future()
                down_fut.set_result((m.WriteStatus(0, errno.ECONNRESET), None))
        local_fut = loop.create_future()
        s.queue.append((msg.offset, data, local_fut))
        s.wakeup.set()
        task = self._spawn(self._write_reply(conn, s, msg.req, local_fut, down_fut))
        s.inflight.add(task)
        task.add_done_callback(s.inflight.discard)

    async def _local_writer(self, s: WriteSession) -> None:
        store = self.store
        while True:
            while not s.queue:
                s.wakeup.clear()
                await s.wakeup.wait()
            offset, data, fut = s.queue[0]
            try:
                if len(data) <= INLINE_IO:
                    store.write(s.chunk_id, s.version, offset, data)
                else:
                    await self._io(store.write, s.chunk_id, s.version, offset, data)
                status = OK
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status = _status_of(e)
                if status == CRC_ERROR:
                    self.report_damaged(s.chunk_id, s.version)
                elif not isinstance(e, FsError):
                    log.error("write to chunk %016X failed: %r", s.chunk_id, e)
            s.queue.popleft()
            if not fut.done():
                fut.set_result(status)

    async def _write_reply(self, conn, s: WriteSession, req: int, local_fut, down_fut):
        status = await local_fut
        if down_fut is not None:
            try:
                reply, _ = await down_fut
                down_status = reply.status
            except Exception as e:
                down_status = _status_of(e)
            if status == OK:
                status = down_status
        if status != OK and s.status == OK:
            s.status = status
        if conn.is_open:
            conn.send(m.WriteStatus(req, status))

    def _write_end(self, conn: rpc.Connection, msg: m.WriteEnd) -> None:
        s = conn.context
        if not isinstance(s, WriteSession):
            conn.send(m.Error(msg.req, errno.EBADF, "no write session"))
            return
        conn.context = None
        self._spawn(self._end_session(conn, s, msg))

    async def _end_session(self, conn, s: WriteSession, msg: m.WriteEnd) -> None:
        try:
            await s.ready_event.wait()  # WriteEnd may come right behind WriteInit
            if s.closed:
                return
            down_fut = None
            if s.down is not None and s.init_status == OK:
                try:
                    down_fut = s.down.start_call(m.WriteEnd(s.down.next_req(), msg.sync))
                except rpc.ConnectionClosed:
                    s.status = s.status or errno.ECONNRESET
            if s.inflight:
                await asyncio.gather(*list(s.inflight), return_exceptions=True)
            detail = ""
            if s.init_status == OK and msg.sync:
                try:
                    await self._io(self.store.fsync, s.chunk_id)
                except Exception as e:
                    s.status = s.status or _status_of(e)
                    detail = str(e)
            elif s.init_status == OK:
                self.store.flush_soon(s.chunk_id)
            if down_fut is not None:
                try:
                    reply, _ = await rpc.wait_reply(down_fut, CHAIN_TIMEOUT)
                    if isinstance(reply, m.Error) and s.status == OK:
                        s.status, detail = reply.status, reply.detail
                    elif isinstance(reply, m.Ok) and s.status == OK and s.down is not None:
                        down, s.down = s.down, None  # ended well: reusable
                        self._chain_put(s.down_addr, down)
                except Exception as e:
                    s.status = s.status or _status_of(e)
            if s.status == OK:  # told to the masters before the answer goes upstream
                self.masters.send_all(m.CsWriteDone(s.chunk_id, s.version))
            if conn.is_open:
                if s.status == OK:
                    conn.send(m.Ok(msg.req))
                else:
                    conn.send(m.Error(msg.req, s.status, detail))
        finally:
            s.close()

    async def _write_once(self, conn: rpc.Connection, msg: m.WriteOnce, data) -> None:
        """A whole session in one message: pass it down the chain first, make the chunk
        if asked, write, fsync if asked, then answer with the chain's outcome."""
        status, detail, where = OK, "", ""
        down = down_fut = None
        made = False
        data = memoryview(b"") if data is None else data
        try:
            self._check_token(msg.token, msg.chunk_id, msg.version, WRITE, conn)
            if msg.chain:
                host, port = msg.chain[0]
                where = f"{host}:{port}"
                try:
                    down = await self._chain_conn(host, port)
                    down_fut = down.start_call(m.WriteOnce(
                        down.next_req(), msg.chunk_id, msg.version, list(msg.chain[1:]),
                        msg.offset, msg.create, msg.sync, msg.token), data)
                except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed) as e:
                    raise _hop_failed(where, e) from None
            # After passing it on: the next hops make theirs meanwhile.
            small = len(data) <= INLINE_IO
            made = msg.create and self._make_if_absent(
                msg.chunk_id, msg.version, msg.offset, data if small else None, report=False)
            if not small:
                await self._io(self.store.write, msg.chunk_id, msg.version, msg.offset, data)
            elif not made:  # (a chunk made here got the data with its header)
                self.store.write(msg.chunk_id, msg.version, msg.offset, data)
            if msg.sync:
                await self._io(self.store.fsync, msg.chunk_id)
        except FsError as e:
            status, detail = e.status, e.detail
            if status == CRC_ERROR:
                self.report_damaged(msg.chunk_id, msg.version)
        except Exception as e:
            status, detail = _status_of(e), str(e)
            if not isinstance(e, OSError):
                log.error("write to chunk %016X failed: %r", msg.chunk_id, e)
        if down_fut is not None:
            try:
                reply, _ = await rpc.wait_reply(down_fut, CHAIN_TIMEOUT)
                if isinstance(reply, m.Error) and status == OK:
                    status, detail = reply.status, f"{where}: {reply.detail or reply.status}"
                self._chain_put((host, port), down)  # answered: no session left on it
            except Exception as e:
                down.close()
                if status == OK:
                    status, detail = _status_of(e), f"{where}: {e or type(e).__name__}"
        if status == OK:  # told to the masters before the answer goes upstream
            self.masters.send_all(m.CsWriteDone(msg.chunk_id, msg.version))
        if conn.is_open:
            conn.send(m.Ok(msg.req) if status == OK else m.Error(msg.req, status, detail))
        if made:
            # Told after the answer (off the writer's wait), but in the same step: still
            # before the answer to any deletion the writer's outcome may bring.
            self.report_made(msg.chunk_id, msg.version)

    # ------------------------------------------------------------ master link

    def advertised_host(self, conn: rpc.Connection) -> str:
        if self.listen_host != "0.0.0.0":
            return self.listen_host
        return conn.transport.get_extra_info("sockname")[0]

    def after_registration(self, conn: rpc.Connection) -> None:
        """What a master that just registered us must hear besides the chunk list."""
        for chunk_id, version in list(self.made_unreported):
            if chunk_id in self.store and self.store.info(chunk_id)[0] == version:
                conn.send(m.CsChunkMade(chunk_id, version))
        if not self.masters.registering:
            self.made_unreported.clear()
        if any(d.marked_for_removal for d in self.store.disks):
            conn.send(m.CsMarkedChunks(self.store.marked_chunks()))
        for chunk_id, version in list(self.damaged):
            try:
                if self.store.info(chunk_id)[0] == version:
                    conn.send(m.CsChunkDamaged(chunk_id, version))
                    continue
            except FsError:
                pass
            self.damaged.discard((chunk_id, version))

    def take_command(self, conn: rpc.Connection, msg: m.CsCommand) -> None:
        if isinstance(msg.command, m.ReplicateChunk):
            self._spawn(self._replicate_command(conn, msg))
        elif isinstance(msg.command, m.CheckChunk):  # beside the others: it reads a lot
            self._spawn(self._check_command(conn, msg))
        else:
            self._commands.put_nowait((conn, msg))

    async def _command_worker(self) -> None:
        while True:
            conn, msg = await self._commands.get()
            try:
                await self._execute(msg.command)
                reply = m.Ok(msg.req)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status = _status_of(e)
                if not isinstance(e, FsError):
                    log.error("command %r failed: %r", msg.command, e)
                reply = m.Error(msg.req, status, str(e))
            if conn.is_open:
                conn.send(reply)

    def _has(self, chunk_id: int, version: int) -> bool:
        try:
            return self.store.info(chunk_id)[0] == version
        except FsError:
            return False

    async def _execute(self, cmd: m.CsCmd) -> None:
        """Carry out one command. A command whose outcome is already here is done (a new
        leader redoes the chunk side of changes its predecessor may have carried out);
        the outcome is told to every master."""
        await self._execute_once(cmd)
        if isinstance(cmd, m.DeleteChunk):
            self.masters.send_all(m.CsChunkDeleted(cmd.chunk_id, cmd.version))
        elif isinstance(cmd, m.DuplicateChunk):
            self.report_made(cmd.new_chunk_id, cmd.new_version)
        elif isinstance(cmd, (m.SetChunkVersion, m.TruncateChunk)):
            self.report_made(cmd.chunk_id, cmd.new_version)
        elif not isinstance(cmd, m.CheckChunk):
            self.report_made(cmd.chunk_id, cmd.version)

    async def _execute_once(self, cmd: m.CsCmd) -> None:
        st = self.store
        if isinstance(cmd, (m.SetChunkVersion, m.TruncateChunk)) and \
                self._has(cmd.chunk_id, cmd.new_version):
            return
        if isinstance(cmd, m.DuplicateChunk) and self._has(cmd.new_chunk_id, cmd.new_version):
            return
        if isinstance(cmd, m.CreateChunk):
            # A new chunk is an empty file with a header: cheaper done at once than
            # handed to the thread pool (a small file's write waits for it).
            st.create(cmd.chunk_id, cmd.version)
        elif isinstance(cmd, m.DeleteChunk):
            await self._io(st.delete, cmd.chunk_id, cmd.version)
            self.damaged.discard((cmd.chunk_id, cmd.version))
        elif isinstance(cmd, m.SetChunkVersion):
            await self._io(st.set_version, cmd.chunk_id, cmd.version, cmd.new_version)
        elif isinstance(cmd, m.TruncateChunk):
            await self._io(st.truncate, cmd.chunk_id, cmd.version, cmd.new_version,
                           cmd.length)
        elif isinstance(cmd, m.DuplicateChunk):
            await self._io(st.duplicate, cmd.chunk_id, cmd.version, cmd.new_chunk_id,
                           cmd.new_version)
        elif isinstance(cmd, m.ReplicateChunk):
            await self.replicate(cmd.chunk_id, cmd.version, cmd.sources, cmd.token)
        elif isinstance(cmd, m.CheckChunk):
            await self._check_copy(cmd.chunk_id, cmd.version)
        else:  # pragma: no cover - the schema allows nothing else
            raise FsError(errno.ENOTSUP, f"unknown command {cmd!r}")

    async def _check_command(self, conn: rpc.Connection, msg: m.CsCommand) -> None:
        try:
            async with self._checks:  # one at a time
                await self._execute(msg.command)
            reply = m.Ok(msg.req)
        except Exception as e:
            reply = m.Error(msg.req, _status_of(e), str(e))
        if conn.is_open:
            conn.send(reply)

    async def _replicate_command(self, conn: rpc.Connection, msg: m.CsCommand) -> None:
        try:
            async with self._replications:
                await self._execute(msg.command)
            reply = m.Ok(msg.req)
        except Exception as e:
            log.warning("replication of chunk %016X failed: %s", msg.command.chunk_id, e)
            reply = m.Error(msg.req, _status_of(e), str(e))
        if conn.is_open:
            conn.send(reply)

    async def _check_copy(self, chunk_id: int, version: int) -> None:
        """A client found a block of this copy failing its CRC: check it from disk now
        and report it damaged if it is (the master replaces it)."""
        if not self._has(chunk_id, version):
            raise FsError(errno.ENOENT, f"no copy of chunk {chunk_id:016X} v{version}")
        _, problem = await self._io(self.store.scrub, chunk_id)
        if problem is not None:
            log.warning("check of chunk %016X v%d: %s", chunk_id, version, problem)
            self.report_damaged(chunk_id, version)

    async def replicate(self, chunk_id: int, version: int, sources: list,
                        token: bytes = b"") -> None:
        """Fetch chunk `chunk_id` at `version` from the first source that has it."""
        try:
            if self.store.info(chunk_id)[0] == version:
                return  # already here
        except FsError:
            pass
        errors = []
        last = errno.EIO
        for host, port in sources:
            try:
                await self._replicate_from(host, port, chunk_id, version, token)
                log.info("replicated chunk %016X v%d from %s:%d", chunk_id, version, host,
                         port)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                last = _status_of(e)
                errors.append(f"{host}:{port}: {e or type(e).__name__}")
        raise FsError(last if sources else errno.EINVAL,
                      "; ".join(errors) or "no sources")

    async def _replicate_from(self, host: str, port: int, chunk_id: int, version: int,
                              token: bytes):
        conn = await self._connect(host, port, name="replicate", timeout=CHAIN_TIMEOUT)
        pending: deque = deque()
        try:
            info, _ = await conn.call(m.ChunkInfoReq, chunk_id=chunk_id, version=version,
                                      token=token, timeout=CHAIN_TIMEOUT)
            if info.status != OK:
                raise FsError(info.status, "source")
            if info.version != version:
                raise FsError(WRONG_VERSION, f"source has version {info.version}")
            length = min(info.length, CHUNK_SIZE)
            tmp = await self._io(self.store.create_temp, chunk_id, version)
            try:
                offsets = iter(range(0, length, REPLICATION_PIECE))
                while True:
                    while len(pending) < REPLICATION_WINDOW:
                        off = next(offsets, None)
                        if off is None:
                            break
                        # The source checks the CRCs itself (and reports a damaged copy
                        # of its own); the copy made here gets CRCs of its own.
                        size = min(REPLICATION_PIECE, length - off)
                        req = m.ReadReq(conn.next_req(), chunk_id, version, off, size,
                                        token)
                        pending.append((off, conn.start_call(req)))
                    if not pending:
                        break
                    off, fut = pending.popleft()
                    reply, data = await rpc.wait_reply(fut, CHAIN_TIMEOUT * 3)
                    if reply.status != OK:
                        raise FsError(reply.status, f"reading offset {off}")
                    if data is not None:
                        await self._io(self.store.write_temp, tmp, off, data)
                await self._io(self.store.commit_temp, tmp)
            except BaseException:
                await self._io(self.store.abort_temp, tmp)
                raise
        finally:
            for _, fut in pending:
                fut.cancel()
            conn.close()


def tune_malloc() -> None:
    """Keep big buffers (1-8 MiB frames and reads) in the heap: glibc would otherwise
    mmap and munmap each one, and every fresh page costs a fault and a zeroing (measured:
    about a third less chunkserver CPU per GiB read)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


async def run(cfg: cfgmod.Config, ready) -> None:
    """The daemon body (see elkfs.daemon.run_daemon)."""
    tune_malloc()
    try:
        entries = hddcfg.load(cfg.HDD_CONF_FILENAME)
    except hddcfg.HddConfigError as e:
        raise RuntimeError(str(e)) from None
    store = ChunkStore(entries, max_open=cfg.OPEN_CHUNKS_LIMIT, max_errors=cfg.HDD_MAX_ERRORS,
                       stock=cfg.HDD_STOCK_FILES)
    loop = asyncio.get_running_loop()
    count = await loop.run_in_executor(None, store.scan)
    log.info("found %d chunks on %d disks", count, len(store.disks))
    server = ChunkServer.from_config(cfg, store)
    await server.start()
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    ready()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
