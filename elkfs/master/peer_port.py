"""Links between masters (MooseFS's `matomlserv`): the HA protocol's master-to-master
messages and the checkpoint a lagging follower installs.

Each master keeps one outgoing connection to every other master found in DNS, on that
master's MASTER_PORT, and sends its own messages there after a `MasterHello`; the other
master answers on *its* outgoing connection. So each connection carries one direction
only and needs no request matching: the consensus core tolerates loss, duplication and
reordering, so a message to a master that is not connected is simply dropped.

A follower behind the leader's retained log gets the leader's newest committed
checkpoint, streamed in 1 MiB pieces with the sender waiting for the socket to drain
(bounded memory on both sides); the `InstallSnapshot` message follows the last piece on
the same connection, so it arrives only once the file is whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from ..consensus import wire
from ..consensus.messages import InstallSnapshot
from ..proto import handshake
from ..proto import messages as m
from ..proto import rpc
from . import checkpoint as ckpt

log = logging.getLogger("mfsmaster.peers")

PIECE = 1 << 20
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.1, 1.0


class _Outgoing:
    """This master's connection to one other master; reconnects until stopped."""

    def __init__(self, links: "PeerLinks", host: str):
        self.links = links
        self.host = host
        self.conn: rpc.Connection | None = None
        self.streaming = False
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.down_logged = False

    async def _run(self) -> None:
        node = self.links.node
        delay = RECONNECT_MIN_S
        while True:
            try:
                conn = await rpc.connect(self.host, node.cfg.MASTER_PORT, None,
                                         name=f"master {self.host}", timeout=2.0,
                                         local_host=node.local_host)
            except (OSError, asyncio.TimeoutError) as e:
                if not self.down_logged:
                    log.warning("master %s:%d unreachable: %s", self.host,
                                node.cfg.MASTER_PORT, e)
                    self.down_logged = True
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            try:  # prove AUTH_CODE and check the other master's proof (proto/auth.py)
                await handshake.authenticate(conn, node.master.key, "master", timeout=2.0)
            except (handshake.AuthError, OSError, asyncio.TimeoutError,
                    rpc.ConnectionClosed) as e:
                conn.close()
                if not self.down_logged:
                    log.error("master %s:%d: %s", self.host, node.cfg.MASTER_PORT, e)
                    self.down_logged = True
                await asyncio.sleep(RECONNECT_MAX_S)
                continue
            delay = RECONNECT_MIN_S
            conn.send(m.MasterHello(node.cluster, node.ident, node.addr,
                                    node.cfg.MATOCL_LISTEN_PORT))
            self.conn = conn
            log.info("connected to master %s:%d", self.host, node.cfg.MASTER_PORT)
            self.down_logged = False
            try:
                await conn.closed
            finally:
                self.conn = None
            log.warning("connection to master %s closed", self.host)

    def send(self, msg: m.Msg, data=None) -> bool:
        conn = self.conn
        if conn is None or not conn.is_open:
            return False
        conn.send(msg, data)
        return True

    def stop(self) -> None:
        self.task.cancel()
        if self.conn is not None:
            self.conn.close()


class Incoming:
    """What a master's connection to us told us: who it is."""

    def __init__(self, hello: m.MasterHello):
        self.hello = hello
        self.seen_at = time.monotonic()


class PeerLinks:
    def __init__(self, node):
        self.node = node
        self.out: dict[str, _Outgoing] = {}
        self.hellos: dict[str, m.MasterHello] = {}  # host -> its latest hello
        self.incoming: dict[str, rpc.Connection] = {}
        self._receiving: tuple[int, int, int] | None = None  # (version, total, fd)
        self._received = 0
        self._progress_at = 0.0

    # ------------------------------------------------------------ outgoing

    def set_hosts(self, hosts: list[str]) -> None:
        for host in hosts:
            if host not in self.out:
                self.out[host] = _Outgoing(self, host)
        for host in [h for h in self.out if h not in hosts]:
            log.info("master %s left the DNS records", host)
            self.out.pop(host).stop()

    def stop(self) -> None:
        for link in self.out.values():
            link.stop()
        self.out.clear()

    def send(self, host: str, body: bytes) -> None:
        link = self.out.get(host)
        if link is not None and not link.streaming:
            link.send(m.Consensus(self.node.cluster, body))

    def install(self, host: str, version: int, body: bytes) -> None:
        """Stream checkpoint `version` to `host`, then the InstallSnapshot (`body`)."""
        link = self.out.get(host)
        if link is None or link.streaming or link.conn is None:
            return
        link.streaming = True
        asyncio.get_running_loop().create_task(self._stream(link, version, body))

    async def _stream(self, link: _Outgoing, version: int, body: bytes) -> None:
        path = os.path.join(self.node.cfg.DATA_PATH, ckpt.checkpoint_name(version))
        conn = link.conn
        try:
            with open(path, "rb") as f:
                total = os.fstat(f.fileno()).st_size
                log.info("sending checkpoint of metadata version %d (%d bytes) to master %s",
                         version, total, link.host)
                offset = 0
                while offset < total:
                    piece = f.read(PIECE)
                    conn.send(m.SnapshotChunk(version, offset, total), piece)
                    offset += len(piece)
                    await conn.drain()
            conn.send(m.Consensus(self.node.cluster, body))
            log.info("checkpoint of metadata version %d sent to master %s", version,
                     link.host)
        except (OSError, rpc.ConnectionClosed) as e:
            log.warning("sending checkpoint %d to master %s failed: %s", version, link.host, e)
        finally:
            link.streaming = False

    # ------------------------------------------------------------ incoming

    def on_hello(self, conn: rpc.Connection, hello: m.MasterHello) -> None:
        node = self.node
        if hello.ident == node.ident:
            conn.protocol_error(ValueError("a master connected to itself"))
            return
        if not node.adopt_cluster(hello.cluster, f"master {hello.host}"):
            log.error("refusing master %s (%s): it belongs to cluster %s, this master to "
                      "cluster %s", hello.host, hello.ident, hello.cluster, node.cluster)
            conn.close()
            return
        conn.context = Incoming(hello)
        old = self.incoming.get(hello.host)
        if old is not None and old is not conn:
            old.close()
        self.incoming[hello.host] = conn
        self.hellos[hello.host] = hello
        node.peers_changed()

    def on_message(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        node = self.node
        if isinstance(msg, m.Consensus):
            if not node.adopt_cluster(msg.cluster, f"master {conn.context.hello.host}"):
                return
            try:
                body = wire.decode(msg.body)
            except wire.DecodeError as e:
                conn.protocol_error(e)
                return
            if isinstance(body, InstallSnapshot) and not self._finish_receiving(body):
                return
            node.from_master(body)
        elif isinstance(msg, m.SnapshotChunk):
            self._receive_piece(msg, data)
        elif isinstance(msg, m.MasterHello):
            self.on_hello(conn, msg)
        else:
            conn.protocol_error(ValueError(f"unexpected {type(msg).__name__} from a master"))

    def on_close(self, conn: rpc.Connection) -> None:
        ctx = conn.context
        if isinstance(ctx, Incoming) and self.incoming.get(ctx.hello.host) is conn:
            del self.incoming[ctx.hello.host]

    # ------------------------------------------------------------ receiving a checkpoint

    def _part_path(self, version: int) -> str:
        return os.path.join(self.node.cfg.DATA_PATH, ckpt.checkpoint_name(version) + ".part")

    def _receive_piece(self, msg: m.SnapshotChunk, data) -> None:
        if msg.offset == 0:
            self._abort_receiving()
            fd = os.open(self._part_path(msg.version), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o644)
            self._receiving = (msg.version, msg.total, fd)
            self._received = 0
            log.info("receiving the leader's checkpoint of metadata version %d (%d bytes)",
                     msg.version, msg.total)
        if self._receiving is None or self._receiving[0] != msg.version \
                or msg.offset != self._received:
            self._abort_receiving()
            return
        fd = self._receiving[2]
        view = memoryview(data) if data is not None else memoryview(b"")
        while view:
            view = view[os.write(fd, view):]
        self._received += len(data) if data is not None else 0
        now = time.monotonic()
        if now - self._progress_at >= 2.0:
            self._progress_at = now
            log.info("checkpoint %d: %d of %d bytes (%.0f%%)", msg.version, self._received,
                     msg.total, 100.0 * self._received / max(1, msg.total))

    def _abort_receiving(self) -> None:
        if self._receiving is not None:
            version, _, fd = self._receiving
            os.close(fd)
            try:
                os.unlink(self._part_path(version))
            except OSError:
                pass
            self._receiving = None

    def _finish_receiving(self, install) -> bool:
        """The checkpoint the InstallSnapshot names is whole on disk (fsynced, under its
        own name): True, the core may install it."""
        version = install.last[1]
        final = os.path.join(self.node.cfg.DATA_PATH, ckpt.checkpoint_name(version))
        if self._receiving is None:
            return os.path.exists(final)
        got, total, fd = self._receiving
        if got != version or self._received != total:
            self._abort_receiving()
            return False
        os.fsync(fd)
        os.close(fd)
        self._receiving = None
        os.rename(self._part_path(version), final)
        log.info("checkpoint of metadata version %d received (%d bytes)", version, total)
        return True

    # ------------------------------------------------------------ what we know of them

    def client_port(self, host: str) -> int:
        hello = self.hellos.get(host)
        return hello.client_port if hello else self.node.cfg.MATOCL_LISTEN_PORT

    def ident_of(self, host: str) -> str | None:
        hello = self.hellos.get(host)
        return hello.ident if hello else None

    def all_fresh(self, hosts: list[str]) -> bool:
        """Every one of `hosts` said hello and belongs to no cluster."""
        return all(h in self.hellos and not self.hellos[h].cluster for h in hosts)

    def info(self, host: str) -> dict:
        hello = self.hellos.get(host)
        link = self.out.get(host)
        return {"ident": hello.ident if hello else "",
                "cluster": hello.cluster if hello else "",
                "connected": link is not None and link.conn is not None
                and link.conn.is_open and host in self.incoming}
