"""The mount's metadata cache: attributes by inode and whole directory listings.

Pure state, no I/O: the caller passes the monotonic time and does the master requests.

Why: the kernel asks the mount far more than applications ask the kernel. A `mkdir` is a
LOOKUP of the new name (to learn it is absent), the MKDIR, and a GETATTR of the parent
(the kernel drops a directory's attributes when it changes one). With this cache only the
MKDIR reaches the master: the LOOKUP is answered from the directory's listing and the
GETATTR from the parent's attributes that came back with the MKDIR reply.

What it promises. Listings are never stale: the master recalls a listing from every
mount that keeps it before it acknowledges anyone else's change to that directory
(`elkfs/master/listings.py`), so a name created or removed elsewhere is seen here as soon
as the creator has been told it exists. Attributes are as fresh as the kernel's own
attribute cache makes them anyway: an answer is never older than `mfsattrcacheto`,
counted from when the master produced it, and the kernel is told to keep it only for the
time left, so its copy and ours together never exceed that.

Listings are complete or absent: a listing comes from one atomic ReadDir of the whole
directory (or from a directory this mount just created, which is empty), then follows this
mount's own changes, and lives `mfsdirentrycacheto` seconds at most; after that it is
fetched again, or renewed (`ReadDir(renew=True)`: the master still holds this mount's
grant, so nobody else changed the directory) when it is asked for a name it does not
have (the names alone answer that; a name it has also needs fresh attributes, which a
fetch brings, unless the mount holds that file: see `ElkOperations._held_attrs`). A
listing fetch that
was requested before a local change or a recall of that directory may miss it, so its
answer is dropped (`fetch_mark`).
"""

from __future__ import annotations

from ..proto import messages as m

LISTING_MAX = 10000  # larger directories are not cached as listings
ATTRS_MAX = 200_000
LISTINGS_MAX = 2000


def bounded_put(d: dict, key, value, limit: int) -> bool:
    """`d[key] = value`, emptying `d` first when a new key would make it exceed `limit`
    (the mount's caches are cheap to refill; a bound matters more than what is lost).
    True if `d` was emptied."""
    emptied = key not in d and len(d) >= limit
    if emptied:
        d.clear()
    d[key] = value
    return emptied


class Listing:
    __slots__ = ("names", "expires")

    def __init__(self, names: dict[bytes, int], expires: float):
        self.names = names
        self.expires = expires


class MetaCache:
    def __init__(self, attr_ttl: float, dir_ttl: float):
        self.attr_ttl = attr_ttl
        self.dir_ttl = dir_ttl
        self.attrs: dict[int, tuple[m.Attr, float]] = {}  # inode -> (attr, expires)
        self.listings: dict[int, Listing] = {}
        self.change_seq: dict[int, int] = {}  # directory -> local changes sent to it
        self.gone: dict[int, None] = {}  # inodes this mount unlinked and the master freed
        self.epoch = 0  # bumped when every listing is dropped at once
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------ attributes

    def put(self, attr: m.Attr | None, now: float) -> None:
        if attr is None or self.attr_ttl <= 0:
            return
        bounded_put(self.attrs, attr.inode, (attr, now + self.attr_ttl), ATTRS_MAX)

    def attr(self, inode: int, now: float) -> tuple[m.Attr, float] | None:
        """(attributes, seconds they may still be cached) or None."""
        hit = self.attrs.get(inode)
        if hit is None or hit[1] <= now:
            self.misses += 1
            return None
        self.hits += 1
        return hit[0], hit[1] - now

    def last(self, inode: int, now: float) -> tuple[m.Attr, float] | None:
        """The last attributes known, however old: (attributes, seconds they may still be
        cached, 0 once expired) or None."""
        hit = self.attrs.get(inode)
        if hit is None:
            return None
        return hit[0], max(0.0, hit[1] - now)

    def drop(self, inode: int) -> None:
        self.attrs.pop(inode, None)

    def is_gone(self, inode: int) -> bool:
        return inode in self.gone

    # ------------------------------------------------------------ listings

    def lookup(self, parent: int, name: bytes, now: float):
        """None: the cache cannot tell. Otherwise (inode or 0 when absent, seconds left)."""
        listing = self.listings.get(parent)
        if listing is None or listing.expires <= now:
            return None
        return listing.names.get(name, 0), listing.expires - now

    def has_listing(self, parent: int) -> bool:
        return parent in self.listings

    def named(self, parent: int, name: bytes) -> int:
        """The inode the listing of `parent` kept here, expired or not, has for `name`;
        0 when it has no such name (or there is no listing)."""
        listing = self.listings.get(parent)
        return 0 if listing is None else listing.names.get(name, 0)

    def renew(self, parent: int, mark: tuple[int, int], now: float) -> bool:
        """The master renewed the listing asked for with `mark` = fetch_mark(parent):
        no other client changed the directory since it was fetched, so the names kept
        are good for another lifetime. This mount's own changes meanwhile are in them
        (unlike a fetched listing, which may predate them); a recall since took the
        listing away, and so did dropping them all (the epoch)."""
        listing = self.listings.get(parent)
        if self.dir_ttl <= 0 or listing is None or self.epoch != mark[0]:
            return False
        listing.expires = now + self.dir_ttl
        return True

    def listing_size(self, parent: int) -> int:
        listing = self.listings.get(parent)
        return -1 if listing is None else len(listing.names)

    def fetch_mark(self, parent: int) -> tuple[int, int]:
        """Taken when a listing request goes out; `install` compares it."""
        return self.epoch, self.change_seq.get(parent, 0)

    def install(self, parent: int, entries: list[m.DirEntry], mark: tuple[int, int],
                now: float) -> bool:
        """A complete listing fetched with `mark` = fetch_mark(parent) at the time the
        request went out. Dropped if a change or recall of the directory came since."""
        if self.dir_ttl <= 0 or self.fetch_mark(parent) != mark:
            return False
        if len(entries) > LISTING_MAX:
            self.listings.pop(parent, None)
            return False
        bounded_put(self.listings, parent,
                    Listing({e.name: e.attr.inode for e in entries}, now + self.dir_ttl),
                    LISTINGS_MAX)
        for e in entries:
            self.put(e.attr, now)
        return True

    def created_dir(self, inode: int, epoch: int, now: float) -> None:
        """This mount created `inode` (the mkdir went out at `epoch`): it is empty, unless
        the master recalled it before the reply arrived (someone else already changed it)."""
        if self.dir_ttl > 0 and inode not in self.change_seq and epoch == self.epoch:
            self.listings[inode] = Listing({}, now + self.dir_ttl)

    def drop_listing(self, parent: int) -> None:
        self.listings.pop(parent, None)

    # ------------------------------------------------------------ this mount's changes

    def changing(self, parent: int) -> int:
        """A change to `parent` is about to be sent."""
        seq = self.change_seq.get(parent, 0) + 1
        if bounded_put(self.change_seq, parent, seq, ATTRS_MAX):
            self.epoch += 1  # counts restart from 0: no earlier fetch mark may match again
        return seq

    def invalidate(self, dirs: list[int] | None) -> None:
        """The master recalled these listings (None: all of them)."""
        if dirs is None:
            self.listings.clear()
            self.epoch += 1
            return
        for d in dirs:
            self.listings.pop(d, None)
            self.changing(d)  # a fetch in flight may predate the change

    def added(self, parent: int, name: bytes, out: m.EntryOut, now: float) -> None:
        self.put(out.attr, now)
        self.put(out.parent, now)
        listing = self.listings.get(parent)
        if listing is not None:
            if len(listing.names) >= LISTING_MAX:
                del self.listings[parent]
            else:
                listing.names[name] = out.attr.inode

    def removed(self, parent: int, name: bytes, out: m.Result | None, now: float) -> None:
        listing = self.listings.get(parent)
        if listing is not None:
            inode = listing.names.pop(name, 0)
            if inode:
                self.drop(inode)  # nlink changed; its new attributes follow if it lives on
                if isinstance(out, m.ChangedOut) and all(a.inode != inode for a in out.attrs):
                    bounded_put(self.gone, inode, None, ATTRS_MAX)
        self._changed(out, now)

    def moved(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
              exchange: bool, out: m.Result | None, now: float) -> None:
        src = self.listings.get(parent)
        dst = self.listings.get(new_parent)
        inode = src.names.get(name, 0) if src is not None else 0
        replaced = dst.names.get(new_name, 0) if dst is not None else 0
        if inode and inode == replaced:
            pass  # two names of one file (or a name onto itself): POSIX says nothing happens
        elif (src is None or not inode) or (exchange and (dst is None or not replaced)):
            # Not enough known to follow the change: forget both listings.
            self.listings.pop(parent, None)
            self.listings.pop(new_parent, None)
        else:
            del src.names[name]
            if exchange:
                src.names[name] = replaced
            if dst is not None:
                dst.names[new_name] = inode
        if replaced and not exchange and replaced != inode:
            self.drop(replaced)
        self._changed(out, now)

    def _changed(self, out: m.Result | None, now: float) -> None:
        if isinstance(out, m.ChangedOut):
            for attr in out.attrs:
                self.put(attr, now)

    def stale(self, parent: int) -> None:
        """The master contradicted the listing (EEXIST for a name it lacks, ENOENT for one
        it has): another client changed the directory."""
        self.listings.pop(parent, None)
