"""Chunk-version fencing (HA.md "Chunkservers", HA-traces.md finding 8).

* Versions are ``(term, counter)``: a leader allocates them from committed state only, with
  its own term first, so two leaders can never hand out the same version (8a).
* Chunkserver commands (set-version, delete, replicate, truncate) are issued only for
  committed changes and carry the leader's term.
* A chunkserver's :class:`ChunkVersionFence` remembers the highest term it has accepted and
  rejects commands of a lower term, and never lets a chunk's version go backwards: the
  fencing-token pattern, where the resource checks the token itself.
"""
from __future__ import annotations

import msgspec

ChunkVersion = tuple[int, int]   # (term, counter), ordered lexicographically

# On disk and on the wire a version is one integer, ``term << 32 | counter``: integer order
# is the pair's order, and a version of term 0 (a master without HA, or a chunk file
# written before HA) is the plain counter it always was.
COUNTER_BITS = 32
COUNTER_MASK = (1 << COUNTER_BITS) - 1


def version_term(version: int) -> int:
    return version >> COUNTER_BITS


def first_version(term: int) -> int:
    """The version of a chunk made by a change of ``term``."""
    return (term << COUNTER_BITS) | 1


def next_version(version: int, term: int) -> int:
    """The version a change of ``term`` raises ``version`` to: above it, in ``term``."""
    counter = (version & COUNTER_MASK) + 1
    if counter > COUNTER_MASK or term < version_term(version):
        raise ValueError(f"cannot raise version {version:#x} in term {term}")
    return (term << COUNTER_BITS) | counter


class ChunkCommand(msgspec.Struct, frozen=True, tag=True):
    term: int
    leader: str
    chunk: int
    version: ChunkVersion
    kind: str = "set-version"


class ChunkCommandReply(msgspec.Struct, frozen=True, tag=True):
    chunk: int
    version: ChunkVersion
    accepted: bool
    reason: str
    highest_term: int


class VersionAllocator:
    """Part of the replicated metadata: ``bump(term)`` is called while applying a committed
    entry of ``term`` (so every replica computes the same version)."""

    def __init__(self, counter: int = 0) -> None:
        self.counter = counter

    def bump(self, term: int) -> ChunkVersion:
        self.counter += 1
        return (term, self.counter)


class ChunkVersionFence:
    def __init__(self, highest_term: int = 0) -> None:
        self.highest_term = highest_term          # persisted by the chunkserver
        self.versions: dict[int, ChunkVersion] = {}

    def step(self, msg: ChunkCommand) -> ChunkCommandReply:
        if msg.term < self.highest_term:
            return ChunkCommandReply(msg.chunk, msg.version, False, "stale-term",
                                     self.highest_term)
        self.highest_term = msg.term
        have = self.versions.get(msg.chunk)
        if have is not None and msg.version < have:
            return ChunkCommandReply(msg.chunk, msg.version, False, "older-version",
                                     self.highest_term)
        self.versions[msg.chunk] = msg.version
        return ChunkCommandReply(msg.chunk, msg.version, True, "ok", self.highest_term)
