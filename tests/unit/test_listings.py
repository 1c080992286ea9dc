"""The master's bookkeeping of who keeps which directory listing
(`elkfs/master/listings.py`): grants, one-shot recalls that skip the changer and ignore
expired grants, sweeping and forgetting sessions, and which directories an op touches."""

from __future__ import annotations

import pytest

from elkfs.master.listings import MARGIN_S, ListingLeases, touched_dirs
from elkfs.proto import messages as m

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16
D1, D2, D3 = 100, 200, 300


def leases(**ttls_ms: int) -> ListingLeases:
    lz = ListingLeases()
    for name, ttl in ttls_ms.items():
        lz.set_ttl(name.encode() * 16, ttl)
    return lz


def test_grant_only_for_sessions_that_keep_listings():
    lz = leases(A=1000)
    lz.grant(D1, B, 0.0)  # B registered without a listing ttl
    assert lz.by_dir == {}
    lz.grant(D1, A, 10.0)
    assert lz.by_dir == {D1: {A: pytest.approx(10.0 + 1.0 + MARGIN_S)}}
    lz.set_ttl(A, 0)  # re-registered without listings
    lz.grant(D2, A, 10.0)
    assert D2 not in lz.by_dir
    lz.set_ttl(B, -5)
    lz.grant(D2, B, 10.0)
    assert D2 not in lz.by_dir


def test_a_new_grant_extends_the_old_one():
    lz = leases(A=2000)
    lz.grant(D1, A, 0.0)
    lz.grant(D1, A, 5.0)
    assert lz.by_dir[D1][A] == pytest.approx(7.0 + MARGIN_S)


def test_recall_skips_the_changer_and_keeps_its_grant():
    lz = leases(A=1000, B=1000)
    lz.grant(D1, A, 0.0)
    lz.grant(D1, B, 0.0)
    out = lz.recall([D1], A, 0.5)
    assert out == {B: ([D1], pytest.approx(1.0 + MARGIN_S))}
    assert lz.by_dir == {D1: {A: pytest.approx(1.0 + MARGIN_S)}}
    # Only the changer holds it: nobody to recall.
    assert lz.recall([D1], A, 0.5) == {}
    assert A in lz.by_dir[D1]


def test_recall_groups_directories_per_session_with_the_latest_expiry():
    lz = leases(A=1000, B=3000, C=1000)
    lz.grant(D1, B, 0.0)
    lz.grant(D2, B, 1.0)
    lz.grant(D2, C, 0.0)
    lz.grant(D3, B, 0.0)
    out = lz.recall([D1, D2], A, 0.5)
    assert set(out) == {B, C}
    dirs, expires = out[B]
    assert sorted(dirs) == [D1, D2] and expires == pytest.approx(4.0 + MARGIN_S)
    assert out[C] == ([D2], pytest.approx(1.0 + MARGIN_S))
    assert set(lz.by_dir) == {D3}  # untouched directories keep their grants


def test_recall_is_one_shot():
    lz = leases(B=1000)
    lz.grant(D1, B, 0.0)
    assert set(lz.recall([D1], A, 0.1)) == {B}
    assert lz.recall([D1], A, 0.2) == {}  # B fetches the listing again to be granted again
    assert lz.by_dir == {}
    lz.grant(D1, B, 0.3)
    assert set(lz.recall([D1], C, 0.4)) == {B}


def test_expired_grants_are_not_recalled_but_forgotten():
    lz = leases(B=1000, C=1000)
    lz.grant(D1, B, 0.0)
    lz.grant(D1, C, 5.0)
    out = lz.recall([D1], A, 0.0 + 1.0 + MARGIN_S)  # B's grant ends exactly now
    assert set(out) == {C}
    assert lz.by_dir == {}
    lz.grant(D2, B, 0.0)
    assert lz.recall([D2], A, 100.0) == {}
    assert lz.by_dir == {}


def test_the_same_directory_twice_is_recalled_once():
    # A rename within one directory touches [parent, parent].
    lz = leases(B=1000)
    lz.grant(D1, B, 0.0)
    assert lz.recall(touched_dirs(m.Rename(D1, b"a", D1, b"b")), A, 0.0) == {
        B: ([D1], pytest.approx(1.0 + MARGIN_S))}


def test_recall_of_none_means_every_directory():
    lz = leases(A=1000, B=1000, C=1000)
    lz.grant(D1, B, 0.0)
    lz.grant(D2, B, 0.0)
    lz.grant(D3, C, 0.0)
    lz.grant(D3, A, 0.0)
    out = lz.recall(None, A, 0.0)
    assert sorted(out[B][0]) == [D1, D2] and out[C][0] == [D3]
    assert lz.by_dir == {D3: {A: pytest.approx(1.0 + MARGIN_S)}}


def test_recall_of_no_directories_or_unknown_ones():
    lz = leases(B=1000)
    lz.grant(D1, B, 0.0)
    assert lz.recall([], A, 0.0) == {}
    assert lz.recall([D2, D3], A, 0.0) == {}
    assert B in lz.by_dir[D1]


def test_sweep_drops_only_expired_grants():
    lz = leases(A=1000, B=5000)
    lz.grant(D1, A, 0.0)
    lz.grant(D1, B, 0.0)
    lz.grant(D2, A, 0.0)
    lz.grant(D3, A, 10.0)
    lz.sweep(1.0 + MARGIN_S)  # A's first grants end exactly now
    assert lz.by_dir == {D1: {B: pytest.approx(5.0 + MARGIN_S)},
                         D3: {A: pytest.approx(11.0 + MARGIN_S)}}
    lz.sweep(1000.0)
    assert lz.by_dir == {}


def test_forget_session():
    lz = leases(A=1000, B=1000)
    lz.grant(D1, A, 0.0)
    lz.grant(D1, B, 0.0)
    lz.grant(D2, A, 0.0)
    lz.forget_session(A)
    assert lz.by_dir == {D1: {B: pytest.approx(1.0 + MARGIN_S)}}
    assert A not in lz.ttl and B in lz.ttl
    assert lz.recall([D1, D2], C, 0.0) == {B: ([D1], pytest.approx(1.0 + MARGIN_S))}
    lz.grant(D1, A, 0.0)  # until it registers again with a ttl
    assert lz.by_dir == {}
    lz.forget_session(C)  # unknown: no error


def test_touched_dirs():
    assert touched_dirs(m.Mknod(D1, b"f", 0o100644, 0, 0)) == [D1]
    assert touched_dirs(m.Mkdir(D1, b"d", 0o755, 0, 0)) == [D1]
    assert touched_dirs(m.Symlink(D1, b"l", b"target", 0, 0)) == [D1]
    assert touched_dirs(m.Link(7, D2, b"h")) == [D2]
    assert touched_dirs(m.Unlink(D1, b"f")) == [D1]
    assert touched_dirs(m.Rmdir(D1, b"d")) == [D1]
    assert touched_dirs(m.Rename(D1, b"a", D2, b"b")) == [D1, D2]
    assert touched_dirs(m.Rename(D1, b"a", D2, b"b", m.RENAME_EXCHANGE)) == [D1, D2]
    assert touched_dirs(m.Snapshot(7, D2, b"copy")) is None
    assert touched_dirs(m.Undelete(7)) is None
    # Changes that leave every listing as it is.
    assert touched_dirs(m.SetAttr(7, m.SET_MODE, mode=0o600)) == []
    assert touched_dirs(m.Truncate(7, 0)) == []
    assert touched_dirs(m.SetXattr(7, b"user.x", b"v")) == []


def test_renew_holds_only_while_nobody_else_changed_the_directory():
    lz = leases(A=1000, B=1000)
    assert not lz.renew(D1, A, 0.0)  # never granted
    lz.grant(D1, A, 0.0)
    assert lz.renew(D1, A, 5.0)  # expired (1.5 s) but nobody changed D1: renewed
    assert lz.by_dir[D1][A] == pytest.approx(5.0 + 1.0 + MARGIN_S)
    lz.recall([D1], A, 5.5)  # A's own change keeps A's grant
    assert lz.renew(D1, A, 5.5)
    lz.grant(D2, A, 5.5)
    assert lz.recall([D1], B, 6.0) == {A: ([D1], pytest.approx(6.5 + MARGIN_S))}
    assert not lz.renew(D1, A, 6.0)  # recalled: A must fetch the listing again
    lz.grant(D2, A, 6.0)
    lz.recall([D2], B, 99.0)  # an expired grant is taken (without a recall) as well
    assert not lz.renew(D2, A, 99.0)
    lz.grant(D3, A, 0.0)
    lz.sweep(50.0)
    assert not lz.renew(D3, A, 50.0)
    lz.grant(D3, A, 50.0)
    lz.forget_session(A)
    assert not lz.renew(D3, A, 50.0)
