"""The batch of side effects a ``step`` returns, in the order the shell must perform them.

Like etcd raft's ``Ready``: everything in ``persist`` must be durable (written atomically
and fsynced) *before* any message in ``send`` leaves, because sends may promise it (a vote,
an accepted term).  ``journal`` writes are asynchronous group-commit writes: the shell
performs them in order and reports each completion with ``JournalSynced(write_id)``; the
machine never assumes a journal write is durable before that.  Client ``replies`` are sent
only if a clock read *after* building them is still below ``reply_deadline`` (HA-traces.md
9b: read the state, read the clock, check the lease, send).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .leaselog import LeaseEvent


@dataclass(slots=True)
class Output:
    persist: list[Any] = field(default_factory=list)
    send: list[tuple[str, Any]] = field(default_factory=list)
    journal: list[Any] = field(default_factory=list)
    replies: list[tuple[str, Any]] = field(default_factory=list)
    reply_deadline: float = float("-inf")
    lease_log: list[LeaseEvent] = field(default_factory=list)
    applied: list[Any] = field(default_factory=list)
    wake_at: float | None = None
    proposed: int = 0            # Propose: version of the last entry appended (0: refused)

    def send_to(self, dest: str, msg: Any) -> None:
        self.send.append((dest, msg))
