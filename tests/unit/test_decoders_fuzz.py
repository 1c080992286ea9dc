"""Property-based tests (hypothesis) of the message decoders and of what the master does
with whatever decodes.

- Any bytes, and any msgpack array, given to any message's decoder: a message or a
  decode/validation error, nothing else (no other exception reaches a connection).
- Whatever decodes as a client's op has every number within the range its schema gives.
- Ops that decode, in any order and from any identity, checked (`authority.check`) and
  applied to a namespace: they succeed or fail with `FsError` (an errno for the client),
  and an op that fails changes nothing.
"""

from __future__ import annotations

import os

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from elkfs.access import Who
from elkfs.master import authority
from elkfs.master.namespace import Namespace
from elkfs.master.records import OpenSession, Record
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError

from .test_namespace import state

SESSION = b"s" * 16
# ELKFS_FUZZ_EXAMPLES=N: a longer run (the default keeps `make test` short)
EXAMPLES = int(os.environ.get("ELKFS_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
EACH = settings(max_examples=max(1, EXAMPLES // 4), deadline=None, suppress_health_check=list(HealthCheck))

# msgpack values of every kind, numbers at and past every edge
EDGES = [0, 1, -1, 255, 256, 0o7777, 0o177777, (1 << 31) - 1, 1 << 31, (1 << 32) - 2,
         (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 62) + 1, (1 << 63) - 1, 1 << 63,
         (1 << 64) - 1, -(1 << 62) - 1, -(1 << 63)]
ints = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.sampled_from(EDGES))
values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, st.floats(), st.binary(max_size=20),
              st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=20)
OP_TAGS = [cls.__struct_config__.tag for cls in m.AnyOp.__args__]


@pytest.mark.parametrize("type_id", sorted(m.MESSAGES))
@EACH
@given(data=st.binary(max_size=300))
@example(data=b"\x92\x00\xa1\x80")  # a string that is not UTF-8 (found by CI)
def test_any_bytes_decode_or_fail_cleanly(type_id, data):
    try:
        m.DECODERS[type_id].decode(data)
    except m.DECODE_ERRORS:
        pass


@pytest.mark.parametrize("type_id", sorted(m.MESSAGES))
@EACH
@given(fields=st.lists(values, max_size=10))
def test_any_array_decodes_or_fails_cleanly(type_id, fields):
    try:
        m.DECODERS[type_id].decode(msgspec.msgpack.encode(fields))
    except m.DECODE_ERRORS:
        pass


def _in_range(t: msgspec.inspect.Type, value) -> bool:
    if isinstance(t, msgspec.inspect.IntType):
        return ((t.ge is None or value >= t.ge) and (t.le is None or value <= t.le)
                and 0 - (1 << 63) <= value <= (1 << 64) - 1)
    if isinstance(t, msgspec.inspect.ListType):
        return ((t.max_length is None or len(value) <= t.max_length)
                and all(_in_range(t.item_type, v) for v in value))
    return True


@FUZZ
@given(tag=st.sampled_from(OP_TAGS), fields=st.lists(ints, max_size=10))
def test_what_decodes_is_in_range(tag, fields):
    try:
        op = m.OP_DECODER.decode(msgspec.msgpack.encode([tag, *fields]))
    except msgspec.ValidationError:
        return
    info = msgspec.inspect.type_info(type(op))
    for f in info.fields:
        assert _in_range(f.type, getattr(op, f.name)), (f.name, getattr(op, f.name))


# ---------------------------------------------------------------- ops on a namespace

SMALL_INODE = st.integers(0, 12)
NAMES = st.sampled_from([b"a", b"b", b"c", b".", b"..", b"", b"a/b", b"x" * 256,
                         b"system.posix_acl_access", b"user.x", b"trusted.t"])


def _field(name: str, t: msgspec.inspect.Type):
    if name in ("inode", "parent", "new_parent", "dst_parent"):
        return SMALL_INODE
    if isinstance(t, msgspec.inspect.IntType):
        lo = -(1 << 63) if t.ge is None else t.ge
        hi = (1 << 64) - 1 if t.le is None else t.le
        edge = [v for v in EDGES if lo <= v <= hi] or [lo]
        return st.one_of(st.integers(lo, min(hi, lo + 70000)), st.integers(lo, hi),
                         st.sampled_from(edge))
    if isinstance(t, msgspec.inspect.BytesType):
        return NAMES | st.binary(max_size=40)
    if isinstance(t, msgspec.inspect.BoolType):
        return st.booleans()
    if isinstance(t, msgspec.inspect.ListType):
        return st.lists(SMALL_INODE, max_size=4)
    return st.nothing()


def _op_strategy(cls):
    info = msgspec.inspect.type_info(cls)
    return st.builds(lambda **kw: m.OP_DECODER.decode(m.encode_any(cls(**kw))),
                     **{f.name: _field(f.name, f.type) for f in info.fields})


OPS = st.one_of(*(_op_strategy(cls) for cls in m.AnyOp.__args__))
WHO = st.sampled_from([Who(0, 0), Who(65534, 65534), Who(1000, 1000, [1234]),
                       Who(1234, 5, [0])])


def _namespace() -> tuple[Namespace, list]:
    ns = Namespace()
    ts = [1_000_000_000]

    def apply(op, session=SESSION, seq=0):
        ts[0] += 1000
        return ns.apply(Record(ns.version + 1, ts[0], session, seq, op))

    apply(OpenSession(SESSION, "fuzz"), session=b"")
    # something to work on: directories and files of root and of others
    apply(m.Mkdir(1, b"a", 0o755, 0, 0))
    apply(m.Mkdir(1, b"b", 0o1777, 65534, 65534))
    apply(m.Mknod(2, b"c", 0o100600, 0, 0))
    apply(m.Mknod(3, b"a", 0o100644, 1000, 1234))
    apply(m.Symlink(2, b"b", b"../b", 0, 0))
    return ns, [apply, ts]


@FUZZ
@given(steps=st.lists(st.tuples(WHO, OPS), min_size=1, max_size=25))
def test_ops_checked_and_applied_fail_only_with_an_errno_and_change_nothing(steps):
    ns, (apply, ts) = _namespace()
    seq = 0
    for who, op in steps:
        before = state(ns)
        try:
            op = authority.check(ns, who, op, SESSION, ts[0])
            if op.READ_ONLY:
                if not isinstance(op, (m.ReadChunk, m.FileChunks, m.StatFs, m.ClusterInfo,
                                       m.GetLock)):
                    ns.query(op)
                continue
            seq += 1
            apply(op, seq=seq)
        except FsError as e:
            assert isinstance(e.status, int) and e.status > 0
            assert state(ns) == before, f"{op} failed but changed the state"
        ns.effects.clear()


def _roots_namespace() -> tuple[Namespace, list]:
    """Everything root's, nothing writable by others."""
    ns = Namespace()
    ts = [1_000_000_000]

    def apply(op, session=SESSION, seq=0):
        ts[0] += 1000
        return ns.apply(Record(ns.version + 1, ts[0], session, seq, op))

    apply(OpenSession(SESSION, "fuzz"), session=b"")
    apply(m.Mkdir(1, b"a", 0o755, 0, 0))
    apply(m.Mkdir(1, b"b", 0o700, 0, 0))
    apply(m.Mknod(2, b"c", 0o100644, 0, 0))
    apply(m.Mknod(3, b"a", 0o104755, 0, 0))
    apply(m.Symlink(2, b"b", b"../b", 0, 0))
    apply(m.SetXattr(4, b"user.x", b"1"))
    return ns, [apply, ts]


def _tree_state(ns: Namespace):
    from elkfs.master.checkpoint import _node_tuple

    return (sorted(_node_tuple(n) for n in ns.nodes.values()), sorted(ns.trash.items()),
            sorted((c.chunk_id, c.version, c.refs) for c in ns.chunks.values()))


@FUZZ
@given(steps=st.lists(OPS, min_size=1, max_size=25))
def test_someone_who_owns_nothing_changes_nothing(steps):
    """What the live fuzz checks on a master, at unit speed: any op a user who owns
    nothing and may write nothing is allowed leaves every node as it was (opens and
    locks are the session's, not the tree's)."""
    ns, (apply, ts) = _roots_namespace()
    who = Who(1234, 5, [6])
    before = _tree_state(ns)
    seq = 0
    for op in steps:
        try:
            op = authority.check(ns, who, op, SESSION, ts[0])
            if not op.READ_ONLY:
                seq += 1
                apply(op, seq=seq)
        except FsError:
            pass
        ns.effects.clear()
    assert _tree_state(ns) == before, steps
