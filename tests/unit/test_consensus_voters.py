"""Voter-set changes at the leader (HA.md "Voter set", HA-traces.md 7)."""
from elkfs.consensus.messages import AdminChangeVoters

from .test_consensus_master import Net, elect_m1


def renew_rounds(net, m1, until, step=0.5):
    while net.now < until:
        net.tick("m1", net.now + step)
        net.deliver()


def test_replacement_is_two_changes_addition_first():
    net = Net(spare_voters=("v4",))
    m1 = elect_m1(net)
    renew_rounds(net, m1, 4.0)             # v4 acknowledges renewals (it is not a voter yet)
    net.step("m1", AdminChangeVoters(add="v4.1", remove="v2.1"))
    assert "m1.1 t1 voters-change-queued" in net.events
    net.deliver()
    renew_rounds(net, m1, 6.0)
    assert m1.record.voters == ("v1.1", "v3.1", "v4.1")
    assert net.events.count("m1.1 t1 record-proposed") == 4   # re-stamp, +m2, +v4, -v2


def test_a_new_set_without_an_acknowledging_majority_is_refused():
    net = Net()
    m1 = elect_m1(net)
    before = m1.record
    net.cut = {"v3"}
    renew_rounds(net, m1, 5.0)            # only v1 and v2 still acknowledge
    net.step("m1", AdminChangeVoters(add="v9.1"))   # 2 of {v1, v2, v3, v9}: no majority
    renew_rounds(net, m1, 6.0)
    assert m1.record.voters == before.voters
    assert "m1.1 t1 voters-change-refused" in net.events


def test_the_new_set_counts_from_the_proposal():
    """The leader's lease rests on v1 and v2; it removes v1: from the proposal on, the
    set {v2, v3} counts, and v3 has not acknowledged it, so the lease shrinks at once."""
    net = Net()
    m1 = elect_m1(net)
    net.cut = {"v3"}
    renew_rounds(net, m1, 4.0)
    net.cut = set()
    m1.lease.acked["v3.1"] = m1.lease.acked["v2.1"] - 0.9   # v3 last answered long ago
    lease_before = m1.lease_until
    net.step("m1", AdminChangeVoters(remove="v1.1"))
    assert m1.pending is not None and m1.pending.voters == ("v2.1", "v3.1")
    assert m1.lease_until < lease_before
    assert m1.lease_until == m1.lease.until([("v1.1", "v2.1", "v3.1"), ("v2.1", "v3.1")])
