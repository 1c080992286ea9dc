"""File locks held by the master: `flock`, POSIX byte-range and OFD locks of every client.

Theory of operation
-------------------
A lock belongs to an *owner*: a client session and the kernel's lock owner within it (a
process's file table for POSIX locks, an open file for `flock` and OFD locks; FUSE hands
the mount one 64-bit id for either). Owners of one session never conflict with
themselves; owners of different sessions, or different owners of one session, conflict
exactly as on a local file system: two ranges that overlap conflict unless both are read
locks. `flock` locks live in a space of their own (on Linux they never conflict with POSIX
locks) and cover the whole file.

Setting a lock replaces what the same owner held on that range, splitting older locks
where the new range cuts through them (so F_UNLCK of the middle of a range leaves two),
and merges neighbours of the same type, as the kernel's `posix_lock_inode` does. Nothing
here waits: a conflicting request is answered with the holder, and the caller (the
master shell, `client_port.py`) decides whether the client waits.

The table is metadata: it lives in the namespace and changes only by journaled records
(`SetLock`, `ReleaseLocks`, a session's end), so a restarted master, and with HA the next
leader, holds the same locks. Waiting clients are not metadata: `LockWaiters` is the
shell's volatile list of who to wake when a lock on a file goes; after a failover the
clients send their waits again.

No I/O, no clocks: time never matters to a lock.
"""

from __future__ import annotations

LOCK_POSIX = 0  # fcntl F_SETLK/F_SETLKW and OFD locks: byte ranges
LOCK_FLOCK = 1  # flock(2): whole file, a space of its own
KINDS = (LOCK_POSIX, LOCK_FLOCK)

F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2  # as Linux numbers them (and FUSE passes them)
OFFSET_MAX = (1 << 63) - 1  # "to the end of the file, however long it grows"


class FileLock:
    """One locked range [start, end] (inclusive) of one owner."""

    __slots__ = ("session", "owner", "pid", "type", "start", "end")

    def __init__(self, session: bytes, owner: int, pid: int, type: int, start: int,
                 end: int):
        self.session = session
        self.owner = owner
        self.pid = pid
        self.type = type
        self.start = start
        self.end = end

    def row(self) -> list:
        return [self.session, self.owner, self.pid, self.type, self.start, self.end]

    def __repr__(self) -> str:
        kind = "RW"[self.type] if self.type in (F_RDLCK, F_WRLCK) else "?"
        return (f"FileLock({self.session.hex()[:8]}/{self.owner:x} pid {self.pid} "
                f"{kind} {self.start}-{self.end})")


def check_request(kind: int, type: int, start: int, end: int) -> None:
    """A request's shape; raises ValueError (the caller answers EINVAL)."""
    if kind not in KINDS:
        raise ValueError(f"unknown lock kind {kind}")
    if type not in (F_RDLCK, F_WRLCK, F_UNLCK):
        raise ValueError(f"unknown lock type {type}")
    if not 0 <= start <= end <= OFFSET_MAX:
        raise ValueError(f"bad lock range {start}-{end}")


class LockTable:
    """Every lock of every file, by (inode, kind)."""

    def __init__(self):
        self.by_file: dict[tuple[int, int], list[FileLock]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_file.values())

    def conflict(self, inode: int, kind: int, session: bytes, owner: int, type: int,
                 start: int, end: int) -> FileLock | None:
        """The first lock of another owner that keeps (session, owner) from taking
        `type` on [start, end]; None when it may."""
        if type == F_UNLCK:
            return None
        for lk in self.by_file.get((inode, kind), ()):
            if lk.owner == owner and lk.session == session:
                continue
            if lk.end < start or lk.start > end:
                continue
            if type == F_WRLCK or lk.type == F_WRLCK:
                return lk
        return None

    def set(self, inode: int, kind: int, session: bytes, owner: int, pid: int, type: int,
            start: int, end: int) -> bool:
        """Make (session, owner) hold `type` on [start, end] (F_UNLCK: nothing). The
        caller has checked `conflict`. Returns whether anything this owner held there
        was given up or weakened (waiters on the file may now proceed)."""
        key = (inode, kind)
        locks = self.by_file.get(key, [])
        others: list[FileLock] = []
        mine: list[FileLock] = []
        freed = False
        for lk in locks:
            if lk.owner != owner or lk.session != session:
                others.append(lk)
            elif lk.end < start or lk.start > end:
                mine.append(lk)
            else:
                if lk.type == F_WRLCK and type != F_WRLCK or type == F_UNLCK:
                    freed = True
                if lk.start < start:
                    mine.append(FileLock(session, owner, lk.pid, lk.type, lk.start, start - 1))
                if lk.end > end:
                    mine.append(FileLock(session, owner, lk.pid, lk.type, end + 1, lk.end))
        if type != F_UNLCK:
            mine.append(FileLock(session, owner, pid, type, start, end))
        merged = _merge(mine)
        if others or merged:
            self.by_file[key] = others + merged
        else:
            self.by_file.pop(key, None)
        return freed

    def release_owner(self, inode: int, session: bytes, owner: int,
                      kind: int | None = None) -> bool:
        """Drop every lock of (session, owner) on `inode` (of one kind, or all: a close).
        Returns whether there was any."""
        freed = False
        for k in (KINDS if kind is None else (kind,)):
            locks = self.by_file.get((inode, k))
            if not locks:
                continue
            kept = [lk for lk in locks if lk.owner != owner or lk.session != session]
            if len(kept) != len(locks):
                freed = True
                if kept:
                    self.by_file[(inode, k)] = kept
                else:
                    del self.by_file[(inode, k)]
        return freed

    def holds(self, inode: int, session: bytes, owner: int) -> bool:
        return any(lk.owner == owner and lk.session == session
                   for k in KINDS for lk in self.by_file.get((inode, k), ()))

    def inodes_of(self, session: bytes) -> set[int]:
        """The files on which `session` holds any lock."""
        return {inode for (inode, _), locks in self.by_file.items()
                if any(lk.session == session for lk in locks)}

    def release_session(self, session: bytes) -> set[int]:
        """Drop every lock of `session`; returns the files that had any."""
        freed: set[int] = set()
        for key in list(self.by_file):
            locks = self.by_file[key]
            kept = [lk for lk in locks if lk.session != session]
            if len(kept) != len(locks):
                freed.add(key[0])
                if kept:
                    self.by_file[key] = kept
                else:
                    del self.by_file[key]
        return freed

    # ------------------------------------------------------------ checkpoints

    def rows(self) -> list[list]:
        return [[inode, kind, *lk.row()] for (inode, kind), locks in self.by_file.items()
                for lk in locks]

    def load(self, rows) -> None:
        for inode, kind, session, owner, pid, type, start, end in rows:
            self.by_file.setdefault((inode, kind), []).append(
                FileLock(bytes(session), owner, pid, type, start, end))


def _merge(locks: list[FileLock]) -> list[FileLock]:
    """One owner's locks, sorted, with overlapping or adjoining ranges of one type
    joined."""
    if len(locks) < 2:
        return locks
    locks.sort(key=lambda lk: lk.start)
    out = [locks[0]]
    for lk in locks[1:]:
        last = out[-1]
        if lk.type == last.type and lk.start <= last.end + 1:
            if lk.end > last.end:
                out[-1] = FileLock(last.session, last.owner, lk.pid, last.type, last.start,
                                   lk.end)
        else:
            out.append(lk)
    return out


class LockWaiters:
    """Clients waiting for a lock (volatile: not metadata). A waiter is woken, once,
    when a lock on its file is given up; it then asks again (and waits again if it
    still conflicts). Waking everyone on the file keeps this table free of lock logic,
    and a client asks again anyway after reconnecting (failover)."""

    def __init__(self):
        self.by_inode: dict[int, dict[bytes, list[int]]] = {}

    def add(self, inode: int, session: bytes, wait_id: int) -> None:
        ids = self.by_inode.setdefault(inode, {}).setdefault(session, [])
        if wait_id not in ids:
            ids.append(wait_id)

    def take(self, inode: int) -> dict[bytes, list[int]]:
        """Everyone waiting on `inode` (forgotten here: each is woken once)."""
        return self.by_inode.pop(inode, {})

    def forget_session(self, session: bytes) -> None:
        for inode in list(self.by_inode):
            waiting = self.by_inode[inode]
            waiting.pop(session, None)
            if not waiting:
                del self.by_inode[inode]
