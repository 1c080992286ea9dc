"""The operator's forced voter set (AdminForceVoters) when a voter majority is gone."""
from elkfs.consensus.master import LEADER
from elkfs.consensus.messages import AdminForceVoters, Tick

from .test_consensus_master import Net, elect_m1

NEW_SET = ("v3.1", "v4.1", "v5.1")


def lose_v1_v2(net):
    m1 = elect_m1(net)
    net.cut = {"v1", "v2"}                  # gone for good
    t = 3.0
    while m1.role == LEADER:                # its renewals reach one voter of three
        t += 0.25
        net.tick("m1", t)
        net.deliver()
        net.tick("m2", t)
        net.deliver()
    return m1, t


def run(net, until, step=0.05):
    while net.now < until:
        net.now += step
        for m in ("m1", "m2"):
            net.step(m, Tick())
        net.deliver()


def test_refused_while_a_leader_was_heard_lately():
    net = Net(spare_voters=("v4", "v5"))
    elect_m1(net)
    net.now = 3.3
    net.step("m2", AdminForceVoters(NEW_SET))
    assert net.nodes["m2"].force is None
    assert "m2.1 t1 force-refused" in net.events


def test_force_waits_out_every_promise_then_leads_with_the_new_set():
    net = Net(spare_voters=("v4", "v5"))
    m1, t = lose_v1_v2(net)
    m2 = net.nodes["m2"]
    net.now = t + 2 * m2.cfg.lease_duration_s
    net.step("m2", AdminForceVoters(NEW_SET))
    assert m2.force is not None and "m2.1 t1 force-armed" in net.events
    armed = net.now
    run(net, armed + m2._force_wait_s() - 0.1)
    assert m2.role != LEADER                        # still waiting out old promises
    run(net, armed + m2._force_wait_s() + 1.0)
    assert m2.role == LEADER and m2.ready and m1.role != LEADER
    assert m2.record.voters == NEW_SET
    assert any(e.endswith("force-done") for e in net.events)


def test_refused_when_a_voter_still_holds_a_lease():
    net = Net(spare_voters=("v4", "v5"))
    m1, t = lose_v1_v2(net)
    m2 = net.nodes["m2"]
    net.now = t + 2 * m2.cfg.lease_duration_s
    net.step("m2", AdminForceVoters(NEW_SET))
    v3 = net.nodes["v3"]
    v3.holder, v3.until = "m9.1", net.now + 100   # a leader the operator did not see
    run(net, net.now + m2._force_wait_s() + 0.5)
    assert m2.role != LEADER and m2.force is None
    assert any(e.startswith("m2.1") and e.endswith("force-refused") for e in net.events)


def test_the_forced_term_is_above_every_masters_term():
    """Sim seed 100240: the only voters that saw term 1 were destroyed and this master never
    heard its leader; without the operator's floor it would lead in term 1 a second time."""
    net = Net(spare_voters=("v4", "v5"))
    m1, t = lose_v1_v2(net)
    m2 = net.nodes["m2"]
    net.now = t + 2 * m2.cfg.lease_duration_s
    net.step("m2", AdminForceVoters(NEW_SET, min_term=7))
    run(net, net.now + m2._force_wait_s() + 1.0)
    assert m2.role == LEADER and m2.accepted_term == 8
