"""A master's data directory as the simulator sees it, under either CHANGELOG_SAVE_MODE.

Two views of the same directory:

* ``cached``: what a *process* restart reads.  It holds every write the shell handed to
  the operating system (the page cache survives a process crash).
* ``durable``: what a *power loss* (or kernel crash) leaves.  It lags ``cached`` by the
  writes the kernel has not flushed yet.

``SAVE_FSYNC`` reports a journal write (``JournalSynced``) only after its fsync, so both
views move together.  ``SAVE_DEFAULT`` reports it once handed to the OS; the kernel flushes
writes in order within about a second.  Small state files (term, snapshot, voter state)
are always written atomically and fsynced (the core's ``persist`` contract), so both
views get them at once.  A write the shell had not handed over yet is lost by any crash.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from elkfs.consensus.messages import JournalWrite, SaveSnapshot


@dataclass
class MasterDiskState:
    term: int = 0
    accepted: int = 0
    snapshot: SaveSnapshot | None = None
    journal: list = field(default_factory=list)
    boot_id: int | None = None       # the boot id stored with the incarnation


def apply_write(d: MasterDiskState, w) -> None:
    """Apply one journal write (an append with optional truncation, or a snapshot)."""
    if isinstance(w, JournalWrite):
        if w.truncate_after is not None:
            d.journal = [e for e in d.journal if e.version <= w.truncate_after]
        d.journal.extend(w.entries)
    elif isinstance(w, SaveSnapshot):
        d.snapshot = w
        d.journal = []
    base = d.snapshot.last[1] if d.snapshot else 0
    if d.journal and d.journal[0].version <= base:
        d.journal = [e for e in d.journal if e.version > base]


class MasterDir:
    """The two views and the kernel's queue of unflushed writes."""

    def __init__(self) -> None:
        self.cached = MasterDiskState()
        self.durable = MasterDiskState()
        self.dirty: list = []            # handed to the OS, not yet flushed, in order
        self.flush_at = 0.0              # the kernel flushes in order

    def persist(self, fn) -> None:
        """An fsynced small-file write: ``fn(state)`` applied to both views."""
        fn(self.cached)
        fn(self.durable)

    def written(self, w, fsynced: bool) -> None:
        apply_write(self.cached, w)
        if fsynced:
            apply_write(self.durable, w)
        else:
            self.dirty.append(w)

    def flush_one(self, w) -> bool:
        if not self.dirty or self.dirty[0] is not w:
            return False
        self.dirty.pop(0)
        apply_write(self.durable, w)
        return True

    def power_loss(self) -> int:
        """The unflushed tail is gone; returns how many writes were lost."""
        lost = len(self.dirty)
        self.dirty.clear()
        self.cached = copy.deepcopy(self.durable)
        return lost

    def wipe(self) -> None:
        self.__init__()
