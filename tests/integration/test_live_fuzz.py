"""A short fuzz run against a live master: hypothesis-made requests (any op, any numbers
in and out of range, random arrays) from users who own nothing, on one raw connection.
Every request is answered (a result or an errno), the connection is never dropped for a
well-formed frame, the master logs no traceback, and the tree is unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elkfs.client import Client
from elkfs.proto import messages as m
from elkfs.proto.frames import HEADER
from elkfs.testing.cluster import Cluster

from ..unit.test_decoders_fuzz import _op_strategy, ints, values

NET = "127.0.154"
EXAMPLES = int(os.environ.get("ELKFS_FUZZ_EXAMPLES", "60"))
OPS = st.one_of(*(_op_strategy(cls) for cls in m.AnyOp.__args__ if cls is not m.EndSession))
RAW_OPS = st.builds(lambda tag, rest: [tag, *rest],
                    st.sampled_from([c.__struct_config__.tag for c in m.AnyOp.__args__
                                     if c is not m.EndSession]),
                    st.lists(ints, max_size=8))
WHO = st.sampled_from([(65534, 65534, []), (1000, 1000, [1234]), (5, 5, [0, 1])])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("livefuzz")), net=NET, chunkservers=1)
    c.start()
    asyncio.run(_make_tree(c))
    yield c
    c.destroy()


async def _make_tree(cluster) -> None:
    async with await Client.connect(*cluster.master_addr, info="fuzz tree") as root:
        await root.mkdir("/d", 0o755)
        await root.write_file("/d/f", b"public data", 0o644)
        await root.mkdir("/s", 0o700)
        await root.write_file("/s/g", b"secret", 0o600)
        await root.symlink("/d/f", "/d/l")
        await root.setxattr("/d/f", b"user.a", b"1")


async def _tree(cluster) -> list:
    async with await Client.connect(*cluster.master_addr, info="fuzz check") as root:
        out = []
        stack = ["/"]
        while stack:
            path = stack.pop()
            a = await root.stat(path)
            entry = [path, a.mode, a.uid, a.gid, a.size, a.mtime_ns, a.ctime_ns, a.nlink,
                     a.goal, a.trashtime, a.acl, sorted(await root.listxattr(path))]
            if a.mode & 0o170000 == 0o040000:
                for name in sorted(await root.listdir(path)):
                    stack.append(path.rstrip("/") + "/" + name)
            elif a.mode & 0o170000 == 0o100000:
                entry.append(hashlib.sha256(await root.read_file(path)).hexdigest())
            out.append(entry)
        return out


class Raw:
    """A client speaking the protocol by hand, on a blocking socket."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = None
        self.req = 0

    def connect(self) -> None:
        self.sock = socket.create_connection(self.addr, timeout=30)
        reply = self.call(m.RegisterSession(self.next(), b"", "live fuzz"))
        assert isinstance(reply, m.SessionReply) and reply.status == 0
        self.session = reply.session

    def next(self) -> int:
        self.req += 1
        return self.req

    def send(self, msg_type: int, meta: bytes) -> None:
        self.sock.sendall(HEADER.pack(msg_type, 0, len(meta), 0) + meta)

    def call(self, msg: m.Msg):
        self.send(msg.TYPE, m.encode(msg))
        return self.read()

    def read(self):
        while True:
            head = self._exactly(HEADER.size)
            msg_type, _flags, meta_len, data_len = HEADER.unpack(head)
            body = self._exactly(meta_len + data_len)
            msg = m.DECODERS[msg_type].decode(body[:meta_len])
            if isinstance(msg, (m.MetaReply, m.Error, m.SessionReply)):
                return msg
            # LockWake and the like: not answers

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "the master closed the connection"
            buf += chunk
        return buf


@pytest.fixture(scope="module")
def raw(cluster):
    r = Raw(cluster.master_addr)
    r.connect()
    yield r
    r.sock.close()


@pytest.fixture(scope="module")
def before(cluster):
    return asyncio.run(_tree(cluster))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=st.lists(st.tuples(WHO, st.one_of(OPS, RAW_OPS, values)), min_size=1,
                      max_size=12))
def test_live_fuzz_changes_nothing(cluster, raw, before, steps):
    for (uid, gid, groups), op in steps:
        req = raw.next()
        if isinstance(op, m.Op):
            meta = msgspec.msgpack.encode([req, raw.session, req, op, uid, gid, groups])
        elif isinstance(op, list) and op and isinstance(op[0], str):
            meta = msgspec.msgpack.encode([req, raw.session, req, op, uid, gid, groups])
        else:  # anything at all where the op goes
            meta = msgspec.msgpack.encode([req, raw.session, req, op, uid, gid])
        raw.send(m.MetaRequest.TYPE, meta)
        reply = raw.read()
        assert reply.req == req
        assert isinstance(reply, (m.MetaReply, m.Error)), reply


def test_after_the_fuzz_the_tree_is_unchanged_and_no_traceback(cluster, before):
    assert asyncio.run(_tree(cluster)) == before
    with open(os.path.join(cluster.masters[0].data_dir, "mfsmaster.log")) as f:
        log = f.read()
    assert "Traceback" not in log and "handler failed" not in log
