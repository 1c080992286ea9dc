"""Metadata checkpoints (the MooseFS `metadata.mfs` image).

File `metadata.<version, 16 hex>.elk`: an 16-byte header (magic, version) followed by
sections framed like journal records (length, CRC, kind) so a damaged file is detected,
never half-loaded. Nodes are written in batches as plain tuples, so writing streams
through a small buffer instead of building the whole image in memory, and loading reads
one section at a time. The chunk table is written as its arrays (`ChunkTable.pages`):
loading them is a copy per page of 4096 chunks, not an object per chunk.

The master writes a checkpoint from a forked child (see `MasterStore.checkpoint`): the child
sees a frozen copy-on-write view of the namespace, so clients are not blocked and memory
is only duplicated for the pages the parent changes meanwhile (MooseFS does the same).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import sys
import zlib
from array import array

import msgspec

from ..proto import messages as m
from .namespace import DEFAULT_TRASHTIME, KnownChunkserver, Namespace, Session
from .direntries import DirEntries
from .nodes import DirNode, FileNode, Node, SpecialNode, SymlinkNode, shared

log = logging.getLogger("elkfs.checkpoint")

MAGIC = b"ELKMETA1"
HEADER = struct.Struct(">8sQ")
SECTION = struct.Struct(">IIB")  # length, crc32, kind
CHECKPOINT_RE = re.compile(r"^metadata\.([0-9a-f]{16})\.elk$")
BATCH = 4096

(K_COUNTERS, K_NODES, K_CHUNKS, K_SESSIONS, K_END, K_TRASH, K_CHUNKSERVERS, K_LOCKS,
 K_BUILDING, K_CHUNK_PAGES) = range(10)
# What each version of the writer added (the reader takes every one of them):
#   K_TRASH, K_CHUNKSERVERS, K_LOCKS, K_BUILDING: sections of their own;
#   K_CHUNK_PAGES (instead of K_CHUNKS rows): the chunk table's arrays as they are;
#   directories' names as a fifth item of their node (before: named from the parents).
# A master older than a section refuses the checkpoint ("unknown section"), and then
# loads an older one it can read, or stops: it never loads part of one.
CHUNK_PAGES_PER_SECTION = 64  # 64 pages of 4096 chunks: 3 MiB
_LITTLE = sys.byteorder == "little"
N_FILE, N_DIR, N_SYMLINK, N_SPECIAL = range(4)

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_result_enc = msgspec.msgpack.Encoder()
_result_dec = msgspec.msgpack.Decoder(m.AnyResult | None)


class CheckpointError(Exception):
    pass


def checkpoint_name(version: int) -> str:
    return f"metadata.{version:016x}.elk"


def list_checkpoints(data_dir: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(data_dir):
        match = CHECKPOINT_RE.match(name)
        if match:
            found.append((int(match.group(1), 16), os.path.join(data_dir, name)))
    return sorted(found)


def _node_tuple(node: Node) -> list:
    base = [node.inode, node.mode, node.uid, node.gid, node.atime, node.mtime, node.ctime,
            node.nlink, node.goal, node.xattrs, node.trashtime]
    if isinstance(node, FileNode):
        return [N_FILE, base, node.length, node.chunks.tolist()]
    if isinstance(node, DirNode):
        # The name is read back as is (checkpoints written before it had none: their
        # directories are named from their parents' entries, `_name_directories`).
        return [N_DIR, base, node.parent, list(node.children.items()), node.name]
    if isinstance(node, SymlinkNode):
        return [N_SYMLINK, base, node.target]
    return [N_SPECIAL, base, node.dev]


def _nodes_from(batch: list, unnamed: list[DirNode]) -> list[Node]:
    """The nodes of one section. A million of them per million files: one loop with the
    least Python per node (no call per node, no per-field validation: the section's CRC
    vouches for what the writer wrote). Directories without a name (written before names
    were) go to `unnamed`."""
    nodes = []
    append = nodes.append
    new = object.__new__
    # Consecutive nodes mostly repeat these: `shared` only when the value changes.
    last_mode = last_uid = last_gid = last_trashtime = None
    for t in batch:
        kind, base = t[0], t[1]
        if len(base) == 11:
            inode, mode, uid, gid, atime, mtime, ctime, nlink, goal, xattrs, trashtime = base
        else:  # written before trash times
            inode, mode, uid, gid, atime, mtime, ctime, nlink, goal, xattrs = base
            trashtime = DEFAULT_TRASHTIME
        if kind == N_FILE:
            node = new(FileNode)  # every slot is set here: no need to run __init__
            node.length = t[2]
            node.chunks = array("Q", t[3])
        elif kind == N_DIR:
            node = new(DirNode)
            node.parent = t[2]
            node.children = DirEntries(t[3])  # names and inodes as decoded: bytes, int
            if len(t) > 4:
                node.name = t[4]
            else:
                node.name = b""
                unnamed.append(node)
        elif kind == N_SYMLINK:
            node = new(SymlinkNode)
            node.target = t[2]
        elif kind == N_SPECIAL:
            node = new(SpecialNode)
            node.dev = t[2]
        else:
            raise CheckpointError(f"unknown node kind {kind}")
        node.inode = inode
        if mode != last_mode:
            last_mode = shared(mode)
        node.mode = last_mode
        if uid != last_uid:
            last_uid = shared(uid)
        node.uid = last_uid
        if gid != last_gid:
            last_gid = shared(gid)
        node.gid = last_gid
        # Equal times as one object, as the namespace makes them (decoding makes one each).
        node.mtime = mtime
        node.atime = mtime if atime == mtime else atime
        node.ctime = mtime if ctime == mtime else ctime
        node.nlink = nlink
        node.goal = goal
        if trashtime != last_trashtime:
            last_trashtime = shared(trashtime)
        node.trashtime = last_trashtime
        node.xattrs = dict(xattrs) if xattrs else None  # names and values decode as bytes
        append(node)
    return nodes


def _le_bytes(values: array) -> bytes:
    """An array's items as little-endian bytes (the file's order on every machine)."""
    if _LITTLE:
        return values.tobytes()
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


def _le_array(typecode: str, data: bytes) -> array:
    values = array(typecode)
    if len(data) % values.itemsize:
        raise CheckpointError(f"{len(data)} bytes are no array of {typecode!r}")
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    return values


def write(ns: Namespace, path: str, final: bool = True) -> None:
    """Write `ns` to `path` atomically (temp file, fsync, rename, fsync dir). With
    `final=False` it stays at `path + ".tmp"` until `publish`."""
    tmp = path + ".tmp"
    with open(tmp, "wb", buffering=1 << 20) as f:
        f.write(HEADER.pack(MAGIC, ns.version))

        def section(kind: int, obj) -> None:
            payload = _enc.encode(obj)
            f.write(SECTION.pack(len(payload), zlib.crc32(payload), kind))
            f.write(payload)

        section(K_COUNTERS, [ns.version, ns.next_inode, ns.next_chunk_id, ns.last_term])
        batch = []
        for node in ns.nodes.values():
            batch.append(_node_tuple(node))
            if len(batch) >= BATCH:
                section(K_NODES, batch)
                batch = []
        if batch:
            section(K_NODES, batch)
        pages = []
        for first, versions, refs in ns.chunks.pages():
            pages.append((first, _le_bytes(versions), _le_bytes(refs)))
            if len(pages) >= CHUNK_PAGES_PER_SECTION:
                section(K_CHUNK_PAGES, pages)
                pages = []
        if pages:
            section(K_CHUNK_PAGES, pages)
        sessions = [
            [s.session_id, s.info, s.opened_ts, list(s.open_files.items()),
             [(seq, _result_enc.encode(r)) for seq, r in s.results.items()], s.gone_ns,
             sorted(s.writable)]
            for s in ns.sessions.values()
        ]
        section(K_SESSIONS, sessions)
        trash = [(inode, expire, path) for inode, (expire, path) in ns.trash.items()]
        for i in range(0, len(trash), BATCH * 4):
            section(K_TRASH, trash[i:i + BATCH * 4])
        section(K_CHUNKSERVERS, [(cs_id, k.addr, k.maintenance_until_ns)
                                 for cs_id, k in ns.chunkservers.items()])
        locks = ns.locks.rows()
        for i in range(0, len(locks), BATCH * 4):
            section(K_LOCKS, locks[i:i + BATCH * 4])
        if ns.building:  # snapshots being made in steps (their detached copies)
            section(K_BUILDING, [(top, parent, name)
                                 for top, (parent, name) in ns.building.items()])
        section(K_END, [len(ns.nodes), len(ns.chunks)])
        f.flush()
        os.fsync(f.fileno())
    if final:
        publish(path)


def publish(path: str) -> None:
    """Give a checkpoint written with `final=False` its name: from now on start-up
    may load it."""
    from .journal import fsync_dir

    os.rename(path + ".tmp", path)
    fsync_dir(os.path.dirname(path) or ".")


def _sections(f, path: str):
    """(kind, payload) of each section, read one at a time: loading never holds more of
    the file than its largest section."""
    pos = HEADER.size
    while True:
        head = f.read(SECTION.size)
        if not head:
            return
        if len(head) < SECTION.size:
            raise CheckpointError(f"{path}: truncated at offset {pos}")
        length, crc, kind = SECTION.unpack(head)
        payload = f.read(length)
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise CheckpointError(f"{path}: damaged section at offset {pos}")
        pos += SECTION.size + length
        yield kind, payload


def read(path: str) -> Namespace:
    with open(path, "rb", buffering=1 << 20) as f:
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            raise CheckpointError(f"{path}: too short")
        magic, version = HEADER.unpack(header)
        if magic != MAGIC:
            raise CheckpointError(f"{path}: not an ElkFS checkpoint")
        ns, unnamed = _read_sections(_sections(f, path), path)
    if ns.version != version:
        raise CheckpointError(f"{path}: header version {version} != {ns.version}")
    if unnamed:
        _name_directories(ns)
    return ns


def _read_sections(sections, path: str) -> tuple[Namespace, list[DirNode]]:
    ns = Namespace()
    ns.nodes.clear()
    unnamed: list[DirNode] = []
    ended = False
    for kind, payload in sections:
        obj = _dec.decode(payload)
        if kind == K_COUNTERS:
            ns.version, ns.next_inode, ns.next_chunk_id = obj[:3]
            ns.last_term = obj[3] if len(obj) > 3 else 0  # written before HA
        elif kind == K_NODES:
            ns.nodes.fill(_nodes_from(obj, unnamed))
        elif kind == K_CHUNK_PAGES:
            for first, versions, refs in obj:
                try:
                    ns.chunks.load_page(first, _le_array("Q", versions), _le_array("I", refs))
                except ValueError as e:
                    raise CheckpointError(f"{path}: {e}") from None
        elif kind == K_CHUNKS:  # written before K_CHUNK_PAGES
            ns.chunks.fill(obj)
        elif kind == K_SESSIONS:
            for sid, info, opened, open_files, results, *rest in obj:
                sess = Session(bytes(sid), info, opened, dict(open_files))
                sess.results = {seq: _result_dec.decode(r) for seq, r in results}
                sess.gone_ns = rest[0] if rest else 0  # written before gone_ns
                # written before writable: every open file was writable
                sess.writable = set(rest[1]) if len(rest) > 1 else set(sess.open_files)
                ns.sessions[sess.session_id] = sess
        elif kind == K_TRASH:
            for inode, expire, tpath in obj:
                ns.trash[inode] = (expire, bytes(tpath))
        elif kind == K_CHUNKSERVERS:
            for cs_id, addr, until in obj:
                ns.chunkservers[bytes(cs_id)] = KnownChunkserver(addr, until)
        elif kind == K_LOCKS:  # absent from checkpoints written before file locks
            ns.locks.load(obj)
        elif kind == K_BUILDING:
            for top, parent, name in obj:
                ns.building[top] = (parent, bytes(name))
        elif kind == K_END:
            if obj != [len(ns.nodes), len(ns.chunks)]:
                raise CheckpointError(f"{path}: counts do not match")
            ended = True
            break
        else:
            raise CheckpointError(f"{path}: unknown section {kind}")
    if not ended:
        raise CheckpointError(f"{path}: incomplete (no end section)")
    return ns, unnamed


def _name_directories(ns: Namespace) -> None:
    """Give each directory its name, from its parent's entries (checkpoints written
    before directories carried their names): one pass over every entry."""
    nodes = ns.nodes
    for parent in nodes.values():
        if type(parent) is DirNode:
            for name, inode in parent.children.items():
                child = nodes.get(inode)
                if type(child) is DirNode and child.parent == parent.inode:
                    child.name = name
