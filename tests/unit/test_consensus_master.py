"""Transcript tests: masters and voters stepped one message at a time (etcd raft style).

``Net`` is a hand-driven network: nothing moves unless the test says so, so each trace of
HA-traces.md can be replayed exactly.  Journal writes complete only when the test calls
``sync``, which is how "before its own fsync" is expressed.
"""
import random

from elkfs.consensus.config import HAConfig
from elkfs.consensus.master import LEADER, Master
from elkfs.consensus.messages import (AdminStepDown, Append, ClientRead, ClientRegister,
                                      ClientWrite, Entry, JournalSynced, JournalWrite, Tick,
                                      VoteRequest, PreVote)
from elkfs.consensus.records import Record
from elkfs.consensus.voter import Voter
from tests.sim.app import ToyStore, op

VOTERS = ("v1", "v2", "v3")


def cfg(masters=("m1", "m2"), spare_voters=()):
    return HAConfig(voter_addrs=VOTERS + spare_voters, master_addrs=masters,
                    initial_voters=tuple(f"{v}.1" for v in VOTERS)).validate()


class Net:
    def __init__(self, masters=("m1", "m2"), now=0.0, spare_voters=()):
        self.now = now
        c = cfg(masters, spare_voters)
        self.nodes = {m: Master(f"{m}.1", m, c, ToyStore(), random.Random(7), now)
                      for m in masters}
        self.nodes.update({v: Voter(f"{v}.1", c, now - 10) for v in VOTERS + spare_voters})
        self.queue, self.replies, self.unsynced, self.events = [], [], {}, []
        self.cut: set[str] = set()

    def step(self, dest, msg):
        out = self.nodes[dest].step(self.now, msg)
        self.events += [f"{e.node} t{e.term} {e.event}" for e in out.lease_log]
        for w in out.journal:
            self.unsynced.setdefault(dest, []).append(w)
        for to, m in out.send:
            self.queue.append((to.split(".")[0], m))
        self.replies += [r for _, r in out.replies]
        return out

    def sync(self, dest):
        for w in self.unsynced.pop(dest, []):
            self.step(dest, JournalSynced(w.write_id))

    def deliver(self, sync=True, limit=10_000, drop=lambda to, m: False):
        while self.queue and limit:
            limit -= 1
            to, m = self.queue.pop(0)
            if to in self.cut or drop(to, m):
                continue
            if to in self.nodes:
                self.step(to, m)
            if sync:
                for d in list(self.unsynced):
                    self.sync(d)

    def tick(self, dest, at):
        self.now = at
        return self.step(dest, Tick())


def elect_m1(net):
    net.tick("m1", 3.0)          # hears no leader for D + jitter: pre-vote
    net.deliver()
    m1 = net.nodes["m1"]
    assert m1.role == LEADER and m1.ready, net.events
    return m1


def test_bootstrap_election_restamps_before_serving():
    net = Net()
    m1 = elect_m1(net)
    assert m1.record.rterm == m1.accepted_term and m1.record.members[0] == "m1.1"
    assert m1.record.members == ("m1.1", "m2.1")         # m2 held the (empty) last entry
    assert "m1.1 t1 lease-acquired" in net.events and "m1.1 t1 serving" in net.events
    assert m1.lease_until <= 3.0 + m1.cfg.leader_lease_s


def test_prevote_changes_nothing_at_voters():
    net = Net()
    net.tick("m1", 3.0)
    assert all(isinstance(m, PreVote) for _, m in net.queue)
    for to, m in list(net.queue):
        net.step(to, m)
    assert all(net.nodes[v].term == 0 for v in VOTERS)


def test_ack_needs_leader_fsync_and_every_member(_trace4=True):
    net = Net()
    m1 = elect_m1(net)
    net.step("m1", ClientRegister("c1", "s"))
    net.deliver()
    net.replies.clear()
    net.step("m1", ClientWrite("c1", "s", 1, 1, op("set", "a", "1")))
    net.deliver(sync=False)                   # followers may not persist either
    net.sync("m2")
    net.deliver(sync=False)                   # m2 persisted and acknowledged
    assert not [r for r in net.replies if r.status == "ok"], "acked before own fsync (trace 4)"
    net.sync("m1")
    net.deliver(sync=False)
    assert [r.status for r in net.replies] == ["ok"]
    assert m1.commit == m1.log.last_version


def test_retry_of_pending_entry_waits_and_applies_once():
    net = Net()
    m1 = elect_m1(net)
    net.step("m1", ClientRegister("c1", "s"))
    net.deliver()
    w = ClientWrite("c1", "s", 1, 1, op("append", "k", "x"))
    net.step("m1", w)
    net.step("m1", w)                         # retried while uncommitted (13c)
    before = m1.log.last_version
    net.deliver()
    assert m1.log.last_version == before
    oks = [r for r in net.replies if r.seq == 1 and r.status == "ok"]
    assert len(oks) == 2 and oks[0].result == oks[1].result
    net.step("m1", w)                         # retried after commit: the original result
    assert net.replies[-1].result == oks[0].result


def test_follower_truncates_by_pair_not_version():
    """Trace 3a: the follower holds (1,2); the leader of term 2 sends (2,2)."""
    net = Net()
    m2 = net.nodes["m2"]
    net.step("m2", Append(1, "m1.1", "m1", (0, 0), (Entry(1, 1, b""), Entry(1, 2, b"x")), 0,
                          None))
    net.step("m2", Append(2, "m3.1", "m3", (1, 1), (Entry(2, 2, b"y"),), 0, None))
    assert m2.log.last() == (2, 2)
    writes = [w for w in net.unsynced["m2"] if isinstance(w, JournalWrite)]
    assert writes[-1].truncate_after == 1


def test_deposed_leader_appends_are_rejected():
    net = Net()
    m2 = net.nodes["m2"]
    net.step("m2", Append(2, "m3.1", "m3", (0, 0), (), 0, None))
    out = net.step("m2", Append(1, "m1.1", "m1", (0, 0), (Entry(1, 1, b""),), 1, None))
    reply = out.send[0][1]
    assert not reply.ok and reply.term == 2 and m2.log.last_version == 0


def test_candidate_outside_highest_record_does_not_lead():
    """Trace 1a/11b: (t2,e5,{m2}) outranks (t1,e6,{m1}) although its epoch is lower."""
    net = Net(masters=("m1", "m2"))
    high = Record(2, 5, ("m2.1",), tuple(f"{v}.1" for v in VOTERS))
    low = Record(1, 6, ("m1.1",), tuple(f"{v}.1" for v in VOTERS))
    net.nodes["v1"].record = low
    net.nodes["v2"].record = high
    net.nodes["v3"].record = high
    net.tick("m1", 3.0)
    net.deliver()
    m1 = net.nodes["m1"]
    assert m1.role != LEADER and not m1.eligible
    assert any("not-eligible" in e for e in net.events)


def test_step_down_hands_over_without_prevote():
    net = Net()
    m1 = elect_m1(net)
    net.now = 3.5
    net.step("m1", AdminStepDown())
    net.deliver()
    m2 = net.nodes["m2"]
    assert m1.role != LEADER and m1.lease_until <= net.now
    assert m2.role == LEADER and m2.ready
    assert "m1.1 t1 lease-released" in net.events
    assert all(net.nodes[v].voted_for == "m2.1" for v in VOTERS)


def test_reads_only_while_lease_valid():
    net = Net()
    m1 = elect_m1(net)
    net.replies.clear()
    out = net.step("m1", ClientRead("c1", 1, op("get", "a")))
    assert net.replies[-1].status == "ok" and out.reply_deadline == m1.lease_until
    net.now = m1.lease_until + 0.001          # no renewal got through
    net.step("m1", ClientRead("c1", 2, op("get", "a")))
    assert net.replies[-1].status == "redirect"
    assert m1.role != LEADER and "m1.1 t1 lease-lost" in net.events


def test_refused_vote_does_not_raise_voter_terms():
    """Trace 11a: a disruptive candidate's refused requests leave the leader's lease alone."""
    net = Net()
    elect_m1(net)
    net.now = 3.2
    for v in VOTERS:
        net.step(v, VoteRequest(9, "m2.1", 1, (0, 0)))
    assert all(net.nodes[v].term == 1 for v in VOTERS)


def test_prevote_refused_for_a_vote_in_its_term_asks_again_at_once_one_term_higher():
    """Voters voted in term 1 for a master that has since lost its disk (seed 2660): a
    pre-vote changes nothing, so the candidate asks again at once in term 2."""
    net = Net()
    for v in VOTERS:
        net.nodes[v].term, net.nodes[v].voted_for = 1, "m9.1"
    net.tick("m1", 3.0)
    net.deliver()
    net.tick("m1", 3.0)                      # the immediate retry (wake_at == now)
    net.deliver()
    m1 = net.nodes["m1"]
    assert m1.role == LEADER and m1.accepted_term == 2 and net.now == 3.0
