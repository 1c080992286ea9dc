"""The in-memory view of a master's journal: entries ``(term, version, payload)`` after a
base position, with Raft's log-matching checks.

Two logs hold the same entry only if both term and version agree (HA-traces.md 3a; Kafka
KIP-101): ``matches`` compares pairs.  The ``version_only`` flag is the broken variant the
simulator must catch.  Entries before ``base`` were compacted into a snapshot.
"""
from __future__ import annotations

from .messages import Entry
from .records import LogPos


class InvariantBroken(AssertionError):
    """A broken internal invariant: a bug, never an expected peer input."""


class Journal:
    def __init__(self, base: LogPos = (0, 0), entries: list[Entry] | None = None) -> None:
        self.base = base
        self.entries: list[Entry] = list(entries or [])
        for i, e in enumerate(self.entries):
            if e.version != base[1] + 1 + i:
                raise InvariantBroken(f"journal not contiguous at {e.version}")

    def last(self) -> LogPos:
        if self.entries:
            e = self.entries[-1]
            return (e.term, e.version)
        return self.base

    @property
    def last_version(self) -> int:
        return self.base[1] + len(self.entries)

    def term_at(self, version: int) -> int | None:
        """Term of the entry at ``version``; None when compacted away or beyond the end."""
        if version == self.base[1]:
            return self.base[0]
        i = version - self.base[1] - 1
        if 0 <= i < len(self.entries):
            return self.entries[i].term
        return None

    def entry(self, version: int) -> Entry:
        e = self.entries[version - self.base[1] - 1]
        if e.version != version:
            raise InvariantBroken("journal index corrupt")
        return e

    def matches(self, pos: LogPos, version_only: bool = False) -> bool:
        term, version = pos
        if version < self.base[1]:
            return False
        t = self.term_at(version)
        if t is None:
            return False
        return version_only or t == term

    def slice(self, from_version: int, limit: int) -> tuple[Entry, ...]:
        i = max(0, from_version - self.base[1] - 1)
        return tuple(self.entries[i:i + limit])

    def append(self, entry: Entry) -> None:
        if entry.version != self.last_version + 1:
            raise InvariantBroken(f"append {entry.version} after {self.last_version}")
        self.entries.append(entry)

    def truncate_after(self, version: int) -> None:
        if version < self.base[1]:
            raise InvariantBroken(f"truncate below base {self.base}")
        del self.entries[version - self.base[1]:]

    def compact(self, upto: int) -> None:
        """Forget entries ``<= upto`` (they are covered by a durable snapshot)."""
        if upto <= self.base[1]:
            return
        t = self.term_at(upto)
        if t is None:
            raise InvariantBroken(f"compact past end {upto}")
        del self.entries[:upto - self.base[1]]
        self.base = (t, upto)

    def reset(self, base: LogPos) -> None:
        self.base, self.entries = base, []

    def first_of_term(self, version: int) -> int:
        """First version of the run of entries sharing the term of ``version``."""
        t = self.term_at(version)
        v = version
        while v - 1 > self.base[1] and self.term_at(v - 1) == t:
            v -= 1
        return v

    def last_of_term(self, term: int, at_most: int) -> int | None:
        v = min(at_most, self.last_version)
        while v > self.base[1]:
            t = self.term_at(v)
            if t == term:
                return v
            if t is not None and t < term:
                return None
            v -= 1
        return None
