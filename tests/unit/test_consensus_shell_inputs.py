"""The core's inputs for the daemon's shell: Propose, PeersChanged, SnapshotTaken, and the
founder rule for a brand-new cluster (transcripts on the hand-driven `Net`)."""
from elkfs.consensus.master import LEADER, Master
from elkfs.consensus.messages import PeersChanged, Propose, SnapshotTaken, Tick
from elkfs.consensus.sessions import Applied

from .test_consensus_master import VOTERS, Net
from .test_consensus_master import elect_m1 as _elect_m1


def shell_net(**kw) -> Net:
    """`Net` with masters whose replicated state is opaque, as in the daemon."""
    net = Net(**kw)
    for name, node in net.nodes.items():
        if isinstance(node, Master):
            node.state = Recorder()
    return net


elect_m1 = _elect_m1


class Recorder:
    """A replicated state like the daemon's: what was applied, in order."""

    sessions: dict = {}

    def __init__(self):
        self.applied: list[bytes] = []

    def apply(self, entry):
        self.applied.append(entry.payload)
        return Applied(entry.term, entry.version, None, 0, b"", True)

    def lookup(self, session, seq):
        return "unknown-session", None

    def snapshot(self):
        raise AssertionError("the shell takes snapshots")

    def restore(self, data):
        pass


def test_propose_replicates_and_commits_only_with_every_member():
    net = shell_net()
    m1 = elect_m1(net)
    out = net.step("m1", Propose((b"a", b"b")))
    assert out.proposed == m1.log.last_version
    assert [e.payload for e in out.journal[0].entries] == [b"a", b"b"]
    assert m1.commit < m1.log.last_version          # nothing synced yet
    net.deliver()
    assert m1.commit == m1.log.last_version
    assert net.nodes["m2"].log.last_version == m1.log.last_version


def test_propose_is_refused_unless_leading():
    net = shell_net()
    out = net.step("m2", Propose((b"x",)))
    assert out.proposed == 0 and not out.journal
    assert net.nodes["m2"].log.last_version == 0


def test_followers_apply_proposed_entries_once_committed():
    net = shell_net()
    m2 = net.nodes["m2"]
    rec = m2.state
    elect_m1(net)
    net.step("m1", Propose((b"p1",)))
    net.deliver()
    net.tick("m1", 3.3)                               # the heartbeat carries the commit
    net.deliver()
    assert b"p1" in rec.applied and m2.applied == m2.commit


def test_peers_changed_adds_a_master_to_replicate_to():
    net = shell_net(masters=("m1", "m2", "m3"))
    del net.nodes["m3"]                               # not there yet
    m1 = elect_m1(net)
    net.step("m1", PeersChanged(("m1", "m2", "m3"), VOTERS))
    assert "m3" in m1.progress
    net.step("m1", PeersChanged(("m1", "m2"), VOTERS))
    assert "m3" not in m1.progress


def test_snapshot_taken_lets_the_core_forget_old_entries():
    net = shell_net()
    m1 = elect_m1(net)
    m1.cfg = m1.cfg.__class__(**{**m1.cfg.__dict__, "log_retain": 2, "snapshot_gap": 0})
    for i in range(6):
        net.step("m1", Propose((bytes([i]),)))
        net.deliver()
    v = m1.applied
    net.step("m1", SnapshotTaken((m1.log.term_at(v), v), str(v).encode()))
    assert m1.snap.last == (m1.log.term_at(v), v) and m1.log.base[1] == v - 2
    net.step("m1", SnapshotTaken((99, v), b"x"))      # not of this log: ignored
    assert m1.snap.data == str(v).encode()


def test_without_a_founders_voters_a_fresh_master_never_bootstraps():
    net = shell_net()
    m1 = net.nodes["m1"]
    net.step("m1", PeersChanged(("m1", "m2"), VOTERS, ()))
    for t in (3.0, 6.0, 9.0):
        net.tick("m1", t)
        net.deliver()
    assert m1.role != LEADER and m1.term == 0     # never even asked for votes
    net.step("m1", PeersChanged(("m1", "m2"), VOTERS, tuple(f"{v}.1" for v in VOTERS)))
    for t in (12.0, 15.0, 18.0):
        net.tick("m1", t)
        net.deliver()
        if m1.role == LEADER:
            break
    assert m1.role == LEADER


def test_master_core_accepts_an_outside_state():
    rec = Recorder()
    net = shell_net()
    m = Master("x.1", "x", net.nodes["m1"].cfg, None, __import__("random").Random(1), 0.0,
               state=rec)
    assert m.state is rec
    m.step(0.0, Tick())
