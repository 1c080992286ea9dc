"""The chunkserver's links to the masters (MooseFS's `csmaster`), one per address.

MASTER_HOST is resolved every DNS_REFRESH_TIME seconds (`MasterDirectory`) and the
chunkserver keeps one link to every address: connect, `CsRegister` with the full chunk
list, then `CsSpace` every second; reconnect with backoff forever. Every master keeps its
chunk registry from these (with HA a follower is ready the moment it leads), and every
report (chunk made, damaged, lost, marked) goes to every registered master.

Over each link the master also talks to this chunkserver's voter (`Consensus` frames)
and sends commands; a command carries the leader's term and is refused when the voter's
fence has seen a higher one.
"""

from __future__ import annotations

import asyncio
import errno
import logging

from elkfs import __version__ as ELKFS_VERSION
from elkfs.discovery import MasterDirectory
from elkfs.proto import handshake
from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.errors import NOT_LEADER, FsError

log = logging.getLogger("elkfs.chunkserver")

SPACE_INTERVAL = 1.0
MAX_RECONNECT_DELAY = 5.0


class MasterLinks:
    def __init__(self, cs, host: str, port: int, dns_server: str | None, refresh_s: float,
                 reconnect_delay: float, timeout: float):
        self.cs = cs
        self.port = port
        self.reconnect_delay = reconnect_delay
        self.timeout = timeout
        self.directory = MasterDirectory(host, dns_server, refresh_s, start_timeout_s=None)
        self.tasks: dict[str, asyncio.Task] = {}
        self.registered: dict[str, rpc.Connection] = {}  # address -> registered link
        self.registering = 0  # registrations in flight (see ChunkServer.report_made)
        self._start_task: asyncio.Task | None = None

    # ------------------------------------------------------------ life cycle

    def start(self) -> None:
        self.directory.on_change(lambda added, removed, all_: self._follow(all_))
        self._start_task = asyncio.get_running_loop().create_task(self.directory.start())

    def _follow(self, addresses) -> None:
        for addr in addresses:
            if addr not in self.tasks:
                self.tasks[addr] = asyncio.get_running_loop().create_task(self._link(addr))
        for addr in [a for a in self.tasks if a not in addresses]:
            log.info("master %s left the DNS records", addr)
            self.tasks.pop(addr).cancel()

    def stop(self) -> None:
        if self._start_task is not None:
            self._start_task.cancel()
        self.directory.stop()
        for task in self.tasks.values():
            task.cancel()
        for conn in self.registered.values():
            conn.close()

    # ------------------------------------------------------------ sending to all

    def send_all(self, msg: m.Msg) -> bool:
        """Send to every registered master; False if none is registered."""
        sent = False
        for conn in list(self.registered.values()):
            if conn.is_open:
                try:
                    conn.send(msg)
                    sent = True
                except rpc.ConnectionClosed:
                    pass
        return sent

    @property
    def any_registered(self) -> bool:
        return any(c.is_open for c in self.registered.values())

    # ------------------------------------------------------------ one master

    async def _link(self, addr: str) -> None:
        delay = self.reconnect_delay
        cs = self.cs
        while True:
            try:
                conn = await cs._connect(addr, self.port, self._on_master, "master",
                                         timeout=self.timeout)
            except (OSError, asyncio.TimeoutError) as e:
                log.debug("master %s:%d: %s", addr, self.port, e)
            else:
                try:
                    if await self._register(conn, addr):
                        delay = self.reconnect_delay
                        await self._session(conn)
                        log.warning("lost the master at %s:%d", addr, self.port)
                except (OSError, asyncio.TimeoutError, rpc.ConnectionClosed, FsError) as e:
                    log.warning("master %s:%d: %s", addr, self.port, e)
                finally:
                    if self.registered.get(addr) is conn:
                        del self.registered[addr]
                    conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(MAX_RECONNECT_DELAY, self.reconnect_delay))

    async def _register(self, conn: rpc.Connection, addr: str) -> bool:
        cs = self.cs
        voter = cs.voter
        try:  # both ways: we obey no master that cannot prove AUTH_CODE
            await handshake.authenticate(conn, cs.key, "chunkserver", self.timeout)
        except handshake.AuthError as e:
            log.error("master %s:%d: %s", addr, self.port, e)
            return False
        total, used = cs.store.space()
        host = cs.advertised_host(conn)
        self.registering += 1
        try:
            reply, _ = await conn.call(
                m.CsRegister, cs_id=cs.cs_id, host=host, port=cs.listen_port,
                chunks=cs.store.chunks(), total_bytes=total, used_bytes=used,
                voter=voter.uuid, cluster=voter.cluster, version=ELKFS_VERSION,
                timeout=self.timeout)
        except FsError as e:
            log.warning("master %s refused registration: %s", addr, e)
            return False
        finally:
            self.registering -= 1
        if isinstance(reply, m.CsRegistered) and reply.lease_s:
            voter.lease_at_least(reply.lease_s)
        if isinstance(reply, m.CsRegistered) and reply.cluster:
            if not voter.adopt_cluster(reply.cluster, f"master {addr}"):
                log.error("master %s belongs to cluster %s, this chunkserver to cluster %s: "
                          "not registering there", addr, reply.cluster, voter.cluster)
                return False
        conn.context = addr
        self.registered[addr] = conn
        log.info("registered with master %s:%d as %s:%d (%d chunks)", addr, self.port, host,
                 cs.listen_port, len(cs.store))
        cs.after_registration(conn)
        return True

    async def _session(self, conn: rpc.Connection) -> None:
        while conn.is_open:
            total, used = self.cs.store.space()
            disks = [m.CsDisk(*d) for d in self.cs.store.disk_report()]
            conn.send(m.CsSpace(total, used, len(self.cs.store), disks))
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), SPACE_INTERVAL)
            except asyncio.TimeoutError:
                pass

    def _on_master(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        if not conn.authenticated:  # no vote, lease or command for an unproven master
            log.warning("ignoring %s from %s: that master has not proven AUTH_CODE",
                        type(msg).__name__, conn.peer)
            if type(msg) is m.CsCommand:
                conn.send_if_open(m.Error(msg.req, errno.EPERM, "not authenticated"))
            return
        voter = self.cs.voter
        if type(msg) is m.Consensus:
            if msg.cluster and not voter.adopt_cluster(msg.cluster, f"master {conn.context}"):
                return
            voter.step(msg.body, lambda body: conn.send_if_open(m.Consensus(voter.cluster,
                                                                             body)))
        elif type(msg) is m.CsCommand:
            if not voter.admit_term(msg.term):
                conn.send(m.Error(msg.req, NOT_LEADER, f"term {msg.term} is below "
                                                       f"{voter.term}: not the leader"))
                return
            self.cs.take_command(conn, msg)
        else:
            log.warning("ignoring %s from the master", type(msg).__name__)
