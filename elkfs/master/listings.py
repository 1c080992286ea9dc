"""Which client sessions keep which directory listings: pure bookkeeping, no I/O.

A mount answers the kernel's LOOKUPs from whole directory listings it keeps for a short
time (`elkfs/mount/metacache.py`). So that no client ever sees a stale listing, the master
remembers who holds one (granted when it sent a complete listing, or when the session
created the directory) and, before acknowledging a change to that directory by anyone
else, recalls those listings: the server sends `InvalidateListings` and waits for the
answers. A client that does not answer delays the change by at most what is left of its
listing's lifetime (its `listing_ttl_ms` plus a margin for the trip), after which its
listing has expired on its own.

A recall is one-shot: the holder drops the listing and is granted a new one when it next
fetches it. Grants live one listing lifetime, so their number is bounded by the rate of
listings served; `sweep` drops the expired ones.
"""

from __future__ import annotations

from ..proto import messages as m

MARGIN_S = 0.5  # the client starts its listing's clock after we start ours; cover the trip


class ListingLeases:
    def __init__(self):
        self.ttl: dict[bytes, float] = {}  # session -> seconds it keeps a listing
        self.by_dir: dict[int, dict[bytes, float]] = {}  # directory -> {session: expires}

    def set_ttl(self, session: bytes, ttl_ms: int) -> None:
        if ttl_ms > 0:
            self.ttl[session] = ttl_ms / 1000
        else:
            self.ttl.pop(session, None)

    def grant(self, directory: int, session: bytes, now: float) -> None:
        ttl = self.ttl.get(session)
        if ttl is None:
            return
        self.by_dir.setdefault(directory, {})[session] = now + ttl + MARGIN_S

    def renew(self, directory: int, session: bytes, now: float) -> bool:
        """Extend the session's grant on `directory` if it still has one. A grant is
        there only while no other session changed the directory since it was given
        (`recall` takes every other holder's grant, expired or not; `sweep` and
        `forget_session` take grants too, and then this says no): so the names the
        session kept are still the directory's. Expired grants count as well, for the
        same reason."""
        holders = self.by_dir.get(directory)
        if not holders or session not in holders:
            return False
        self.grant(directory, session, now)
        return session in holders

    def recall(self, dirs: list[int] | None, changer: bytes,
               now: float) -> dict[bytes, tuple[list[int], float]]:
        """The change of `changer` touches `dirs` (None: any directory). Returns, for every
        other session holding one of those listings, (its directories, the latest expiry)
        and forgets those grants."""
        out: dict[bytes, tuple[list[int], float]] = {}
        for d in (list(self.by_dir) if dirs is None else dirs):
            holders = self.by_dir.get(d)
            if not holders:
                continue
            for session in [s for s in holders if s != changer]:
                expires = holders.pop(session)
                if expires > now:
                    got = out.get(session)
                    out[session] = ([*got[0], d], max(got[1], expires)) if got else ([d], expires)
            if not holders:
                del self.by_dir[d]
        return out

    def forget_session(self, session: bytes) -> None:
        self.ttl.pop(session, None)
        for d in list(self.by_dir):
            holders = self.by_dir[d]
            holders.pop(session, None)
            if not holders:
                del self.by_dir[d]

    def sweep(self, now: float) -> None:
        """Drop expired grants (they need no recall)."""
        for d in list(self.by_dir):
            holders = self.by_dir[d]
            for session in [s for s, t in holders.items() if t <= now]:
                del holders[session]
            if not holders:
                del self.by_dir[d]


def touched_dirs(op: m.Op) -> list[int] | None:
    """Directories whose listing `op` may change; None when it is not simple to tell."""
    if isinstance(op, (m.Mknod, m.Mkdir, m.Symlink, m.Link, m.Unlink, m.Rmdir)):
        return [op.parent]
    if isinstance(op, m.Rename):
        return [op.parent, op.new_parent]
    if isinstance(op, m.Snapshot):
        return None  # the destination and every directory made below it
    if isinstance(op, m.Undelete):
        return None  # the restored path, with any directory it re-made
    return []
