"""Journal records: the unit of metadata change.

A record is one operation (a client's `Op` from `elkfs.proto.messages`, or an internal op
below) stamped by the master with its metadata version, its time and the client's session
and sequence number. Applying the same records in the same order to the same state gives
the same state and the same results: that is what lets a restarted master replay its
journal, and what followers will replicate.
"""

from __future__ import annotations

from typing import Union

import msgspec

from ..proto import messages as m


class OpenSession(m.Op, tag="opensession"):
    session: bytes
    info: str


class CloseSession(m.Op, tag="closesession"):
    session: bytes


class KnowChunkserver(m.Op, tag="knowcs"):
    """A chunkserver registered for the first time (or at a new address): the cluster's
    set of chunkservers is metadata, so after a restart or a failover the master knows
    whom to wait for before it judges copies."""

    cs_id: bytes
    addr: str


class ForgetChunkserver(m.Op, tag="forgetcs"):
    """An operator removed a chunkserver that is gone for good."""

    cs_id: bytes


class SetMaintenance(m.Op, tag="maintenance"):
    """A chunkserver in maintenance until `until_ns` (leader's wall clock; 0: off): its
    copies are not rebuilt elsewhere while it is away, and it gets no new copies."""

    cs_id: bytes
    until_ns: int


class SessionGone(m.Op, tag="sessiongone"):
    """The session's client went away (`gone`) or came back: the record's time (the
    leader's clock) is when its sustain time started, for every later leader too."""

    session: bytes
    gone: bool


class DropSessionLocks(m.Op, tag="dropsessionlocks"):
    """The session's client has been away longer than LOCKS_SUSTAIN_TIME: its file locks
    go (the session itself is kept for its own, longer, sustain time)."""

    session: bytes


# Long operations in bounded steps (elkfs/master/longops.py): each record is one step,
# small enough to apply within the step budget, and leaves a consistent state.


class SnapshotBegin(m.Op, tag="snapbegin"):
    """A snapshot of a tree too big for one step starts: the copy of the top directory
    is made *detached* (not in `dst_parent` yet, listed in `Namespace.building`)."""

    inode: int
    dst_parent: int
    dst_name: bytes


class SnapshotCopy(m.Op, tag="snapcopy"):
    """One step of a snapshot: copy each (source inode, directory of the copy, name) of
    the detached tree under `top`, one level (a directory's copy starts empty)."""

    top: int
    entries: list[tuple[int, int, bytes]]


class SnapshotEnd(m.Op, tag="snapend"):
    """The last step: the detached copy `top` gets its name (carries the client's
    session and sequence number, so a retry gets this result)."""

    top: int


class DropDetached(m.Op, tag="dropdetached"):
    """Free at most `count` entries of the detached tree `top` (a snapshot that failed
    or was cut short by a restart or a failover); the top goes last."""

    top: int
    count: int


class SetGoalMany(m.Op, tag="setgoalmany"):
    """One step of a recursive setgoal: these inodes get `goal`."""

    inodes: list[int]
    goal: int


class SetTrashTimeMany(m.Op, tag="settrashtimemany"):
    """One step of a recursive settrashtime: these inodes get `trashtime`."""

    inodes: list[int]
    trashtime: int


JournalOp = Union[
    m.Mknod, m.Mkdir, m.Symlink, m.Link, m.Unlink, m.Rmdir, m.Rename, m.SetAttr, m.Truncate,
    m.SetXattr, m.RemoveXattr, m.SetGoal, m.Acquire, m.Release, m.ReleaseMany, m.WriteChunk,
    m.WriteChunkEnd, OpenSession, CloseSession, SessionGone, KnowChunkserver,
    ForgetChunkserver, SetMaintenance, m.SetTrashTime, m.Snapshot, m.Undelete,
    m.PurgeTrash, m.SetLock, m.ReleaseLocks, m.AppendReserve, DropSessionLocks,
    SnapshotBegin, SnapshotCopy, SnapshotEnd, DropDetached, SetGoalMany, SetTrashTimeMany,
]


class Record(msgspec.Struct, array_like=True, frozen=True):
    version: int
    ts_ns: int
    session: bytes
    seq: int
    op: JournalOp
    term: int = 0  # the leader's term (HA); 0 without HA and in journals written before it


RECORD_ENCODER = msgspec.msgpack.Encoder()
RECORD_DECODER = msgspec.msgpack.Decoder(Record)
