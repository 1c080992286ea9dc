"""Message schemas of every ElkFS port.

Each message is a frozen msgspec Struct encoded as a msgpack array (compact and fast to
decode, and msgspec rejects anything that does not match the schema). A frame's `type`
field selects the schema; `MESSAGES` maps type numbers to classes.

Requests carry `req`, a per-connection request id that the reply echoes, so one connection
can carry many requests at once (FUSE issues them concurrently).

Ports:
- 9421 client -> master: `RegisterSession`, `MetaRequest` (every file-system operation,
  an `Op` below) -> `MetaReply`.
- 9420 chunkserver -> master: `CsRegister`, `CsSpace`, `CsChunkDamaged`, `CsChunkMade`;
  the master sends
  `CsCommand` on the same connection and the chunkserver answers `Ok`/`Error`.
- 9422 client -> chunkserver, chunkserver -> chunkserver: `ReadReq` -> `ReadData` (+ raw
  data), and the write session `WriteInit`, `WriteData` (+ raw data) -> `WriteStatus`,
  `WriteEnd`.
"""

from __future__ import annotations

from typing import Union

import msgspec

Addr = tuple[str, int]


class Msg(msgspec.Struct, array_like=True, frozen=True):
    TYPE = 0  # overridden; class attribute, not a field


MESSAGES: dict[int, type[Msg]] = {}


def message(type_id: int):
    def register(cls: type[Msg]) -> type[Msg]:
        assert type_id not in MESSAGES, f"duplicate message type {type_id}"
        cls.TYPE = type_id
        MESSAGES[type_id] = cls
        return cls

    return register


# ---------------------------------------------------------------- generic replies


@message(1)
class Ok(Msg):
    req: int


@message(2)
class Error(Msg):
    req: int
    status: int
    detail: str = ""


# ---------------------------------------------------------------- file attributes


class Attr(msgspec.Struct, array_like=True, frozen=True):
    """What stat() shows. `mode` includes the file type bits (S_IFREG, S_IFDIR, ...)."""

    inode: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    size: int
    rdev: int
    goal: int
    trashtime: int = 0  # seconds an unlinked file stays in the trash
    has_xattrs: bool = False  # lets a mount answer "no such attribute" without asking
    acl: bytes = b""  # the access ACL (system.posix_acl_access), checked with the mode
    blocks: int = -1  # 512-byte blocks the data may take (-1: from the size)


class DirEntry(msgspec.Struct, array_like=True, frozen=True):
    name: bytes
    attr: Attr


class ChunkCopy(msgspec.Struct, array_like=True, frozen=True):
    addr: Addr
    version: int
    valid: bool


class ChunkDesc(msgspec.Struct, array_like=True, frozen=True):
    index: int
    chunk_id: int
    version: int
    copies: list[ChunkCopy]


# ---------------------------------------------------------------- file-system operations
# Every operation a client asks of the master. Ops that change metadata are journaled as
# they are (with the master's time and the client's session and sequence number), so
# replaying the journal re-runs exactly these ops.


class Op(msgspec.Struct, array_like=True, frozen=True, tag_field="op"):
    READ_ONLY = False


# Read-only ops


class Lookup(Op, tag="lookup"):
    READ_ONLY = True
    parent: int
    name: bytes


class GetAttr(Op, tag="getattr"):
    READ_ONLY = True
    inode: int


class ReadDir(Op, tag="readdir"):
    """Entries after the first `offset` ones, at most `limit`, each with its attributes.

    `renew`: the session still keeps the names of a complete listing of the directory
    (expired): if no other session changed the directory since it got it (the master
    still holds its grant: a change by anyone else recalls or drops it), the master
    renews the grant and answers `DirOut([], -1, renewed=True)`; else the listing."""

    READ_ONLY = True
    inode: int
    offset: int = 0
    limit: int = 1000
    renew: bool = False


class ReadLink(Op, tag="readlink"):
    READ_ONLY = True
    inode: int


class GetXattr(Op, tag="getxattr"):
    READ_ONLY = True
    inode: int
    name: bytes


class ListXattr(Op, tag="listxattr"):
    READ_ONLY = True
    inode: int


class StatFs(Op, tag="statfs"):
    READ_ONLY = True


class ReadChunk(Op, tag="readchunk"):
    """Where to read chunk `index` of a file: its id, version and the valid copies."""

    READ_ONLY = True
    inode: int
    index: int


class FileChunks(Op, tag="filechunks"):
    """Every chunk of a file with all its copies (for mfsfileinfo / mfscheckfile)."""

    READ_ONLY = True
    inode: int


class DirStats(Op, tag="dirstats"):
    """Totals of a subtree (for mfsdirinfo)."""

    READ_ONLY = True
    inode: int


class ClusterInfo(Op, tag="clusterinfo"):
    """Summary, chunkservers and masters (for mfscli)."""

    READ_ONLY = True


class ListTrash(Op, tag="listtrash"):
    """Files in the trash (unlinked, kept for their trash time), `limit` after `offset`."""

    READ_ONLY = True
    offset: int = 0
    limit: int = 1000


# Ops that change metadata


class Mknod(Op, tag="mknod"):
    """Regular files, FIFOs, sockets and devices. `mode` includes the S_IF* type bits.
    `acquire`: the creator opens the new file at once (as `Acquire`, in the same step)."""

    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    rdev: int = 0
    acquire: bool = False
    # Applied by the master unless the directory has a default ACL (which replaces it);
    # 0 from clients that applied it themselves.
    umask: int = 0


class Mkdir(Op, tag="mkdir"):
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    umask: int = 0


class Symlink(Op, tag="symlink"):
    parent: int
    name: bytes
    target: bytes
    uid: int
    gid: int


class Link(Op, tag="link"):
    inode: int
    parent: int
    name: bytes


class Unlink(Op, tag="unlink"):
    parent: int
    name: bytes


class Rmdir(Op, tag="rmdir"):
    parent: int
    name: bytes


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Rename(Op, tag="rename"):
    parent: int
    name: bytes
    new_parent: int
    new_name: bytes
    flags: int = 0


# SetAttr.valid bits
SET_MODE = 1
SET_UID = 2
SET_GID = 4
SET_ATIME = 8
SET_MTIME = 16
SET_ATIME_NOW = 32
SET_MTIME_NOW = 64
SET_CTIME = 128


class SetAttr(Op, tag="setattr"):
    """Change the attributes whose bit is in `valid`; *_NOW bits use the master's clock."""

    inode: int
    valid: int
    mode: int = 0
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0


class Truncate(Op, tag="truncate"):
    inode: int
    length: int


XATTR_CREATE = 1
XATTR_REPLACE = 2


class SetXattr(Op, tag="setxattr"):
    inode: int
    name: bytes
    value: bytes
    flags: int = 0


class RemoveXattr(Op, tag="removexattr"):
    inode: int
    name: bytes


class SetGoal(Op, tag="setgoal"):
    inode: int
    goal: int
    recursive: bool = False


class SetTrashTime(Op, tag="settrashtime"):
    """Seconds an unlinked file is kept in the trash (0: freed at once); inherited by new
    entries of a directory like the goal."""

    inode: int
    trashtime: int
    recursive: bool = False


class Snapshot(Op, tag="snapshot"):
    """Lazy copy of a file or a whole tree to `dst_parent`/`dst_name` in one step: the
    copies share chunks (copy-on-write on the next write to either side)."""

    inode: int
    dst_parent: int
    dst_name: bytes
    uid: int = 0
    gid: int = 0


class Undelete(Op, tag="undelete"):
    """Move a file from the trash back to its path (missing directories are made)."""

    inode: int


class PurgeTrash(Op, tag="purgetrash"):
    """Free these trash files now (an expired trash file, or a user's purge). Inodes that
    are not in the trash (any more) are skipped."""

    inodes: list[int]


class Acquire(Op, tag="acquire"):
    """The session opened the file: keep it alive while open, even when unlinked.

    `answer` (not metadata: replaying the record ignores it) asks for what an open
    needs, in the same trip: ACQUIRE_ATTR the file's attributes (`OpenOut`), and
    ACQUIRE_CHUNK also where its first chunk is (as `ReadChunk` would say), both as they
    are when the answer leaves, after the open is durable."""

    inode: int
    answer: int = 0


ACQUIRE_ATTR = 1
ACQUIRE_CHUNK = 2


class Release(Op, tag="release"):
    inode: int


class ReleaseMany(Op, tag="releasemany"):
    """Several closes at once (a mount batches them); inodes not open are skipped."""

    inodes: list[int]


class WriteChunk(Op, tag="writechunk"):
    """Open chunk `index` of a file for writing: creates it or raises its version, and
    locks it for this writer until `WriteChunkEnd`. Replies with the chain to write to."""

    inode: int
    index: int


class WriteChunkEnd(Op, tag="writechunkend"):
    """The write to a chunk is done; the file is at least `length` bytes long now.
    `ok` False: the session failed or was given up (the copies it made are not kept)."""

    inode: int
    index: int
    chunk_id: int
    length: int
    ok: bool = True


class SetLock(Op, tag="setlock"):
    """Take or give up a lock (`elkfs/master/filelocks.py`): `owner` is the kernel's lock
    owner within the session, `kind` LOCK_POSIX (byte range, also OFD) or LOCK_FLOCK,
    `type` F_RDLCK/F_WRLCK/F_UNLCK, [start, end] inclusive. A conflict is EAGAIN, unless
    `wait` (the client's id for this wait) is set: then the answer is `LockOut(queued)`
    and the master sends `LockWake([wait])` when a lock on the file goes; the client then
    asks again."""

    inode: int
    owner: int
    kind: int
    type: int
    start: int
    end: int
    pid: int = 0
    wait: int = 0


class ReleaseLocks(Op, tag="releaselocks"):
    """Drop every lock of (session, `owner`) on a file: a close (POSIX locks go with any
    close of the file by their process; flock and OFD locks with their open file)."""

    inode: int
    owner: int


class GetLock(Op, tag="getlock"):
    """F_GETLK: the lock that keeps `owner` from taking `type` on [start, end], if any."""

    READ_ONLY = True
    inode: int
    owner: int
    kind: int
    type: int
    start: int
    end: int


class AppendReserve(Op, tag="appendreserve"):
    """Atomic O_APPEND: the file grows by `length` bytes at once and the answer says
    where they go (`AppendOut.offset`, the old end). Appends from every client get
    ranges of their own; the writer then writes its data there."""

    inode: int
    length: int


class EndSession(Op, tag="endsession"):
    """The client is done: close its session now (its open files are released) instead
    of keeping it for SESSION_SUSTAIN_TIME."""


AnyOp = Union[
    Lookup, GetAttr, ReadDir, ReadLink, GetXattr, ListXattr, StatFs, ReadChunk, FileChunks,
    DirStats, ClusterInfo, ListTrash,
    Mknod, Mkdir, Symlink, Link, Unlink, Rmdir, Rename, SetAttr, Truncate, SetXattr,
    RemoveXattr, SetGoal, Acquire, Release, ReleaseMany, WriteChunk, WriteChunkEnd,
    SetTrashTime, Snapshot, Undelete, PurgeTrash, EndSession, SetLock, ReleaseLocks, GetLock,
    AppendReserve,
]


# ---------------------------------------------------------------- operation results


class Result(msgspec.Struct, array_like=True, frozen=True, tag_field="r"):
    pass


class EntryOut(Result, tag="entry"):
    """The entry's attributes; for a change that added a name, also the directory's
    (its new mtime/ctime/nlink), so a mount can answer the kernel's next GETATTR of it."""

    attr: Attr
    parent: Attr | None = None


class ChangedOut(Result, tag="changed"):
    """Attributes, after the change, of every inode an unlink/rmdir/rename touched that
    still exists (the directories, a moved or unlinked file that still has names)."""

    attrs: list[Attr]


class AttrOut(Result, tag="attr"):
    attr: Attr


class OpenOut(Result, tag="open"):
    """The answer to an `Acquire` that asked for one."""

    attr: Attr
    chunk: "ChunkOut | None" = None


class DirOut(Result, tag="dir"):
    entries: list[DirEntry]
    next_offset: int  # -1 when the listing is complete
    renewed: bool = False  # the answer to a `renew` that holds: the names kept are good


class BytesOut(Result, tag="bytes"):
    value: bytes


class NamesOut(Result, tag="names"):
    names: list[bytes]


class StatFsOut(Result, tag="statfs"):
    total_bytes: int
    avail_bytes: int
    used_bytes: int
    inodes: int


class ChunkOut(Result, tag="chunk"):
    """A chunk to read or write: `locations` are its valid copies, in chain order for a
    write. `chunk_id` 0 means a hole (read zeros). `file_length` is the file's length."""

    chunk_id: int
    version: int
    file_length: int
    locations: list[Addr]
    create: bool = False  # a new chunk: the write session makes it on each chunkserver


class FileChunksOut(Result, tag="filechunks"):
    chunks: list[ChunkDesc]


class DirStatsOut(Result, tag="dirstats"):
    inodes: int
    dirs: int
    files: int
    chunks: int
    length: int
    size: int
    realsize: int


class JsonOut(Result, tag="json"):
    """Free-form report (cluster info) as JSON text."""

    text: str


class TrashEntry(msgspec.Struct, array_like=True, frozen=True):
    inode: int
    path: bytes  # where the file was, from the root, without the leading slash
    expire_ns: int  # when it will be purged (master wall clock)
    attr: Attr


class TrashOut(Result, tag="trash"):
    entries: list[TrashEntry]
    next_offset: int  # -1 when the listing is complete


class LockOut(Result, tag="lock"):
    """A lock request's answer. SetLock: granted, or `queued` (a waiting request: wait
    for `LockWake`). GetLock: the conflicting lock (`type` F_UNLCK: none) and its
    holder's pid (on the holder's host)."""

    type: int
    start: int = 0
    end: int = 0
    pid: int = 0
    queued: bool = False


class AppendOut(Result, tag="append"):
    offset: int
    attr: Attr


AnyResult = Union[
    EntryOut, ChangedOut, AttrOut, DirOut, BytesOut, NamesOut, StatFsOut, ChunkOut, FileChunksOut,
    DirStatsOut, JsonOut, TrashOut, LockOut, AppendOut, OpenOut,
]


# ---------------------------------------------------------------- client <-> master


@message(10)
class RegisterSession(Msg):
    """Open a new session (`session` empty) or resume one after a reconnect."""

    req: int
    session: bytes
    info: str = ""
    # How long the client keeps a directory listing (ms); 0: it keeps none. The master
    # then tells it, and waits for its answer, before a change to a listed directory by
    # anyone else is acknowledged (`InvalidateListings`).
    listing_ttl_ms: int = 0


@message(11)
class SessionReply(Msg):
    req: int
    status: int
    session: bytes
    leader: str = ""  # when status is NOT_LEADER: "host:port" of the leader, if known


@message(12)
class MetaRequest(Msg):
    """One operation. `seq` numbers a session's changes so a retry applies once."""

    req: int
    session: bytes
    seq: int
    op: AnyOp


@message(13)
class MetaReply(Msg):
    req: int
    status: int
    result: AnyResult | None = None
    detail: str = ""


@message(14)
class InvalidateListings(Msg):
    """Master -> client: forget the listings of these directories (another session
    changed them). Answered with `Ok` once forgotten."""

    req: int
    dirs: list[int]


@message(15)
class LockWake(Msg):
    """Master -> client: a lock on a file these waits are for was given up; ask again.
    Not answered (a lost wake is covered by the client asking again now and then)."""

    waits: list[int]


@message(16)
class InvalidateInodes(Msg):
    """Master -> client: another session changed these files (size, data, attributes)
    while this one has them open: drop cached attributes and pages. Answered with `Ok`
    once dropped, so the change is acknowledged only after that."""

    req: int
    inodes: list[int]


# ---------------------------------------------------------------- chunkserver <-> master


@message(40)
class CsRegister(Msg):
    """First message of a chunkserver on the master port. `cs_id` is kept on its disk.
    With HA it registers with every master and its voter (`voter`, the uuid of its voter
    state) votes; `cluster` is the cluster it belongs to ("" before it joined one)."""

    req: int
    cs_id: bytes
    host: str
    port: int
    chunks: list[tuple[int, int]]  # (chunk_id, version)
    total_bytes: int
    used_bytes: int
    voter: str = ""
    cluster: str = ""
    version: str = ""  # the chunkserver's ElkFS version (shown on the web page)


@message(45)
class CsRegistered(Msg):
    """The answer to `CsRegister`: the master's cluster id ("" if it has none yet) and
    identity (`uuid.incarnation`, "" without HA)."""

    req: int
    cluster: str = ""
    master: str = ""
    lease_s: float = 0.0  # the masters' LEADER_LEASE_DURATION: the voter promises as long


class CsDisk(msgspec.Struct, array_like=True, frozen=True):
    """One chunk directory of a chunkserver, as the web page's disks view shows it."""

    path: str
    total_bytes: int
    used_bytes: int
    chunks: int
    errors: int  # I/O errors counted against it
    marked_for_removal: bool
    failed: bool  # taken out of use after too many I/O errors


@message(41)
class CsSpace(Msg):
    total_bytes: int
    used_bytes: int
    chunk_count: int
    disks: list[CsDisk] = []


@message(42)
class CsChunkDamaged(Msg):
    """A copy failed its CRC check (read or scrub) or its file is gone."""

    chunk_id: int
    version: int


@message(44)
class CsChunkMade(Msg):
    """A write session made this chunk (`WriteInit.create`): the master counts the copy
    (it learns of it even if the writer's WriteChunkEnd reaches another master)."""

    chunk_id: int
    version: int


@message(46)
class CsChunkDeleted(Msg):
    """A copy deleted on a master's command: every other master forgets it too."""

    chunk_id: int
    version: int


class CsCmd(msgspec.Struct, array_like=True, frozen=True, tag_field="cmd"):
    pass


class CreateChunk(CsCmd, tag="create"):
    chunk_id: int
    version: int


class DeleteChunk(CsCmd, tag="delete"):
    chunk_id: int
    version: int


class SetChunkVersion(CsCmd, tag="setversion"):
    chunk_id: int
    version: int
    new_version: int


class TruncateChunk(CsCmd, tag="truncate"):
    """Cut or extend the copy to `length` bytes (zeros past the old end), new version."""

    chunk_id: int
    version: int
    new_version: int
    length: int


class DuplicateChunk(CsCmd, tag="duplicate"):
    """Copy a local chunk to a new id (copy-on-write after a snapshot)."""

    chunk_id: int
    version: int
    new_chunk_id: int
    new_version: int


class ReplicateChunk(CsCmd, tag="replicate"):
    """Fetch a copy of the chunk from one of `sources` (other chunkservers)."""

    chunk_id: int
    version: int
    sources: list[Addr]


AnyCsCmd = Union[CreateChunk, DeleteChunk, SetChunkVersion, TruncateChunk, DuplicateChunk,
                 ReplicateChunk]


@message(43)
class CsCommand(Msg):
    req: int
    command: AnyCsCmd
    term: int = 0  # the leader's term (HA): a chunkserver refuses terms below its highest


# ---------------------------------------------------------------- HA (MASTER_PORT, 9420)


@message(100)
class MasterHello(Msg):
    """First message of a master on another master's MASTER_PORT (the chunkserver port:
    the first message tells the two kinds apart). Each master sends on its own outgoing
    link; the answers come back on the other master's link."""

    cluster: str
    ident: str  # uuid.incarnation
    host: str  # the address it is known by (its A record)
    client_port: int


@message(101)
class Consensus(Msg):
    """One message of the HA protocol (`elkfs.consensus.messages`, msgpack in `body`),
    master to master or master to a chunkserver's voter. `cluster` keeps two clusters on
    one network apart."""

    cluster: str
    body: bytes


@message(102)
class SnapshotChunk(Msg):
    """Leader -> follower: a piece of the checkpoint (`metadata.<version>.elk`) the
    follower installs to catch up (+ the raw bytes); the `InstallSnapshot` follows the
    last piece."""

    version: int
    offset: int
    total: int


@message(103)
class MasterStatus(Msg):
    """Any master, leader or follower, answers with its view of the cluster (a
    `MetaReply` holding `JsonOut`); no session needed."""

    req: int


@message(105)
class Ping(Msg):
    """Client -> master: are you there? Answered `Ok` by any master at once; a client
    waiting on a request uses it to notice a master that stopped answering."""

    req: int


@message(104)
class MasterAdmin(Msg):
    """An operator's command to the leader (`mfscli`): "step-down" [target address];
    answered with `MetaReply(JsonOut)` or `Error` (NOT_LEADER names the leader)."""

    req: int
    command: str
    target: str = ""


@message(90)
class CsMarkedChunks(Msg):
    """The chunks this chunkserver keeps on disks marked for removal (`*` in mfshdd.cfg):
    the whole list, sent after registering and whenever the marks change. The master
    copies them elsewhere and then reports the disks as removable."""

    chunk_ids: list[int]


@message(91)
class CsChunksLost(Msg):
    """Copies this chunkserver no longer has (a failing disk was taken out of use)."""

    chunks: list[tuple[int, int]]  # (chunk_id, version)


# ---------------------------------------------------------------- data port (9422)


@message(60)
class ReadReq(Msg):
    req: int
    chunk_id: int
    version: int
    offset: int
    size: int


@message(61)
class ReadData(Msg):
    """Reply to `ReadReq`; the bytes follow as the frame's data part."""

    req: int
    status: int


@message(62)
class WriteInit(Msg):
    """Start a write session on this connection; `chain` lists the chunkservers after
    this one, which the data is forwarded to. With `create`, each chunkserver of the
    chain makes the chunk first (the master hands out a new chunk without asking the
    chunkservers to make it: one round trip less for every new chunk)."""

    req: int
    chunk_id: int
    version: int
    chain: list[Addr]
    create: bool = False  # make the chunk (empty, this version) where it does not exist


@message(63)
class WriteData(Msg):
    """Write the frame's data part at `offset` within the chunk."""

    req: int
    offset: int


@message(64)
class WriteStatus(Msg):
    req: int
    status: int


@message(65)
class WriteEnd(Msg):
    """End the write session; with `sync` the data is fsynced on every copy first."""

    req: int
    sync: bool = False


@message(68)
class WriteOnce(Msg):
    """A whole write session in one message: WriteInit, one WriteData (the frame's data
    part, at `offset`) and WriteEnd. Passed down the chain the same way; answered `Ok`
    once every copy has it, or the first `Error`. A small file's write costs each
    chunkserver one message and one task instead of three of each."""

    req: int
    chunk_id: int
    version: int
    chain: list[Addr]
    offset: int
    create: bool = False
    sync: bool = False


@message(66)
class ChunkInfoReq(Msg):
    req: int
    chunk_id: int


@message(67)
class ChunkInfoReply(Msg):
    req: int
    status: int
    version: int
    length: int


# ---------------------------------------------------------------- codecs

_encoder = msgspec.msgpack.Encoder()
DECODERS: dict[int, msgspec.msgpack.Decoder] = {
    type_id: msgspec.msgpack.Decoder(cls) for type_id, cls in MESSAGES.items()
}
OP_DECODER = msgspec.msgpack.Decoder(AnyOp)


def encode(msg: Msg) -> bytes:
    return _encoder.encode(msg)


def encode_any(obj) -> bytes:
    return _encoder.encode(obj)
