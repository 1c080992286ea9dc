"""Which chunkserver holds which copy: the master's soft state about its chunkservers.

Nothing here is journaled: chunkservers report their chunks when they register, so this
table is rebuilt after every master start. A chunkserver that disconnects keeps its
copies here (not readable, but counted by the replication planner as "probably back
soon") until the planner gives up on it (`forget`, after REPLICATIONS_DELAY_DISCONNECT);
a returning chunkserver's copies are recounted from its registration. It is pure (no sockets): the master shell feeds
it registrations, reports and command outcomes, and asks it where copies are and where new
copies should go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..proto.layout import CHUNK_SIZE
from ..proto.messages import Addr


@dataclass
class ChunkServer:
    cs_id: bytes
    addr: Addr
    total_bytes: int = 0
    used_bytes: int = 0
    chunk_count: int = 0
    connected: bool = True
    disconnected_at: float = 0.0
    link: object = None  # the master shell's connection to it
    lost: bool = False  # disconnected for longer than the delay: its copies were forgotten
    marked_copies: int = 0  # copies on disks marked for removal
    version: str = ""  # its ElkFS version, as it registered
    errors: int = 0  # damaged or lost copies it reported since this master started
    disks: list = field(default_factory=list)  # its CsDisk reports (the web page)

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)

    @property
    def name(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"


@dataclass
class Copy:
    version: int
    valid: bool = True  # False once reported damaged
    marked: bool = False  # on a disk marked for removal: served, but to be copied away


class ChunkRegistry:
    def __init__(self):
        self.servers: dict[bytes, ChunkServer] = {}
        self.copies: dict[int, dict[bytes, Copy]] = {}  # chunk id -> cs id -> copy
        self.damaged_reports = 0
        self.mark_reports = 0  # CsMarkedChunks taken in: stats older than one are stale
        self._turn = 0

    # ------------------------------------------------------------ servers

    def register(self, cs_id: bytes, addr: Addr, chunks: list[tuple[int, int]],
                 total: int, used: int, link: object, version: str = "") -> ChunkServer:
        self.drop_server_copies(cs_id)
        old = self.servers.get(cs_id)
        server = ChunkServer(cs_id, addr, total, used, len(chunks), True, 0.0, link,
                             version=version, errors=old.errors if old else 0)
        self.servers[cs_id] = server
        for chunk_id, version in chunks:
            self.copies.setdefault(chunk_id, {})[cs_id] = Copy(version)
        return server

    def disconnect(self, cs_id: bytes, now: float) -> None:
        """The link dropped: its copies stay known (unreadable) until `forget`."""
        server = self.servers.get(cs_id)
        if server is not None:
            server.connected = False
            server.disconnected_at = now
            server.link = None

    def forget(self, cs_id: bytes) -> int:
        """Give up on a disconnected server: its copies count as lost. Returns how many."""
        server = self.servers.get(cs_id)
        if server is None or server.connected:
            return 0
        server.lost = True
        server.marked_copies = 0
        return self.drop_server_copies(cs_id)

    def set_marked(self, cs_id: bytes, chunk_ids) -> None:
        """The server's copies on disks marked for removal are exactly `chunk_ids`."""
        marked = set(chunk_ids)
        self.mark_reports += 1
        count = 0
        for chunk_id, holders in self.copies.items():
            copy = holders.get(cs_id)
            if copy is not None:
                copy.marked = chunk_id in marked
                count += copy.marked
        server = self.servers.get(cs_id)
        if server is not None:
            server.marked_copies = count

    def drop_server_copies(self, cs_id: bytes) -> int:
        dropped = [c for c, holders in self.copies.items() if cs_id in holders]
        for chunk_id in dropped:
            holders = self.copies[chunk_id]
            del holders[cs_id]
            if not holders:
                del self.copies[chunk_id]
        return len(dropped)

    def space(self, cs_id: bytes, total: int, used: int, chunk_count: int) -> None:
        server = self.servers.get(cs_id)
        if server is not None:
            server.total_bytes, server.used_bytes, server.chunk_count = total, used, chunk_count

    def connected(self) -> list[ChunkServer]:
        return [s for s in self.servers.values() if s.connected]

    def totals(self) -> tuple[int, int]:
        servers = self.connected()
        return sum(s.total_bytes for s in servers), sum(s.used_bytes for s in servers)

    # ------------------------------------------------------------ copies

    def set_copy(self, chunk_id: int, cs_id: bytes, version: int) -> None:
        """A good copy of `version` is on the server (it stays on the same disk, so a
        removal mark is kept)."""
        holders = self.copies.setdefault(chunk_id, {})
        old = holders.get(cs_id)
        holders[cs_id] = Copy(version, True, old is not None and old.marked)

    def drop_copy(self, chunk_id: int, cs_id: bytes) -> None:
        holders = self.copies.get(chunk_id)
        if holders and cs_id in holders:
            del holders[cs_id]
            if not holders:
                del self.copies[chunk_id]

    def mark_damaged(self, chunk_id: int, cs_id: bytes) -> None:
        copy = self.copies.get(chunk_id, {}).get(cs_id)
        if copy is not None:
            copy.valid = False
            self.damaged_reports += 1
        server = self.servers.get(cs_id)
        if server is not None:
            server.errors += 1

    def holders(self, chunk_id: int) -> dict[bytes, Copy]:
        return self.copies.get(chunk_id, {})

    def valid_servers(self, chunk_id: int, version: int) -> list[ChunkServer]:
        """Connected servers holding a good copy of exactly `version`."""
        out = []
        for cs_id, copy in self.copies.get(chunk_id, {}).items():
            server = self.servers.get(cs_id)
            if copy.valid and copy.version == version and server is not None and server.connected:
                out.append(server)
        return out

    def choose_servers(self, count: int, exclude: set[bytes] = frozenset()) -> list[ChunkServer]:
        """Up to `count` distinct servers for new copies, most free space first."""
        candidates = [s for s in self.connected()
                      if s.cs_id not in exclude and s.free_bytes > CHUNK_SIZE]
        if not candidates:
            return []
        candidates.sort(key=lambda s: (-s.free_bytes, s.cs_id))
        # Servers with nearly the most free space take turns, so consecutive chunks of a
        # file spread over all of them instead of piling onto the two emptiest.
        top = [s for s in candidates if s.free_bytes >= candidates[0].free_bytes * 0.8]
        self._turn = (self._turn + 1) % len(top)
        top = top[self._turn:] + top[:self._turn]
        rest = candidates[len(top):]
        return (top + rest)[:count]
