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


JournalOp = Union[
    m.Mknod, m.Mkdir, m.Symlink, m.Link, m.Unlink, m.Rmdir, m.Rename, m.SetAttr, m.Truncate,
    m.SetXattr, m.RemoveXattr, m.SetGoal, m.Acquire, m.Release, m.ReleaseMany, m.WriteChunk,
    m.WriteChunkEnd, OpenSession, CloseSession, SessionGone, KnowChunkserver,
    ForgetChunkserver, SetMaintenance, m.SetTrashTime, m.Snapshot, m.Undelete,
    m.PurgeTrash, m.SetLock, m.ReleaseLocks, m.AppendReserve, DropSessionLocks,
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
