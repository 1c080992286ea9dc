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

from typing import Annotated, Union

import msgspec
from msgspec import Meta

from .layout import CHUNK_SIZE, MAX_CHUNKS, MAX_FILE_SIZE

Addr = tuple[str, int]

# Ranges of the numbers a client sends (`docs/security.md`, Input validation): a value
# out of range fails the decode, and the request is answered EINVAL.
U64 = Annotated[int, Meta(ge=0)]  # (msgpack holds no more than 2**64 - 1)
Req = U64
Inode = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
Id = Annotated[int, Meta(ge=0, le=(1 << 32) - 2)]  # a uid or gid ((uid_t)-1 means "none")
Mode = Annotated[int, Meta(ge=0, le=0o177777)]  # permission bits and the S_IF* type bits
Umask = Annotated[int, Meta(ge=0, le=0o777)]
Want = Annotated[int, Meta(ge=0, le=7)]  # R, W, X bits
TimeNs = Annotated[int, Meta(ge=-(1 << 62), le=1 << 62)]  # years 1823-2116, in ns
Offset = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]  # a byte offset (OFFSET_MAX: to the end)
Index = Annotated[int, Meta(ge=0, le=1 << 40)]  # a position in a listing
Limit = Annotated[int, Meta(ge=0, le=1 << 20)]
ChunkIndex = Annotated[int, Meta(ge=0, le=MAX_CHUNKS - 1)]
FileSize = Annotated[int, Meta(ge=0, le=MAX_FILE_SIZE)]
InChunk = Annotated[int, Meta(ge=0, le=CHUNK_SIZE)]  # an offset or size within a chunk
Small = Annotated[int, Meta(ge=0, le=255)]  # goals, flags, kinds
Seconds = Annotated[int, Meta(ge=0, le=(1 << 32) - 1)]
Pid = Annotated[int, Meta(ge=0, le=(1 << 32) - 1)]
Groups = Annotated[list[Id], Meta(max_length=65536)]  # NGROUPS_MAX


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
    parent: Inode
    name: bytes


class GetAttr(Op, tag="getattr"):
    READ_ONLY = True
    inode: Inode


class ReadDir(Op, tag="readdir"):
    """At most `limit` entries, each with its attributes, in the order of their names
    (bytes): those named after `after` when it is given (a page resumes after the last
    name of the previous one, which stays right however the directory changes meanwhile),
    else those after the first `offset` ones.

    `renew`: the session still keeps the names of a complete listing of the directory
    (expired): if no other session changed the directory since it got it (the master
    still holds its grant: a change by anyone else recalls or drops it), the master
    renews the grant and answers `DirOut([], -1, renewed=True)`; else the listing.

    `names_only`: the answer is a `DirNamesOut`, each entry's name, inode number and mode
    without the rest of its attributes: what a listing that only reads names needs (a
    plain FUSE READDIR), for a fraction of the master's work per entry."""

    READ_ONLY = True
    inode: Inode
    offset: Index = 0
    limit: Limit = 1000
    after: bytes = b""
    renew: bool = False
    names_only: bool = False


class ReadLink(Op, tag="readlink"):
    READ_ONLY = True
    inode: Inode


class GetXattr(Op, tag="getxattr"):
    READ_ONLY = True
    inode: Inode
    name: bytes


class ListXattr(Op, tag="listxattr"):
    READ_ONLY = True
    inode: Inode


class StatFs(Op, tag="statfs"):
    READ_ONLY = True


class ReadChunk(Op, tag="readchunk"):
    """Where to read chunk `index` of a file: its id, version and the valid copies."""

    READ_ONLY = True
    inode: Inode
    index: ChunkIndex


class BadCopy(Op, tag="badcopy"):
    """A client read a block of this copy that failed its CRC: the master has the
    chunkserver at `addr` check the copy itself (a client's word alone condemns no copy).
    Answered at once; changes no metadata."""

    READ_ONLY = True
    chunk_id: U64
    version: U64
    addr: Addr


class FileChunks(Op, tag="filechunks"):
    """Every chunk of a file with all its copies (for mfsfileinfo / mfscheckfile)."""

    READ_ONLY = True
    inode: Inode


class DirStats(Op, tag="dirstats"):
    """Totals of a subtree (for mfsdirinfo)."""

    READ_ONLY = True
    inode: Inode


class ClusterInfo(Op, tag="clusterinfo"):
    """Summary, chunkservers and masters (for mfscli)."""

    READ_ONLY = True


class ListTrash(Op, tag="listtrash"):
    """Files in the trash (unlinked, kept for their trash time), `limit` after `offset`."""

    READ_ONLY = True
    offset: Index = 0
    limit: Limit = 1000


# Ops that change metadata


class Mknod(Op, tag="mknod"):
    """Regular files, FIFOs, sockets and devices. `mode` includes the S_IF* type bits.
    `acquire`: the creator opens the new file at once (as `Acquire`, in the same step)."""

    parent: Inode
    name: bytes
    mode: Mode
    uid: Id
    gid: Id
    rdev: U64 = 0
    acquire: bool = False
    # Applied by the master unless the directory has a default ACL (which replaces it);
    # 0 from clients that applied it themselves.
    umask: Umask = 0


class Mkdir(Op, tag="mkdir"):
    parent: Inode
    name: bytes
    mode: Mode
    uid: Id
    gid: Id
    umask: Umask = 0


class Symlink(Op, tag="symlink"):
    parent: Inode
    name: bytes
    target: bytes
    uid: Id
    gid: Id


class Link(Op, tag="link"):
    inode: Inode
    parent: Inode
    name: bytes


class Unlink(Op, tag="unlink"):
    parent: Inode
    name: bytes


class Rmdir(Op, tag="rmdir"):
    parent: Inode
    name: bytes


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Rename(Op, tag="rename"):
    parent: Inode
    name: bytes
    new_parent: Inode
    new_name: bytes
    flags: Small = 0


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

    inode: Inode
    valid: Small
    mode: Mode = 0
    uid: Id = 0
    gid: Id = 0
    atime_ns: TimeNs = 0
    mtime_ns: TimeNs = 0
    ctime_ns: TimeNs = 0


class Truncate(Op, tag="truncate"):
    inode: Inode
    length: FileSize


XATTR_CREATE = 1
XATTR_REPLACE = 2


class SetXattr(Op, tag="setxattr"):
    inode: Inode
    name: bytes
    value: bytes
    flags: Small = 0


class RemoveXattr(Op, tag="removexattr"):
    inode: Inode
    name: bytes


class SetGoal(Op, tag="setgoal"):
    inode: Inode
    goal: Small
    recursive: bool = False


class SetTrashTime(Op, tag="settrashtime"):
    """Seconds an unlinked file is kept in the trash (0: freed at once); inherited by new
    entries of a directory like the goal."""

    inode: Inode
    trashtime: Seconds
    recursive: bool = False


class Snapshot(Op, tag="snapshot"):
    """Lazy copy of a file or a whole tree to `dst_parent`/`dst_name` in one step: the
    copies share chunks (copy-on-write on the next write to either side)."""

    inode: Inode
    dst_parent: Inode
    dst_name: bytes
    uid: Id = 0
    gid: Id = 0


class Undelete(Op, tag="undelete"):
    """Move a file from the trash back to its path (missing directories are made)."""

    inode: Inode


class PurgeTrash(Op, tag="purgetrash"):
    """Free these trash files now (an expired trash file, or a user's purge). Inodes that
    are not in the trash (any more) are skipped."""

    inodes: list[Inode]


class Acquire(Op, tag="acquire"):
    """The session opened the file: keep it alive while open, even when unlinked.
    `want`: the access the open asks for (R, W, X bits of `elkfs/access.py`), which the
    master checks; a file opened for writing is written without further checks.

    `answer` (not metadata: replaying the record ignores it) asks for what an open
    needs, in the same trip: ACQUIRE_ATTR the file's attributes (`OpenOut`), and
    ACQUIRE_CHUNK also where its first chunk is (as `ReadChunk` would say), both as they
    are when the answer leaves, after the open is durable."""

    inode: Inode
    want: Want = 0
    answer: Annotated[int, Meta(ge=0, le=3)] = 0


ACQUIRE_ATTR = 1
ACQUIRE_CHUNK = 2


class Release(Op, tag="release"):
    inode: Inode


class ReleaseMany(Op, tag="releasemany"):
    """Several closes at once (a mount batches them); inodes not open are skipped."""

    inodes: list[Inode]


class WriteChunk(Op, tag="writechunk"):
    """Open chunk `index` of a file for writing: creates it or raises its version, and
    locks it for this writer until `WriteChunkEnd`. Replies with the chain to write to."""

    inode: Inode
    index: ChunkIndex


class WriteChunkEnd(Op, tag="writechunkend"):
    """The write to a chunk is done; the file is at least `length` bytes long now.
    `ok` False: the session failed or was given up (the copies it made are not kept)."""

    inode: Inode
    index: ChunkIndex
    chunk_id: U64
    length: FileSize
    ok: bool = True


class SetLock(Op, tag="setlock"):
    """Take or give up a lock (`elkfs/master/filelocks.py`): `owner` is the kernel's lock
    owner within the session, `kind` LOCK_POSIX (byte range, also OFD) or LOCK_FLOCK,
    `type` F_RDLCK/F_WRLCK/F_UNLCK, [start, end] inclusive. A conflict is EAGAIN, unless
    `wait` (the client's id for this wait) is set: then the answer is `LockOut(queued)`
    and the master sends `LockWake([wait])` when a lock on the file goes; the client then
    asks again."""

    inode: Inode
    owner: U64
    kind: Small
    type: Small
    start: Offset
    end: Offset
    pid: Pid = 0
    wait: U64 = 0


class ReleaseLocks(Op, tag="releaselocks"):
    """Drop every lock of (session, `owner`) on a file: a close (POSIX locks go with any
    close of the file by their process; flock and OFD locks with their open file)."""

    inode: Inode
    owner: U64


class GetLock(Op, tag="getlock"):
    """F_GETLK: the lock that keeps `owner` from taking `type` on [start, end], if any."""

    READ_ONLY = True
    inode: Inode
    owner: U64
    kind: Small
    type: Small
    start: Offset
    end: Offset


class AppendReserve(Op, tag="appendreserve"):
    """Atomic O_APPEND: the file grows by `length` bytes at once and the answer says
    where they go (`AppendOut.offset`, the old end). Appends from every client get
    ranges of their own; the writer then writes its data there."""

    inode: Inode
    length: FileSize


class EndSession(Op, tag="endsession"):
    """The client is done: close its session now (its open files are released) instead
    of keeping it for SESSION_SUSTAIN_TIME."""


AnyOp = Union[
    Lookup, GetAttr, ReadDir, ReadLink, GetXattr, ListXattr, StatFs, ReadChunk, FileChunks,
    DirStats, ClusterInfo, ListTrash, BadCopy,
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
    next_offset: int  # -1 when the listing is complete, else the `offset` of the next page
    renewed: bool = False  # the answer to a `renew` that holds: the names kept are good


class DirNamesOut(Result, tag="dirnames"):
    """A page of `ReadDir(names_only=True)`: the i-th entry is names[i], inodes[i],
    modes[i] (type and permission bits)."""

    names: list[bytes]
    inodes: list[int]
    modes: list[int]
    next_offset: int  # as in DirOut


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
    token: bytes = b""  # chunk access token (`proto/auth.py`) the chunkservers check


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
    DirStatsOut, JsonOut, TrashOut, LockOut, AppendOut, OpenOut, DirNamesOut,
]


# ---------------------------------------------------------------- client <-> master


@message(10)
class RegisterSession(Msg):
    """Open a new session (`session` empty) or resume one after a reconnect."""

    req: Req
    session: bytes
    info: str = ""
    # How long the client keeps a directory listing (ms); 0: it keeps none. The master
    # then tells it, and waits for its answer, before a change to a listed directory by
    # anyone else is acknowledged (`InvalidateListings`).
    listing_ttl_ms: Seconds = 0
    # What to mount (mfsexports.cfg): a directory from the root, which becomes the
    # session's root, or with `meta` the meta file system (the trash).
    path: str = "/"
    meta: bool = False
    # For an export with a password: the answer to this connection's `Challenge`
    # (`exports.password_proof`); the password itself is never sent.
    proof: bytes = b""
    # A client tool riding on a mount's session (its id): `proof` then answers the
    # challenge with the mount's tool token as the key (`password.tool_token`), and the
    # session gets the mount's rights, never more (docs/security.md).
    attach: bytes = b""


@message(11)
class SessionReply(Msg):
    req: int
    status: int
    session: bytes
    leader: str = ""  # when status is NOT_LEADER: "host:port" of the leader, if known
    root: int = 1  # the inode of the session's root directory
    detail: str = ""  # why registration was refused
    readonly: bool = False  # the export is read-only


@message(17)
class SessionChallenge(Msg):
    """Asked before `RegisterSession` by a client that has a password: the master answers
    with a random challenge for this connection, good for one registration."""

    req: int


@message(18)
class Challenge(Msg):
    req: int
    nonce: bytes


@message(12)
class MetaRequest(Msg):
    """One operation. `seq` numbers a session's changes so a retry applies once.
    `uid`, `gid`, `groups`: who asks (the master checks the op against them; a mount
    passes on the identity of the process that made the system call)."""

    req: Req
    session: bytes
    seq: U64
    op: AnyOp
    uid: Id
    gid: Id
    groups: Groups = []


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


@message(19)
class Progress(Msg):
    """Master -> client: a long operation (a request done in steps: a snapshot of a big
    tree, a recursive setgoal, mfsdirinfo) of this session with sequence number `seq`
    (0 for reads) has done `done` entries so far. Not answered; tools print it."""

    seq: int
    done: int


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


@message(47)
class CsWriteDone(Msg):
    """A write session on this copy ended well: everything it was sent is stored here.
    Sent to every master before the session is answered upstream, so the master counts
    the copies that said so, not the ones the writer says (master/writereports.py)."""

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
    """Fetch a copy of the chunk from one of `sources` (other chunkservers), showing
    them `token` (a read token the master made for this replication)."""

    chunk_id: int
    version: int
    sources: list[Addr]
    token: bytes = b""


class CheckChunk(CsCmd, tag="check"):
    """Re-check the copy against its CRCs from disk now (a client saw a block fail its
    CRC); a damaged copy is reported (`CsChunkDamaged`) as the scrub would."""

    chunk_id: int
    version: int


AnyCsCmd = Union[CreateChunk, DeleteChunk, SetChunkVersion, TruncateChunk, DuplicateChunk,
                 ReplicateChunk, CheckChunk]


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

    req: Req


@message(105)
class Ping(Msg):
    """Client -> master: are you there? Answered `Ok` by any master at once; a client
    waiting on a request uses it to notice a master that stopped answering."""

    req: Req


@message(104)
class MasterAdmin(Msg):
    """An operator's command to the leader (`mfscli`): "step-down" [target address];
    answered with `MetaReply(JsonOut)` or `Error` (NOT_LEADER names the leader).
    "force-voters" goes to one chosen follower instead: `voters` (uuids) become the voter
    set, campaigning above `min_term` (docs/ha.md, "Forced voter set")."""

    req: Req
    command: str
    target: str = ""
    voters: tuple[str, ...] = ()
    min_term: int = 0


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


# ---------------------------------------------------------------- cluster authentication
# On the master's port, before anything else, when AUTH_CODE is set (proto/auth.py).


@message(120)
class AuthHello(Msg):
    """Initiator -> master: my fresh nonce; prove you know the code."""

    req: int
    nonce: bytes
    role: str = ""  # "chunkserver" | "master" (for log lines)


@message(121)
class AuthChallenge(Msg):
    """The master's answer: its own fresh nonce and its proof over both nonces."""

    req: int
    nonce: bytes
    proof: bytes


@message(122)
class AuthProof(Msg):
    """Initiator -> master: its proof over both nonces; answered `Ok` or `Error`."""

    req: int
    proof: bytes


# ---------------------------------------------------------------- data port (9422)


@message(60)
class ReadReq(Msg):
    """Read `size` bytes at `offset`. With `crcs` the range must be whole 64 KiB blocks
    (the last may end at the chunk's end): the reply carries each block's stored CRC and
    the reader checks them (end to end) instead of the chunkserver."""

    req: Req
    chunk_id: U64
    version: U64
    offset: InChunk
    size: InChunk
    token: bytes = b""  # a read token (proto/auth.py)
    crcs: bool = False


@message(61)
class ReadData(Msg):
    """Reply to `ReadReq`; the bytes follow as the frame's data part. `crcs`: the CRC32
    of each block read, 4 bytes big-endian each (when asked for)."""

    req: int
    status: int
    crcs: bytes = b""


@message(62)
class WriteInit(Msg):
    """Start a write session on this connection; `chain` lists the chunkservers after
    this one, which the data is forwarded to. With `create`, each chunkserver of the
    chain makes the chunk first (the master hands out a new chunk without asking the
    chunkservers to make it: one round trip less for every new chunk)."""

    req: Req
    chunk_id: U64
    version: U64
    chain: list[Addr]
    create: bool = False  # make the chunk (empty, this version) where it does not exist
    token: bytes = b""  # a write token (proto/auth.py), passed down the chain


@message(63)
class WriteData(Msg):
    """Write the frame's data part at `offset` within the chunk."""

    req: Req
    offset: InChunk


@message(64)
class WriteStatus(Msg):
    req: int
    status: int


@message(65)
class WriteEnd(Msg):
    """End the write session; with `sync` the data is fsynced on every copy first."""

    req: Req
    sync: bool = False


@message(68)
class WriteOnce(Msg):
    """A whole write session in one message: WriteInit, one WriteData (the frame's data
    part, at `offset`) and WriteEnd. Passed down the chain the same way; answered `Ok`
    once every copy has it, or the first `Error`. A small file's write costs each
    chunkserver one message and one task instead of three of each."""

    req: Req
    chunk_id: U64
    version: U64
    chain: list[Addr]
    offset: InChunk
    create: bool = False
    sync: bool = False
    token: bytes = b""  # a write token (proto/auth.py), passed down the chain


@message(66)
class ChunkInfoReq(Msg):
    req: Req
    chunk_id: U64
    version: U64 = 0  # the version `token` is for
    token: bytes = b""  # a read token (proto/auth.py)


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
# What a decoder may raise on bad bytes: msgspec's own errors (ValidationError is one),
# and UnicodeDecodeError for a string that is not UTF-8, which msgspec lets through.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)


def encode(msg: Msg) -> bytes:
    return _encoder.encode(msg)


def encode_any(obj) -> bytes:
    return _encoder.encode(obj)
