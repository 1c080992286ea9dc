"""Exactly-once client operations, shared by the simulator and the real master.

Theory (Raft thesis 6.3, HA-traces.md finding 13): a client registers a 128-bit random
session id through a *committed* change, then numbers its operations ``seq = 1, 2, ...``.
Each change stores ``(session, seq) -> (version, result)`` in the replicated state itself,
so every replica de-duplicates identically and a retry after a failover returns the
original result.  Results are kept for every seq at or above the client's lowest
unanswered seq (which each command carries), so concurrent requests (13a) are safe and
memory stays bounded.  An unknown session is an error, never an implicit registration.
The leader also checks its *uncommitted* tail (``Master`` keeps an index) so that a retry
of a pending entry waits for it instead of being appended twice (13c).

The application state machine is pluggable (:class:`AppStateMachine`): the consensus core
replicates opaque entries ``(term, version, payload)``; here the payload is a msgpack
:class:`Command`, whose ``body`` the application decodes.
"""
from __future__ import annotations

from typing import Protocol

import msgspec

from .messages import Entry


class Noop(msgspec.Struct, frozen=True, tag=True):
    pass


class RegisterSession(msgspec.Struct, frozen=True, tag=True):
    session: str


class Command(msgspec.Struct, frozen=True, tag=True):
    session: str
    seq: int
    lowest_unanswered: int
    body: bytes


Payload = Noop | RegisterSession | Command
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Payload)


def encode_payload(p: Payload) -> bytes:
    return _enc.encode(p)


def decode_payload(b: bytes) -> Payload:
    return _dec.decode(b)


class AppStateMachine(Protocol):
    """What the metadata (or the simulator's toy store) must provide."""

    def apply(self, body: bytes, term: int, version: int) -> bytes: ...
    def read(self, query: bytes) -> bytes: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class ReplicatedStateLike(Protocol):
    """What the master core applies committed entries to: :class:`ReplicatedState` in the
    simulator, the metadata store's adapter in the daemon (which de-duplicates client
    operations in the metadata itself)."""

    sessions: dict

    def apply(self, entry: Entry) -> "Applied": ...
    def lookup(self, session: str, seq: int): ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class Applied(msgspec.Struct, frozen=True):
    """One committed entry applied: reported to the shell (and the simulator's checks)."""
    term: int
    version: int
    session: str | None
    seq: int
    result: bytes
    executed: bool          # False when de-duplicated
    payload: bytes = b""    # the entry's payload (for the shell: chunk commands, checks)
    error: str = ""         # e.g. unknown-session (the entry changed nothing)


class _Session(msgspec.Struct):
    lowest: int = 1
    results: dict[int, tuple[int, bytes]] = {}


class _Snap(msgspec.Struct):
    sessions: dict[str, _Session]
    app: bytes


UNKNOWN = "unknown-session"
TOO_OLD = "seq-below-lowest-unanswered"


class ReplicatedState:
    """Sessions table + application, fed only with committed entries in version order."""

    def __init__(self, app: AppStateMachine) -> None:
        self.app = app
        self.sessions: dict[str, _Session] = {}

    def lookup(self, session: str, seq: int) -> tuple[str, tuple[int, bytes] | None]:
        """("ok", None) new; ("done", (version, result)); or an error status."""
        s = self.sessions.get(session)
        if s is None:
            return UNKNOWN, None
        hit = s.results.get(seq)
        if hit is not None:
            return "done", hit
        if seq < s.lowest:
            return TOO_OLD, None
        return "ok", None

    def apply(self, entry: Entry) -> Applied:
        p = decode_payload(entry.payload)
        if isinstance(p, RegisterSession):
            self.sessions.setdefault(p.session, _Session(results={}))
            return Applied(entry.term, entry.version, p.session, 0, b"", True, entry.payload)
        if isinstance(p, Noop):
            return Applied(entry.term, entry.version, None, 0, b"", True, entry.payload)
        s = self.sessions.get(p.session)
        if s is None:
            return Applied(entry.term, entry.version, p.session, p.seq, b"", False,
                           entry.payload, UNKNOWN)
        hit = s.results.get(p.seq)
        if hit is not None or p.seq < s.lowest:
            return Applied(entry.term, entry.version, p.session, p.seq,
                           hit[1] if hit else b"", False, entry.payload)
        result = self.app.apply(p.body, entry.term, entry.version)
        s.results[p.seq] = (entry.version, result)
        if p.lowest_unanswered > s.lowest:
            s.lowest = p.lowest_unanswered
            for old in [q for q in s.results if q < s.lowest]:
                del s.results[old]
        return Applied(entry.term, entry.version, p.session, p.seq, result, True,
                       entry.payload)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(_Snap(self.sessions, self.app.snapshot()))

    def restore(self, data: bytes) -> None:
        snap = msgspec.msgpack.decode(data, type=_Snap)
        self.sessions = snap.sessions
        self.app.restore(snap.app)
