"""The mount's metadata cache (`elkfs/mount/metacache.py`) as pure state: attribute and
listing lifetimes counted from an injected `now`, complete listings, following this
mount's own changes, and refusing listings fetched before a change or a recall."""

from __future__ import annotations

import stat

import pytest

from elkfs.mount import metacache
from elkfs.mount.metacache import LISTING_MAX, MetaCache
from elkfs.proto import messages as m

D1, D2, D3 = 100, 200, 300  # directories


def attr(inode: int, mode: int = stat.S_IFREG | 0o644, nlink: int = 1, size: int = 0) -> m.Attr:
    return m.Attr(inode, mode, 0, 0, 0, 0, 0, nlink, size, 0, 1)


def dattr(inode: int) -> m.Attr:
    return attr(inode, stat.S_IFDIR | 0o755, nlink=2)


def entries(**names: int) -> list[m.DirEntry]:
    return [m.DirEntry(name.encode(), attr(inode)) for name, inode in names.items()]


def listed(cache: MetaCache, parent: int, now: float) -> dict[bytes, int] | None:
    """The names of a live listing (None when it is absent or expired)."""
    if cache.lookup(parent, b"\0probe", now) is None:
        return None
    return dict(cache.listings[parent].names)


def cache_with(parent: int, now: float = 0.0, attr_ttl: float = 1.0, dir_ttl: float = 5.0,
               **names: int) -> MetaCache:
    c = MetaCache(attr_ttl, dir_ttl)
    assert c.install(parent, entries(**names), c.fetch_mark(parent), now)
    return c


# ---------------------------------------------------------------- attributes


def test_attributes_live_attr_ttl_and_report_the_time_left():
    c = MetaCache(attr_ttl=1.0, dir_ttl=1.0)
    a = attr(7, size=42)
    c.put(a, 100.0)
    assert c.attr(7, 100.0) == (a, 1.0)
    got, left = c.attr(7, 100.25)
    assert got == a and left == pytest.approx(0.75)
    got, left = c.attr(7, 100.999)
    assert left == pytest.approx(0.001)
    assert c.attr(7, 101.0) is None  # expires exactly at put + ttl
    assert c.attr(7, 500.0) is None
    assert c.attr(8, 100.0) is None  # never put
    assert (c.hits, c.misses) == (3, 3)


def test_a_newer_put_restarts_the_clock_and_drop_forgets():
    c = MetaCache(1.0, 1.0)
    c.put(attr(7, size=1), 10.0)
    c.put(attr(7, size=2), 10.8)
    got, left = c.attr(7, 11.5)
    assert got.size == 2 and left == pytest.approx(0.3)
    c.drop(7)
    assert c.attr(7, 11.5) is None
    c.drop(12345)  # unknown: no error


def test_no_attribute_cache_when_its_ttl_is_zero_and_none_is_ignored():
    c = MetaCache(attr_ttl=0.0, dir_ttl=1.0)
    c.put(attr(7), 0.0)
    assert c.attr(7, 0.0) is None and not c.attrs
    c = MetaCache(1.0, 1.0)
    c.put(None, 0.0)
    assert not c.attrs


# ---------------------------------------------------------------- listings


def test_a_complete_listing_answers_present_and_absent_names_with_the_time_left():
    c = MetaCache(attr_ttl=1.0, dir_ttl=2.0)
    assert c.lookup(D1, b"a", 10.0) is None  # nothing known: the cache cannot tell
    assert not c.has_listing(D1) and c.listing_size(D1) == -1
    assert c.install(D1, entries(a=11, b=12), c.fetch_mark(D1), 10.0)
    assert c.has_listing(D1) and c.listing_size(D1) == 2
    assert c.lookup(D1, b"a", 10.0) == (11, 2.0)
    ino, left = c.lookup(D1, b"b", 11.5)
    assert ino == 12 and left == pytest.approx(0.5)
    ino, left = c.lookup(D1, b"nope", 11.5)
    assert ino == 0 and left == pytest.approx(0.5)  # complete: absent for sure
    assert c.lookup(D2, b"a", 10.0) is None  # another directory: unknown
    # The entries' attributes came with the listing (they live attr_ttl).
    assert c.attr(11, 10.5)[0] == attr(11)
    assert c.attr(12, 11.0) is None


def test_an_expired_listing_cannot_answer_but_is_still_known_to_exist():
    c = cache_with(D1, now=10.0, dir_ttl=2.0, a=11)
    assert c.lookup(D1, b"a", 12.0) is None
    assert c.lookup(D1, b"zzz", 99.0) is None  # never "absent" from an expired listing
    assert c.has_listing(D1)  # the mount refreshes listings of directories it works in
    assert c.install(D1, entries(b=13), c.fetch_mark(D1), 12.0)
    assert c.lookup(D1, b"a", 12.0) == (0, 2.0)  # replaced as a whole, not merged
    assert c.lookup(D1, b"b", 12.0) == (13, 2.0)


def test_no_listings_when_their_ttl_is_zero():
    c = MetaCache(attr_ttl=1.0, dir_ttl=0.0)
    assert not c.install(D1, entries(a=11), c.fetch_mark(D1), 0.0)
    c.created_dir(D2, c.epoch, 0.0)
    assert c.lookup(D1, b"a", 0.0) is None and c.lookup(D2, b"x", 0.0) is None
    assert not c.listings


def test_a_directory_this_mount_created_is_known_empty():
    c = MetaCache(1.0, 3.0)
    c.created_dir(D2, c.epoch, 5.0)
    assert c.lookup(D2, b"anything", 5.0) == (0, 3.0)
    assert c.lookup(D2, b"anything", 8.0) is None


def test_a_created_directory_recalled_before_the_reply_is_not_cached():
    c = MetaCache(1.0, 3.0)
    c.invalidate([D2])  # the recall overtook our mkdir's reply: someone changed it already
    c.created_dir(D2, c.epoch, 5.0)
    assert c.lookup(D2, b"x", 5.0) is None
    epoch = c.epoch
    c.invalidate(None)  # every listing dropped while the mkdir was out
    c.created_dir(D1, epoch, 5.0)
    assert c.lookup(D1, b"x", 5.0) is None


def test_stale_and_drop_listing_forget_the_listing_only():
    c = cache_with(D1, a=11)
    c.stale(D1)
    assert c.lookup(D1, b"a", 0.0) is None and not c.has_listing(D1)
    assert c.attr(11, 0.0) is not None
    c = cache_with(D1, a=11)
    c.drop_listing(D1)
    assert not c.has_listing(D1)
    c.stale(D3)  # unknown directories: no error
    c.drop_listing(D3)


# ---------------------------------------------------------------- fetches racing changes


def test_install_refused_when_this_mount_changed_the_directory_since_the_fetch():
    c = MetaCache(1.0, 5.0)
    mark = c.fetch_mark(D1)
    c.changing(D1)  # e.g. an unlink sent while the ReadDir was in flight
    assert not c.install(D1, entries(a=11), mark, 0.0)
    assert c.lookup(D1, b"a", 0.0) is None
    assert c.install(D1, entries(a=11), c.fetch_mark(D1), 0.0)  # a fresh fetch is fine


def test_install_unaffected_by_changes_to_other_directories():
    c = MetaCache(1.0, 5.0)
    mark = c.fetch_mark(D1)
    c.changing(D2)
    c.invalidate([D2, D3])
    assert c.install(D1, entries(a=11), mark, 0.0)


def test_install_refused_after_a_recall_of_that_directory():
    c = MetaCache(1.0, 5.0)
    mark = c.fetch_mark(D1)
    # The master's recall overtook the ReadDir answer (the callback runs on arrival,
    # the awaiting coroutine later): the answer may predate the recalled change.
    c.invalidate([D1])
    assert not c.install(D1, entries(a=11), mark, 0.0)
    assert not c.has_listing(D1)


def test_install_refused_after_a_recall_of_everything():
    c = cache_with(D2, a=11)
    mark = c.fetch_mark(D1)
    c.invalidate(None)  # reconnected: the master knows nothing of what we keep
    assert not c.listings
    assert not c.install(D1, entries(a=11), mark, 0.0)
    assert c.install(D1, entries(a=11), c.fetch_mark(D1), 0.0)


def test_invalidate_drops_exactly_the_recalled_listings():
    c = cache_with(D1, a=11)
    assert c.install(D2, entries(b=12), c.fetch_mark(D2), 0.0)
    assert c.install(D3, entries(c=13), c.fetch_mark(D3), 0.0)
    c.invalidate([D1, D3, 999])
    assert sorted(c.listings) == [D2]
    assert c.lookup(D1, b"a", 0.0) is None and c.lookup(D2, b"b", 0.0) == (12, 5.0)
    assert c.attr(11, 0.0) is not None  # attributes are not recalled
    c.invalidate([])
    assert sorted(c.listings) == [D2]
    c.invalidate(None)
    assert not c.listings


def test_listing_max():
    c = MetaCache(1.0, 5.0)
    big = [m.DirEntry(b"f%d" % i, attr(1000 + i)) for i in range(LISTING_MAX + 1)]
    assert not c.install(D1, big, c.fetch_mark(D1), 0.0)
    assert not c.has_listing(D1)
    # A directory that grew past the limit loses the listing it had.
    assert c.install(D1, big[:3], c.fetch_mark(D1), 0.0)
    assert not c.install(D1, big, c.fetch_mark(D1), 0.0)
    assert not c.has_listing(D1)
    # Exactly LISTING_MAX is kept; one more name added locally drops it.
    assert c.install(D1, big[:LISTING_MAX], c.fetch_mark(D1), 0.0)
    assert c.listing_size(D1) == LISTING_MAX
    c.added(D1, b"one-more", m.EntryOut(attr(5)), 0.0)
    assert not c.has_listing(D1)


def test_listings_max_bounds_the_number_of_listings(monkeypatch):
    monkeypatch.setattr(metacache, "LISTINGS_MAX", 3)
    c = MetaCache(1.0, 5.0)
    for d in (1, 2, 3):
        assert c.install(d, entries(a=d * 10), c.fetch_mark(d), 0.0)
    assert c.install(2, entries(a=99), c.fetch_mark(2), 0.0)  # a refresh: no eviction
    assert sorted(c.listings) == [1, 2, 3]
    assert c.install(4, entries(a=40), c.fetch_mark(4), 0.0)
    assert sorted(c.listings) == [4]


# ---------------------------------------------------------------- this mount's changes


def test_added_follows_into_a_cached_listing_with_both_attributes():
    c = cache_with(D1, now=0.0, a=11)
    out = m.EntryOut(attr(12, size=3), dattr(D1))
    c.added(D1, b"b", out, 0.5)
    assert listed(c, D1, 0.5) == {b"a": 11, b"b": 12}
    assert c.attr(12, 0.5)[0].size == 3
    assert c.attr(D1, 0.5)[0] == dattr(D1)  # the parent's GETATTR needs no round trip
    assert c.lookup(D1, b"b", 4.0) == (12, 1.0)  # the listing's clock did not restart


def test_added_to_an_uncached_directory_creates_no_listing():
    c = MetaCache(1.0, 5.0)
    c.added(D1, b"b", m.EntryOut(attr(12)), 0.0)
    assert c.lookup(D1, b"b", 0.0) is None and c.lookup(D1, b"other", 0.0) is None
    assert c.attr(12, 0.0) is not None


def test_removed_follows_and_marks_a_freed_inode_gone():
    c = cache_with(D1, a=11, b=12)
    c.put(attr(11), 0.0)
    # The unlink's ChangedOut lacks inode 11: the master freed it.
    c.removed(D1, b"a", m.ChangedOut([dattr(D1)]), 0.1)
    assert listed(c, D1, 0.1) == {b"b": 12}
    assert c.lookup(D1, b"a", 0.1) == (0, pytest.approx(4.9))
    assert c.is_gone(11) and not c.is_gone(12)
    assert c.attr(11, 0.1) is None
    assert c.attr(D1, 0.1)[0] == dattr(D1)


def test_removed_with_the_inode_still_alive_is_not_gone():
    c = cache_with(D1, a=11, b=12)
    # A hard link (or the trash, or an open file) keeps it: its new attributes came back.
    c.removed(D1, b"a", m.ChangedOut([dattr(D1), attr(11, nlink=1)]), 0.0)
    assert listed(c, D1, 0.0) == {b"b": 12}
    assert not c.is_gone(11)
    assert c.attr(11, 0.0)[0] == attr(11, nlink=1)


def test_removed_without_a_listing_or_an_answer_tells_nothing_about_gone():
    c = MetaCache(1.0, 5.0)
    c.put(attr(11), 0.0)
    c.removed(D1, b"a", m.ChangedOut([dattr(D1)]), 0.0)  # inode unknown: cannot tell
    assert not c.gone and not c.has_listing(D1)
    assert c.attr(D1, 0.0) is not None
    c = cache_with(D1, a=11)
    c.removed(D1, b"a", None, 0.0)
    assert listed(c, D1, 0.0) == {} and not c.is_gone(11)
    c.removed(D1, b"not-listed", m.ChangedOut([]), 0.0)
    assert not c.gone


def test_rmdir_follows_like_unlink():
    c = MetaCache(1.0, 5.0)
    assert c.install(D1, [m.DirEntry(b"sub", dattr(D2))], c.fetch_mark(D1), 0.0)
    c.removed(D1, b"sub", m.ChangedOut([dattr(D1)]), 0.0)
    assert listed(c, D1, 0.0) == {} and c.is_gone(D2)


def test_rename_within_a_directory():
    c = cache_with(D1, a=11, b=12)
    c.moved(D1, b"a", D1, b"c", False, m.ChangedOut([dattr(D1), attr(11)]), 0.0)
    assert listed(c, D1, 0.0) == {b"b": 12, b"c": 11}
    assert c.attr(11, 0.0) is not None


def test_rename_over_an_existing_name_drops_the_replaced_attributes():
    c = cache_with(D1, a=11, b=12)
    c.put(attr(12), 0.0)
    c.moved(D1, b"a", D1, b"b", False, m.ChangedOut([dattr(D1)]), 0.0)
    assert listed(c, D1, 0.0) == {b"b": 11}
    assert c.attr(12, 0.0) is None


def test_rename_between_two_cached_directories():
    c = cache_with(D1, a=11, b=12)
    assert c.install(D2, entries(x=21, a=22), c.fetch_mark(D2), 0.0)
    c.moved(D1, b"a", D2, b"a", False, m.ChangedOut([]), 0.0)
    assert listed(c, D1, 0.0) == {b"b": 12}
    assert listed(c, D2, 0.0) == {b"x": 21, b"a": 11}
    assert c.attr(22, 0.0) is None  # replaced


def test_rename_from_a_cached_into_an_uncached_directory():
    c = cache_with(D1, a=11, b=12)
    c.moved(D1, b"a", D2, b"z", False, m.ChangedOut([]), 0.0)
    assert listed(c, D1, 0.0) == {b"b": 12}
    assert not c.has_listing(D2)  # no listing invented for the destination


def test_rename_from_an_uncached_into_a_cached_directory_forgets_the_destination():
    c = cache_with(D2, x=21)
    # The moved inode is unknown, so the destination's listing cannot follow.
    c.moved(D1, b"a", D2, b"a", False, m.ChangedOut([attr(11)]), 0.0)
    assert not c.has_listing(D2) and not c.has_listing(D1)
    assert c.lookup(D2, b"a", 0.0) is None  # never "absent" for the name just moved in
    assert c.attr(11, 0.0) is not None


def test_rename_of_a_name_the_listing_lacks_forgets_both_listings():
    c = cache_with(D1, b=12)
    assert c.install(D2, entries(x=21), c.fetch_mark(D2), 0.0)
    c.moved(D1, b"ghost", D2, b"g", False, m.ChangedOut([]), 0.0)
    assert not c.has_listing(D1) and not c.has_listing(D2)


def test_rename_exchange_within_a_directory():
    c = cache_with(D1, a=11, b=12, c=13)
    c.put(attr(12), 0.0)
    c.moved(D1, b"a", D1, b"b", True, m.ChangedOut([dattr(D1)]), 0.0)
    assert listed(c, D1, 0.0) == {b"a": 12, b"b": 11, b"c": 13}
    assert c.attr(12, 0.0) is not None  # exchanged, not replaced: it still lives


def test_rename_exchange_between_two_cached_directories():
    c = cache_with(D1, a=11, keep=12)
    assert c.install(D2, entries(b=21), c.fetch_mark(D2), 0.0)
    c.moved(D1, b"a", D2, b"b", True, m.ChangedOut([]), 0.0)
    assert listed(c, D1, 0.0) == {b"a": 21, b"keep": 12}
    assert listed(c, D2, 0.0) == {b"b": 11}


def test_rename_exchange_with_an_uncached_side_forgets_both():
    c = cache_with(D1, a=11)
    c.moved(D1, b"a", D2, b"b", True, m.ChangedOut([]), 0.0)
    assert not c.has_listing(D1) and not c.has_listing(D2)
    c = cache_with(D2, b=21)
    c.moved(D1, b"a", D2, b"b", True, m.ChangedOut([]), 0.0)
    assert not c.has_listing(D1) and not c.has_listing(D2)
    # Exchange with a name the (cached) destination lacks: not enough known either.
    c = cache_with(D1, a=11)
    assert c.install(D2, entries(x=21), c.fetch_mark(D2), 0.0)
    c.moved(D1, b"a", D2, b"b", True, m.ChangedOut([]), 0.0)
    assert not c.has_listing(D1) and not c.has_listing(D2)


def test_changing_bumps_only_its_directory():
    c = MetaCache(1.0, 1.0)
    m1, m2 = c.fetch_mark(D1), c.fetch_mark(D2)
    assert c.changing(D1) == 1 and c.changing(D1) == 2
    assert c.fetch_mark(D1) != m1 and c.fetch_mark(D2) == m2


def test_rename_between_two_names_of_one_file_changes_nothing():
    c = cache_with(D1, a=11, b=11)
    c.moved(D1, b"a", D1, b"b", False, m.ChangedOut([]), 0.0)
    assert c.lookup(D1, b"a", 0.0) == (11, 5.0)
    assert c.lookup(D1, b"b", 0.0) == (11, 5.0)


def test_renew_extends_the_names_kept_with_this_mounts_own_changes():
    c = cache_with(D1, now=10.0, dir_ttl=2.0, a=11)
    assert c.named(D1, b"a") and not c.named(D1, b"b") and not c.named(D2, b"a")
    mark = c.fetch_mark(D1)
    c.changing(D1)  # this mount's own change meanwhile: it is in the names kept
    c.added(D1, b"b", m.EntryOut(attr(12), dattr(D1)), 12.5)
    assert c.renew(D1, mark, 13.0)
    assert c.lookup(D1, b"zzz", 14.0) == (0, 1.0)
    assert c.lookup(D1, b"b", 14.0) == (12, 1.0)
    assert c.lookup(D1, b"a", 14.0) == (11, 1.0)


def test_renew_refused_after_a_recall_or_when_everything_was_dropped():
    c = cache_with(D1, now=0.0, dir_ttl=2.0, a=11)
    mark = c.fetch_mark(D1)
    c.invalidate([D1])  # the recall overtook the renewal's answer
    assert not c.renew(D1, mark, 3.0)
    assert c.lookup(D1, b"zzz", 3.0) is None
    c = cache_with(D1, now=0.0, dir_ttl=2.0, a=11)
    mark = c.fetch_mark(D1)
    c.invalidate(None)
    assert not c.renew(D1, mark, 3.0)
    c = MetaCache(1.0, 0.0)
    assert not c.renew(D1, c.fetch_mark(D1), 0.0)
