"""Sessions, fencing, records, journal, config and the pure-core import rule."""
import ast
import pathlib

import msgspec
import pytest

from elkfs.consensus.config import ConfigError, HAConfig
from elkfs.consensus.fencing import ChunkCommand, ChunkVersionFence, VersionAllocator
from elkfs.consensus.journal import Journal
from elkfs.consensus.messages import Entry
from elkfs.consensus.records import Record, highest, quorum_time, record_key
from elkfs.consensus.sessions import (Command, RegisterSession, ReplicatedState,
                                      encode_payload)
from tests.sim.app import ToyStore, op

CORE = pathlib.Path(__file__).resolve().parents[2] / "elkfs" / "consensus"


def test_core_never_imports_io_modules():
    banned = {"asyncio", "time", "random", "socket", "os"}
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in banned, f"{path.name} imports {n}"


def test_config_validation():
    HAConfig().validate()
    with pytest.raises(ConfigError):
        HAConfig(rho=0.2).validate()
    with pytest.raises(ConfigError):
        HAConfig(lease_duration_s=1.0, max_round_trip_s=0.5).validate()
    assert HAConfig().renew_period_s == 1.0
    assert abs(HAConfig().leader_lease_s - 1.96) < 1e-9


def test_records_order_by_rterm_then_epoch():
    a = Record(1, 9, ("m1",), ("v1",))
    b = Record(2, 5, ("m2",), ("v1",))
    assert record_key(b) > record_key(a)
    assert highest([a, None, b]) == b
    assert highest([a, b], epoch_only=True) == a     # the broken ordering


def test_quorum_time_is_latest_majority_send_time():
    times = {"v1": 3.0, "v2": 1.0, "v3": 2.0}
    assert quorum_time(times, [("v1", "v2", "v3")]) == 2.0
    assert quorum_time({"v1": 3.0}, [("v1", "v2", "v3")]) is None


def test_journal_log_matching_by_pair():
    j = Journal((0, 0), [Entry(1, 1, b""), Entry(1, 2, b"")])
    assert j.matches((1, 2)) and not j.matches((2, 2))
    assert j.matches((2, 2), version_only=True)
    j.truncate_after(1)
    assert j.last() == (1, 1)


def _entry(v, payload, term=1):
    return Entry(term, v, encode_payload(payload))


def test_sessions_apply_once_and_return_original_result():
    st = ReplicatedState(ToyStore())
    st.apply(_entry(1, RegisterSession("s")))
    a = st.apply(_entry(2, Command("s", 1, 1, op("append", "k", "x"))))
    b = st.apply(_entry(3, Command("s", 1, 1, op("append", "k", "x"))))   # a retry
    assert a.executed and not b.executed and a.result == b.result
    assert st.lookup("s", 1) == ("done", (2, a.result))
    assert msgspec.msgpack.decode(st.app.read(op("list", "k"))) == ["x"]


def test_sessions_concurrent_seqs_and_lowest_unanswered():
    st = ReplicatedState(ToyStore())
    st.apply(_entry(1, RegisterSession("s")))
    st.apply(_entry(2, Command("s", 11, 10, op("set", "k", "b"))))   # 11 before 10
    ten = st.apply(_entry(3, Command("s", 10, 10, op("set", "k", "a"))))
    assert ten.executed                                              # not a duplicate
    st.apply(_entry(4, Command("s", 12, 12, op("set", "k", "c"))))
    assert st.lookup("s", 10)[0] == "seq-below-lowest-unanswered"
    assert st.lookup("nope", 1)[0] == "unknown-session"


def test_sessions_snapshot_roundtrip():
    st = ReplicatedState(ToyStore())
    st.apply(_entry(1, RegisterSession("s")))
    st.apply(_entry(2, Command("s", 1, 1, op("append", "k", "x"))))
    st2 = ReplicatedState(ToyStore())
    st2.restore(st.snapshot())
    assert st2.lookup("s", 1)[0] == "done"


def test_chunk_versions_unique_across_leaders_and_fenced_by_term():
    alloc = VersionAllocator()
    assert alloc.bump(1) == (1, 1) and alloc.bump(2) == (2, 2)
    fence = ChunkVersionFence()
    assert fence.step(ChunkCommand(2, "m2.1", 7, (2, 8))).accepted
    stale = fence.step(ChunkCommand(1, "m1.1", 7, (1, 8)))         # trace 8a
    assert not stale.accepted and stale.reason == "stale-term"
    assert not fence.step(ChunkCommand(2, "m2.1", 7, (2, 3))).accepted
