"""Wire messages and machine inputs: frozen msgspec Structs, tagged for msgpack unions.

Every master-to-voter and master-to-master message carries the term (invariant 4); the
network shell wraps them in a frame that carries the cluster id.  Requests carry a
``round`` id that replies echo, so a leader credits an acknowledgement to the send time of
the very round it answers (HA-traces.md 5c).  ``(term, version)`` pairs are ``LogPos``
tuples.

Voter side:   PreVote -> PreVoteReply, VoteRequest -> VoteReply, Renew -> RenewReply,
              Release (no reply), ChunkCommand (to the chunk-version fence).
Master side:  Append -> AppendReply, InstallSnapshot -> AppendReply, TimeoutNow,
              Tick, JournalSynced, client and admin requests.
"""
from __future__ import annotations

import msgspec

from .records import LogPos, Record


class _Msg(msgspec.Struct, frozen=True, tag=True):
    pass


# ---------------------------------------------------------------- voter protocol ---------
class PreVote(_Msg):
    term: int            # the term the candidate would use
    candidate: str       # master identity
    round: int
    last: LogPos


class PreVoteReply(_Msg):
    voter: str           # voter uuid
    term: int            # voter's current term
    round: int
    would_grant: bool
    reason: str
    record: Record | None
    wait_s: float        # how long until it could grant (lease left or restart silence)


class VoteRequest(_Msg):
    term: int
    candidate: str
    round: int
    last: LogPos


class VoteReply(_Msg):
    voter: str
    term: int            # the request's term if granted, else the voter's term
    round: int
    granted: bool
    reason: str
    record: Record | None
    wait_s: float


class Renew(_Msg):
    term: int
    leader: str
    round: int
    record: Record | None   # the leader's newest (possibly pending) record


class RenewReply(_Msg):
    voter: str
    term: int
    round: int
    ok: bool
    reason: str
    record: Record | None   # the voter's record after handling the renewal


class Release(_Msg):
    term: int
    holder: str
    target: str | None = None   # step-down: grant only to the target for D


# ---------------------------------------------------------------- master protocol --------
class Entry(msgspec.Struct, frozen=True, array_like=True):
    term: int
    version: int
    payload: bytes


class Append(_Msg):
    term: int
    leader: str
    leader_addr: str
    prev: LogPos
    entries: tuple[Entry, ...]
    commit: int              # leader's commit version
    record: Record | None


class InstallSnapshot(_Msg):
    term: int
    leader: str
    leader_addr: str
    last: LogPos
    data: bytes
    record: Record | None


class AppendReply(_Msg):
    term: int                # the follower's accepted term
    sender: str              # follower identity
    sender_addr: str
    ok: bool
    match: LogPos            # ok: persisted entry known to match the leader's log
    conflict_term: int = 0   # not ok: the term of the follower's entry at prev (0: none)
    conflict_version: int = 0  # first version of that term, or follower's last+1


class TimeoutNow(_Msg):
    term: int
    leader: str
    record: Record | None = None


# ---------------------------------------------------------------- local inputs -----------
class Tick(_Msg):
    pass


class JournalSynced(_Msg):
    write_id: int


class Propose(_Msg):
    """The daemon's leader shell appends changes it has already applied (speculatively)
    to its own metadata; the core numbers them, journals and replicates them, and the
    shell answers each once ``commit`` reaches its version (see docs/ha.md)."""
    payloads: tuple[bytes, ...]


class PeersChanged(_Msg):
    """The daemon's current view: master addresses (DNS), connected voter addresses, and
    the voters a brand-new cluster may bootstrap with (empty unless this master founds
    the cluster)."""
    master_addrs: tuple[str, ...]
    voter_addrs: tuple[str, ...]
    bootstrap_voters: tuple[str, ...] = ()


class SnapshotTaken(_Msg):
    """The shell stored a snapshot of committed state at ``last`` (a checkpoint file);
    ``data`` names it for ``InstallSnapshot``.  The core may forget older entries."""
    last: LogPos
    data: bytes


# ---------------------------------------------------------------- clients / admin --------
class ClientRegister(_Msg):
    client: str
    session: str


class ClientWrite(_Msg):
    client: str
    session: str
    seq: int
    lowest_unanswered: int
    body: bytes


class ClientRead(_Msg):
    client: str
    req: int
    query: bytes


class ClientReply(_Msg):
    session: str
    seq: int                 # for reads: the request id
    status: str              # "ok", "redirect", "error", "retry"
    result: bytes = b""
    version: int = 0         # version of the state the reply was built from / the entry
    leader_hint: str | None = None
    detail: str = ""


class AdminStepDown(_Msg):
    target: str | None = None


class AdminChangeVoters(_Msg):
    add: str | None = None
    remove: str | None = None


class AdminForceVoters(_Msg):
    """The operator's way out when a majority of the voters is gone for good: this master
    (a follower, ideally the one with the highest ``(term, version)``) leads with
    ``voters`` as the voter set.  Refused while any lease may be live; see docs/ha.md.

    ``min_term``: the highest term any master holds (the operator's command reads every
    master's term file first).  The terms the lost voters saw may be known nowhere else,
    but a master persists a term before it asks for votes in it, so campaigning above
    every master's term never reuses one."""
    voters: tuple[str, ...]
    min_term: int = 0


# ---------------------------------------------------------------- persistence ------------
class PersistVoterState(_Msg):
    term: int
    voted_for: str | None
    record: Record | None


class PersistMasterTerm(_Msg):
    term: int
    accepted_term: int


class JournalWrite(_Msg):
    """Truncate the journal after ``truncate_after`` (None: no truncation), then append."""
    write_id: int
    truncate_after: int | None
    entries: tuple[Entry, ...]


class SaveSnapshot(_Msg):
    """Atomically store a snapshot of committed state; the journal up to ``last`` may go."""
    last: LogPos
    data: bytes
    write_id: int = 0        # when sent as a journal write (installing a leader snapshot)
