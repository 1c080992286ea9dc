"""The chunkserver port (MooseFS's `matocsserv`): registration and reports.

A chunkserver registers with its chunk list; later reports (chunks made, damaged, on
disks marked for removal, lost) keep the `ChunkRegistry` true.

With HA every chunkserver registers with every master, so a follower's registry is warm
when it takes over, and its voter talks to each master over the same connection
(`Consensus` frames). Only the leader acts on what it learns (deletes orphans, commands);
a follower also keeps copies of chunks its metadata does not know yet (it may lag).
The same port takes the other masters' links: their first message is `MasterHello`.
"""

from __future__ import annotations

import errno
import logging
import time

from ..proto import messages as m
from ..proto import rpc
from .part import MasterPart
from .peer_port import Incoming as _PEER_CONTEXT

log = logging.getLogger("mfsmaster")

# A registered chunkserver sends CsSpace every second: a link silent for longer than
# this is taken for dead when another connection registers the same id.
LINK_ALIVE_S = 5.0


class ChunkserverPort(MasterPart):
    def __init__(self, master):
        super().__init__(master)
        self._voter_of: dict[rpc.Connection, str] = {}
        self._heard_at: dict[rpc.Connection, float] = {}  # registered link -> last message

    def on_chunkserver(self, conn: rpc.Connection, msg: m.Msg, data) -> None:
        if not conn.authenticated and not self.master.acceptor.admit(conn, msg):
            return  # the handshake, or refused (proto/handshake.py)
        ha = self.master.ha
        if ha is not None and isinstance(conn.context, _PEER_CONTEXT):
            ha.peers.on_message(conn, msg, data)
            return
        if isinstance(msg, m.CsRegister):
            self.register_chunkserver(conn, msg)
            return
        if isinstance(msg, m.MasterHello) and ha is not None and conn.context is None:
            ha.peers.on_hello(conn, msg)
            return
        cs_id = conn.context
        if cs_id is None:
            conn.protocol_error(ValueError(f"{type(msg).__name__} before registration"))
            return
        self._heard_at[conn] = time.monotonic()
        if isinstance(msg, m.CsSpace):  # the common case first
            self.registry.space(cs_id, msg.total_bytes, msg.used_bytes, msg.chunk_count)
            server = self.registry.servers.get(cs_id)
            if server is not None:
                server.disks = msg.disks
        elif isinstance(msg, m.CsWriteDone):
            self.master.chunks.write_done(cs_id, msg.chunk_id, msg.version)
        elif isinstance(msg, m.Consensus) and ha is not None:
            ha.from_voter(msg)
        elif isinstance(msg, m.CsChunkMade):
            if msg.chunk_id in self.ns.chunks or not self.master.leading:
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
        elif isinstance(msg, m.CsChunkDeleted):
            copy = self.registry.holders(msg.chunk_id).get(cs_id)
            if copy is not None and copy.version == msg.version:
                self.registry.drop_copy(msg.chunk_id, cs_id)
        elif isinstance(msg, m.CsChunksLost):
            server = self.registry.servers.get(cs_id)
            log.warning("chunkserver %s lost %d copies (disk taken out)",
                        server.name if server else cs_id.hex(), len(msg.chunks))
            if server is not None:
                server.errors += len(msg.chunks)
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
        ha = self.master.ha
        if ha is not None:
            if not msg.voter:
                conn.send(m.Error(msg.req, errno.EINVAL, "this master runs HA: the chunkserver "
                                                         "must vote (upgrade it)"))
                return
            if not ha.adopt_cluster(msg.cluster, f"chunkserver {msg.host}"):
                log.error("refusing chunkserver %s:%d: it belongs to cluster %s, this master "
                          "to cluster %s", msg.host, msg.port, msg.cluster, ha.cluster)
                conn.send(m.Error(msg.req, errno.EPERM, f"this master belongs to cluster "
                                                        f"{ha.cluster}, not {msg.cluster}"))
                return
        old = self.registry.servers.get(msg.cs_id)
        if old is not None and old.link is not None and old.link is not conn:
            heard = self._heard_at.get(old.link, 0.0)
            if old.link.is_open and time.monotonic() - heard < LINK_ALIVE_S:
                # An id belongs to the connection that registered it while that one lives
                # (a chunkserver that restarted finds its old link closed, or silent).
                peer = conn.peer[0] if conn.peer else "?"
                log.warning("refusing registration from %s as %s:%d: chunkserver id %s "
                            "is registered by %s, which is still connected", peer,
                            msg.host, msg.port, msg.cs_id.hex(), old.name)
                conn.send(m.Error(msg.req, errno.EEXIST, f"chunkserver id {msg.cs_id.hex()} "
                                  f"is in use by a connected chunkserver ({old.name})"))
                conn.close()
                return
            old.link.context = None
            old.link.close()
        server = self.registry.register(msg.cs_id, (msg.host, msg.port), msg.chunks,
                                        msg.total_bytes, msg.used_bytes, conn, msg.version)
        conn.context = msg.cs_id
        self._heard_at[conn] = time.monotonic()
        if ha is not None:
            conn.send(m.CsRegistered(msg.req, ha.cluster, ha.ident, self.cfg.LEADER_LEASE_DURATION))
            ha.voter_connected(msg.voter, msg.cluster or ha.cluster, conn)
        else:
            conn.send(m.CsRegistered(msg.req))
        orphans, stale = [], 0
        for chunk_id, version in msg.chunks:
            chunk = self.ns.chunks.get(chunk_id)
            if chunk is None:
                orphans.append((chunk_id, version))
                if self.master.leading:
                    self.registry.drop_copy(chunk_id, msg.cs_id)
            elif version != chunk.version:
                stale += 1
        log.info("chunkserver %s registered (id %s, %d chunks, %d stale, %d unknown)",
                 server.name, msg.cs_id.hex(), len(msg.chunks), stale, len(orphans))
        if orphans and self.master.leading:
            self.spawn(self._delete_orphans(server, orphans))
        if self.master.leading:
            self.master.know_chunkservers()
        self._voter_of[conn] = msg.voter

    async def _delete_orphans(self, server, orphans: list[tuple[int, int]]) -> None:
        """Delete copies of chunks the metadata does not know (their file is gone)."""
        for chunk_id, version in orphans:
            if chunk_id in self.ns.chunks:  # created meanwhile
                continue
            await self.master.chunks.command_all([server], lambda s: m.DeleteChunk(chunk_id, version))

    def on_chunkserver_close(self, conn: rpc.Connection) -> None:
        self._heard_at.pop(conn, None)
        ha = self.master.ha
        if ha is not None:
            if isinstance(conn.context, _PEER_CONTEXT):
                ha.peers.on_close(conn)
                return
            voter = self._voter_of.pop(conn, None)
            if voter:
                ha.voter_gone(voter, conn)
        cs_id = conn.context
        if cs_id is not None:
            server = self.registry.servers.get(cs_id)
            if server is not None and server.link is conn:
                log.warning("chunkserver %s disconnected", server.name)
                self.registry.disconnect(cs_id, time.monotonic())
