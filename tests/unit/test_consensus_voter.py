"""Unit tests of the voter: one message at a time, asserting on the Output."""
from elkfs.consensus.config import HAConfig, VOTER_ADOPTS_REFUSED
from elkfs.consensus.messages import (PersistVoterState, PreVote, Release, Renew, VoteRequest)
from elkfs.consensus.records import Record
from elkfs.consensus.voter import Voter

CFG = HAConfig(voter_addrs=("v1",), master_addrs=("m1", "m2"), initial_voters=("v1.1",))
D = CFG.lease_duration_s


def fresh(now=0.0, **kw):
    v = Voter("v1.1", CFG if not kw else HAConfig(**kw), now)
    return v, now + D   # past the start-up silence


def test_silence_for_a_full_lease_after_start():
    v, _ = fresh()
    out = v.step(1.0, VoteRequest(1, "m1.1", 1, (0, 0)))
    assert out.send[0][1].granted is False and out.send[0][1].reason == "restarting"
    assert not out.persist


def test_grant_persists_before_reply_and_starts_lease():
    v, t = fresh()
    out = v.step(t, VoteRequest(1, "m1.1", 1, (0, 0)))
    assert out.persist == [PersistVoterState(1, "m1.1", None)]
    assert out.send[0][1].granted
    assert v.holder == "m1.1" and v.until == t + D          # the grant is the first lease
    refused = v.step(t + 0.5, VoteRequest(2, "m2.1", 1, (0, 0)))
    assert refused.send[0][1].reason == "lease-held"
    assert abs(refused.send[0][1].wait_s - 1.5) < 1e-9


def test_refusal_changes_nothing():
    v, t = fresh()
    v.step(t, VoteRequest(1, "m1.1", 1, (0, 0)))
    before = (v.term, v.voted_for, v.record, v.holder, v.until)
    out = v.step(t + 0.1, VoteRequest(9, "m2.1", 1, (0, 0)))
    assert not out.persist and (v.term, v.voted_for, v.record, v.holder, v.until) == before
    out = v.step(t + 0.1, PreVote(9, "m2.1", 2, (0, 0)))
    assert not out.persist and v.term == 1


def test_mutant_adopts_refused_terms():
    v = Voter("v1.1", HAConfig(mutations=frozenset({VOTER_ADOPTS_REFUSED})), 0.0)
    v.step(D, VoteRequest(1, "m1.1", 1, (0, 0)))
    v.step(D + 0.1, VoteRequest(9, "m2.1", 1, (0, 0)))
    assert v.term == 9


def test_one_vote_per_term_survives_restart():
    v, t = fresh()
    v.step(t, VoteRequest(3, "m1.1", 1, (0, 0)))
    state = PersistVoterState(v.term, v.voted_for, v.record)
    v2 = Voter("v1.1", CFG, t + 5, state)
    out = v2.step(t + 5 + D, VoteRequest(3, "m2.1", 1, (0, 0)))
    assert out.send[0][1].reason == "voted-other"


def test_renew_is_a_vote_in_the_holders_term_and_stores_greater_records():
    v, t = fresh()
    r1 = Record(2, 5, ("m1.1",), ("v1.1",))
    out = v.step(t, Renew(2, "m1.1", 7, r1))       # recruits a voter that missed the vote
    assert out.send[0][1].ok and v.voted_for == "m1.1" and v.record == r1
    assert out.persist[-1].record == r1
    older = Record(1, 9, ("m2.1",), ("v1.1",))         # higher epoch, lower rterm: not greater
    v.step(t + 0.1, Renew(2, "m1.1", 8, older))
    assert v.record == r1


def test_release_ends_lease_refuses_renewals_and_reserves_the_target():
    v, t = fresh()
    v.step(t, VoteRequest(4, "m1.1", 1, (0, 0)))
    v.step(t + 0.2, Release(4, "m1.1", "m2.1"))
    assert v.holder is None
    assert not v.step(t + 0.3, Renew(4, "m1.1", 2, None)).send[0][1].ok
    other = v.step(t + 0.3, VoteRequest(5, "m3.1", 1, (0, 0)))
    assert other.send[0][1].reason == "handover"
    assert v.step(t + 0.3, VoteRequest(5, "m2.1", 1, (0, 0))).send[0][1].granted


def test_release_from_a_stale_term_is_ignored():
    v, t = fresh()
    v.step(t, VoteRequest(4, "m1.1", 1, (0, 0)))
    v.step(t + 0.1, Release(3, "m1.1"))
    assert v.holder == "m1.1"
