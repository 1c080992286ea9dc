"""The attacks of issue 15 on cluster membership and chunk data, against real daemons.

One master and three chunkservers sharing an AUTH_CODE (as every test cluster does), and
the attacker's few lines of Python: rogue chunkservers (without the code, or an insider
claiming a connected server's id), a fake master, replayed handshakes, direct reads and
writes on the data port without a good token, a copy whose bytes were forged on disk,
and tokens that expire under a client.
"""

import asyncio
import errno
import glob
import os
import time

import pytest

from elkfs import statefile
from elkfs.client import Client
from elkfs.consensus import wire
from elkfs.consensus.messages import VoteRequest
from elkfs.proto import handshake
from elkfs.proto import messages as m
from elkfs.proto import rpc
from elkfs.proto.auth import READ, WRITE, ClusterKey
from elkfs.proto.errors import BAD_TOKEN, TOKEN_EXPIRED, WRONG_VERSION, FsError
from elkfs.testing.cluster import CS_PORT, MASTER_CS_PORT, Cluster

NET = "127.0.113"
FAKE_MASTER = f"{NET}.90"
TIB = 1 << 40


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(str(tmp_path_factory.mktemp("security")), net=NET, chunkservers=3)
    c.start()
    yield c
    c.destroy()


async def connect(cluster) -> Client:
    return await Client.connect(*cluster.master_addr, info="security test")


def log_of(d) -> str:
    name = "mfsmaster" if d.kind == "master" else "mfschunkserver"
    with open(os.path.join(d.data_dir, f"{name}.log")) as f:
        return f.read()


async def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


def start_extra_chunkserver(cluster, i: int, **options):
    """Another mfschunkserver at `<net>.<20+i>`, with `options` over the cluster's."""
    d = cluster._chunkserver(i)
    hdd = os.path.join(d.data_dir, "hdd1")
    os.makedirs(hdd, exist_ok=True)
    with open(os.path.join(d.data_dir, "mfshdd.cfg"), "w") as f:
        f.write(hdd + "\n")
    cluster._write_cfg(d.cfg_path, {
        "DATA_PATH": d.data_dir, "HDD_CONF_FILENAME": os.path.join(d.data_dir, "mfshdd.cfg"),
        "CSSERV_LISTEN_HOST": d.host, "CSSERV_LISTEN_PORT": CS_PORT,
        "MASTER_HOST": cluster.master_host, "MASTER_PORT": MASTER_CS_PORT, **options})
    cluster.start_daemon(d)
    return d


async def file_on_every_server(client, path: str, data: bytes) -> m.ChunkDesc:
    await client.mkdir(os.path.dirname(path))
    await client.setgoal(os.path.dirname(path), 3)
    await client.write_file(path, data)
    [chunk] = await client.fileinfo(path)
    assert len(chunk.copies) == 3 and all(c.valid for c in chunk.copies)
    return chunk


def copies_by_host(chunk: m.ChunkDesc) -> dict[str, bool]:
    return {c.addr[0]: c.valid for c in chunk.copies}


# ---------------------------------------------------------------- rogue chunkservers


async def test_a_chunkserver_without_the_code_cannot_register(cluster):
    master = cluster.masters[0]
    wrong = start_extra_chunkserver(cluster, 7, AUTH_CODE="not-the-cluster-code")
    none = start_extra_chunkserver(cluster, 8)  # no AUTH_CODE at all
    try:
        await wait_until(lambda: f"refusing connection from {wrong.host}" in log_of(master),
                         "the master logs the refusal of the wrong code")
        await wait_until(lambda: f"refusing connection from {none.host}" in log_of(master),
                         "the master logs the refusal of no code")
        lines = log_of(master).splitlines()
        assert any(wrong.host in ln and "wrong AUTH_CODE" in ln for ln in lines)
        assert any(none.host in ln and "before authenticating" in ln for ln in lines)
        await wait_until(lambda: "refused our proof" in log_of(wrong),
                         "the rogue is told why")
        client = await connect(cluster)
        try:
            hosts = {s["address"].split(":")[0]
                     for s in (await client.cluster_info())["chunkservers"]}
        finally:
            await client.close()
        assert wrong.host not in hosts and none.host not in hosts
    finally:
        cluster.stop_daemon(wrong)
        cluster.stop_daemon(none)


async def test_rogue_claims_without_the_code_change_nothing(cluster):
    """The attack of the issue by hand: a registration claiming a victim's chunks and
    100 TiB free, without the code, is refused; the real copies stay."""
    client = await connect(cluster)
    try:
        data = os.urandom(200_000)
        chunk = await file_on_every_server(client, "/claimed/f", data)
        conn = await rpc.connect(cluster.masters[0].host, MASTER_CS_PORT)
        try:
            with pytest.raises(FsError) as e:
                await conn.call(m.CsRegister, cs_id=os.urandom(16), host=f"{NET}.81",
                                port=CS_PORT, chunks=[(chunk.chunk_id, chunk.version)],
                                total_bytes=100 * TIB, used_bytes=0, timeout=10)
            assert e.value.status == errno.EPERM
            await asyncio.wait_for(conn.closed, 10)
        finally:
            conn.close()
        conn = await rpc.connect(cluster.masters[0].host, MASTER_CS_PORT)
        try:  # nor can it pose as another master
            conn.send(m.MasterHello("", "fake.1", f"{NET}.83", 9421))
            await asyncio.wait_for(conn.closed, 10)
        finally:
            conn.close()
        assert "MasterHello before authenticating" in log_of(cluster.masters[0])
        [after] = await client.fileinfo("/claimed/f")
        assert copies_by_host(after) == copies_by_host(chunk)
        assert await client.read_file("/claimed/f") == data
    finally:
        await client.close()


async def test_an_insider_cannot_hijack_a_connected_chunkservers_id(cluster):
    """Even knowing the code, a registration with the id of a connected chunkserver is
    refused and logged, again and again; the victim keeps its copies."""
    victim = cluster.chunkservers[1]
    with open(os.path.join(victim.data_dir, "csid"), "rb") as f:
        victim_id = f.read()
    client = await connect(cluster)
    try:
        data = os.urandom(100_000)
        chunk = await file_on_every_server(client, "/hijack/f", data)
        key = ClusterKey(cluster.auth_code)
        for attempt in range(3):
            conn = await rpc.connect(cluster.masters[0].host, MASTER_CS_PORT)
            try:
                await handshake.authenticate(conn, key, "chunkserver", 10)
                with pytest.raises(FsError) as e:
                    await conn.call(m.CsRegister, cs_id=victim_id, host=f"{NET}.82",
                                    port=CS_PORT, chunks=[], total_bytes=100 * TIB,
                                    used_bytes=0, timeout=10)
                assert e.value.status == errno.EEXIST
            finally:
                conn.close()
        assert "is registered by" in log_of(cluster.masters[0])
        [after] = await client.fileinfo("/hijack/f")
        assert copies_by_host(after) == copies_by_host(chunk)
        assert copies_by_host(after)[victim.host] is True
        info = await client.cluster_info()
        assert f"{NET}.82" not in str(info["chunkservers"])
        assert await client.read_file("/hijack/f") == data
    finally:
        await client.close()


# ---------------------------------------------------------------- handshake replays


async def test_a_replayed_proof_is_refused(cluster):
    key = ClusterKey(cluster.auth_code)
    master = cluster.masters[0].host
    nonce = os.urandom(16)
    conn = await rpc.connect(master, MASTER_CS_PORT)
    try:  # a genuine exchange, recorded
        challenge, _ = await conn.call(m.AuthHello, nonce=nonce, timeout=10)
        proof = key.initiator_proof(nonce, challenge.nonce)
        await conn.call(m.AuthProof, proof=proof, timeout=10)
    finally:
        conn.close()
    conn = await rpc.connect(master, MASTER_CS_PORT)
    try:  # the same messages on a new connection: the master's nonce is new
        again, _ = await conn.call(m.AuthHello, nonce=nonce, timeout=10)
        assert again.nonce != challenge.nonce
        with pytest.raises(FsError) as e:
            await conn.call(m.AuthProof, proof=proof, timeout=10)
        assert e.value.status == errno.EPERM
        await asyncio.wait_for(conn.closed, 10)
    finally:
        conn.close()
    conn = await rpc.connect(master, MASTER_CS_PORT)
    try:  # a proof without a hello
        with pytest.raises(FsError):
            await conn.call(m.AuthProof, proof=proof, timeout=10)
    finally:
        conn.close()
    assert "wrong AUTH_CODE" in log_of(cluster.masters[0])


class FakeMaster:
    """A master without the code: it answers the chunkserver's hello with a real
    master's answer recorded earlier (a replay), and at once orders a deletion and asks
    for a vote of a huge term."""

    def __init__(self, recorded: m.AuthChallenge, chunk: m.ChunkDesc):
        self.recorded = recorded
        self.chunk = chunk
        self.hellos = 0
        self.answers: list[m.Msg] = []
        self.server = None

    async def start(self):
        self.server = await rpc.serve(FAKE_MASTER, MASTER_CS_PORT, self.handler, "fake")

    def attack(self, conn):
        vote = VoteRequest(term=10**6, candidate="fake", round=1, last=(10**6, 10**9))
        conn.send(m.Consensus("", wire.encode(vote)))
        fut = conn.start_call(m.CsCommand(conn.next_req(), m.DeleteChunk(
            self.chunk.chunk_id, self.chunk.version), term=10**6))
        fut.add_done_callback(lambda f: self.answers.append(f.result()[0])
                              if not f.cancelled() and f.exception() is None else None)

    def handler(self, conn, msg, data):
        if isinstance(msg, m.AuthHello):
            self.hellos += 1
            self.attack(conn)  # while the handshake is under way
            conn.send(m.AuthChallenge(msg.req, self.recorded.nonce, self.recorded.proof))
        elif isinstance(msg, m.AuthProof):
            conn.send(m.Ok(msg.req))  # "welcome" (it cannot check the proof anyway)
        else:
            self.answers.append(msg)

    def close(self):
        self.server.close()


async def test_a_fake_master_gets_no_obedience_and_no_vote(cluster):
    victim = cluster.chunkservers[2]
    client = await connect(cluster)
    try:
        data = os.urandom(150_000)
        chunk = await file_on_every_server(client, "/fake-master/f", data)
        [path] = glob.glob(os.path.join(victim.data_dir, "hdd1", "*",
                                        f"chunk_{chunk.chunk_id:016X}_*"))
        conn = await rpc.connect(cluster.masters[0].host, MASTER_CS_PORT)
        try:  # what the fake master will replay: a real master's answer to a hello
            recorded, _ = await conn.call(m.AuthHello, nonce=os.urandom(16), timeout=10)
        finally:
            conn.close()
        term_before = statefile.load(os.path.join(victim.data_dir, "voter.state"))["term"]
        fake = FakeMaster(recorded, chunk)
        await fake.start()
        try:
            cluster.stop_daemon(victim)
            cluster._write_cfg(victim.cfg_path, {
                **_cfg(victim.cfg_path), "MASTER_HOST": FAKE_MASTER})
            cluster.start_daemon(victim)
            await wait_until(lambda: fake.hellos >= 2, "the chunkserver tries twice")
            await wait_until(lambda: any(isinstance(a, m.Error) for a in fake.answers),
                             "the command is answered")
            assert "failed to prove AUTH_CODE" in log_of(victim)
            assert "ignoring CsCommand" in log_of(victim)
            assert all(isinstance(a, m.Error) and a.status == errno.EPERM
                       for a in fake.answers), fake.answers  # no Ok, no Consensus reply
            state = statefile.load(os.path.join(victim.data_dir, "voter.state"))
            assert state["term"] == term_before and state.get("voted_for") != "fake"
            assert os.path.exists(path)  # not deleted
        finally:
            fake.close()
            cluster.stop_daemon(victim)
            cluster.write_configs()
            cluster.start_daemon(victim)
        cluster.wait_chunkservers_registered()
        [after] = await client.fileinfo("/fake-master/f")
        assert copies_by_host(after).get(victim.host) is True
        assert await client.read_file("/fake-master/f") == data
    finally:
        await client.close()


def _cfg(path: str) -> dict:
    out = {}
    with open(path) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                out[k.strip()] = v.strip()
    return out


# ---------------------------------------------------------------- the data port


async def test_direct_reads_and_writes_need_a_good_token(cluster):
    client = await connect(cluster)
    try:
        data = os.urandom(300_000)
        await client.write_file("/tokens", data)
        f = await client.open("/tokens")
        chunk = await client.op(m.ReadChunk(f.inode, 0))
        cid, ver = chunk.chunk_id, chunk.version
        key, wrong = ClusterKey(cluster.auth_code), ClusterKey("guessed")
        now = int(time.time())
        conn = await rpc.connect(*chunk.locations[0])
        try:
            reply, got = await conn.call(m.ReadReq, chunk_id=cid, version=ver, offset=0,
                                         size=1000, token=chunk.token, timeout=10)
            assert reply.status == 0 and bytes(got) == data[:1000]  # the client's token
            read_refused = {
                "none": b"", "random": os.urandom(24),
                "other code": wrong.token(cid, ver, READ, now + 300),
                "another chunk": key.token(cid + 1, ver, READ, now + 300),
                "another version": key.token(cid, ver + 1, READ, now + 300),
                "write, not read": key.token(cid, ver, WRITE, now + 300),
                "expired": key.token(cid, ver, READ, now - 5),
            }
            for what, token in read_refused.items():
                reply, got = await conn.call(m.ReadReq, chunk_id=cid, version=ver, offset=0,
                                             size=1000, token=token, timeout=10)
                want = TOKEN_EXPIRED if what == "expired" else BAD_TOKEN
                assert reply.status == want and got is None, what
            info, _ = await conn.call(m.ChunkInfoReq, chunk_id=cid, timeout=10)
            assert info.status == BAD_TOKEN
            forged = b"forged" * 1000
            write_refused = {
                "none": b"", "random": os.urandom(24),
                "other code": wrong.token(cid, ver, WRITE, now + 300),
                "read, not write": chunk.token,
                "expired": key.token(cid, ver, WRITE, now - 5),
            }
            for what, token in write_refused.items():
                want = TOKEN_EXPIRED if what == "expired" else BAD_TOKEN
                with pytest.raises(FsError) as e:
                    await conn.call(m.WriteOnce, data=forged, chunk_id=cid, version=ver,
                                    chain=[], offset=0, token=token, timeout=10)
                assert e.value.status == want, what
                with pytest.raises(FsError) as e:
                    await conn.call(m.WriteInit, chunk_id=cid, version=ver, chain=[],
                                    token=token, timeout=10)
                assert e.value.status == want, what
                # a session refused at its start takes no data
                reply, _ = await conn.call(m.WriteData, data=forged, offset=0, timeout=10)
                assert reply.status != 0
        finally:
            conn.close()
        # A stale token: the chunk was written since (new version).
        w = await client.open("/tokens")
        await w.write(0, data[::-1])
        await w.close()
        fresh = await client.op(m.ReadChunk(f.inode, 0))
        assert fresh.chunk_id == cid and fresh.version != ver
        conn = await rpc.connect(*fresh.locations[0])
        try:
            for version in (ver, fresh.version):
                reply, got = await conn.call(m.ReadReq, chunk_id=cid, version=version,
                                             offset=0, size=1000, token=chunk.token,
                                             timeout=10)
                assert reply.status in (BAD_TOKEN, WRONG_VERSION) and got is None
        finally:
            conn.close()
        assert await client.read_file("/tokens") == data[::-1]
        assert (await client.op(m.ReadChunk(f.inode, 0))).version == fresh.version
        await f.close()
    finally:
        await client.close()


async def test_forged_bytes_on_disk_are_caught_by_the_client(cluster):
    """A copy whose block holds other bytes than its CRC says (forged or rotten on disk)
    is caught by the client itself: it reads the good copy, and the master has the
    chunkserver check that copy, which is then counted bad."""
    client = await connect(cluster)
    try:
        data = os.urandom(1 << 20)
        await client.mkdir("/forged")
        await client.setgoal("/forged", 2)
        await client.write_file("/forged/f", data)
        f = await client.open("/forged/f")
        chunk = await client.op(m.ReadChunk(f.inode, 0))
        first = chunk.locations[0]
        cs = next(d for d in cluster.chunkservers if d.host == first[0])
        [path] = glob.glob(os.path.join(cs.data_dir, "hdd1", "*",
                                        f"chunk_{chunk.chunk_id:016X}_*"))
        with open(path, "r+b") as raw:  # block 3 replaced by other, valid-looking bytes
            raw.seek(8192 + 3 * 65536)
            raw.write(bytes(reversed(data[3 * 65536:4 * 65536])))
        assert await f.read(0, len(data)) == data
        await f.close()
        master = cluster.masters[0]
        await wait_until(lambda: "failing its CRC" in log_of(master),
                         "the client reports the bad copy")
        await wait_until(lambda: "block 3 fails its CRC" in log_of(cs),
                         "the chunkserver checks its copy")

        async def counted_bad():
            [c] = await client.fileinfo("/forged/f")
            return copies_by_host(c).get(first[0]) is not True

        deadline = time.monotonic() + 30
        while not await counted_bad():
            assert time.monotonic() < deadline, "the bad copy is still counted valid"
            await asyncio.sleep(0.1)
        assert await client.read_file("/forged/f") == data
    finally:
        await client.close()


async def test_clients_get_fresh_tokens_when_theirs_expire(tmp_path):
    """A short CHUNK_TOKEN_TTL: a location kept past it, and a write held open past it,
    still work (the client asks again), and nobody sees an error."""
    c = Cluster(str(tmp_path / "ttl"), net="127.0.114", chunkservers=2,
                master_options={"CHUNK_TOKEN_TTL": 1})
    c.start()
    try:
        client = await Client.connect(*c.master_addr, info="ttl test")
        try:
            data = os.urandom(500_000)
            await client.write_file("/kept", data)
            f = await client.open("/kept")
            assert await f.read_range(0, len(data)) == data
            old = f._locations[0].token
            await asyncio.sleep(2.5)
            assert await f.read_range(0, len(data)) == data  # the cached token expired
            assert f._locations[0].token != old
            await f.close()
            w = await client.create("/held")
            await w.write(0, b"held open " * 100)  # the token comes now, the data later
            await asyncio.sleep(2.5)
            await w.close()
            assert await client.read_file("/held") == b"held open " * 100
        finally:
            await client.close()
    finally:
        c.destroy()


# ---------------------------------------------------------------- who holds a write


async def read_copy(addr, chunk: m.ChunkOut, size: int) -> bytes:
    """The bytes one copy holds (read straight from its chunkserver, CRC-checked)."""
    from elkfs.client.chunkio import ConnectionPool, read_from

    pool = ConnectionPool()
    out = bytearray(size)
    try:
        await read_from(pool, addr, chunk.chunk_id, chunk.version, 0, size, memoryview(out),
                        chunk.token)
    finally:
        pool.close()
    return bytes(out)


async def test_the_master_counts_only_copies_that_report_the_write(cluster):
    """A writer (or a lying head of its chain) ends a write as done that reached one copy
    of two: the master counts only the copy whose chunkserver reported the write itself;
    the other is replaced from it. A write no copy confirms fails."""
    client = await connect(cluster)
    try:
        await client.mkdir("/reported")
        await client.setgoal("/reported", 2)
        await client.write_file("/reported/f", os.urandom(100_000))
        f = await client.open("/reported/f")
        chunk = await client.op(m.WriteChunk(f.inode, 0))
        assert len(chunk.locations) == 2
        head, skipped = chunk.locations
        written = os.urandom(100_000)
        conn = await rpc.connect(*head)
        try:  # the data reaches the head only; the writer claims it all went well
            await conn.call(m.WriteOnce, data=written, chunk_id=chunk.chunk_id,
                            version=chunk.version, chain=[], offset=0, token=chunk.token,
                            timeout=10)
        finally:
            conn.close()
        await client.op(m.WriteChunkEnd(f.inode, 0, chunk.chunk_id, len(written)))
        assert "did not report the write" in log_of(cluster.masters[0])
        now = await client.op(m.ReadChunk(f.inode, 0))
        assert now.locations == [head]
        assert await client.read_file("/reported/f") == written

        async def both_copies_hold_it():
            where = await client.op(m.ReadChunk(f.inode, 0))
            if len(where.locations) < 2:
                return False
            return all([await read_copy(a, where, len(written)) == written
                        for a in where.locations])

        deadline = time.monotonic() + 60
        while not await both_copies_hold_it():
            assert time.monotonic() < deadline, "the skipped copy was not rebuilt"
            await asyncio.sleep(0.2)

        # A session nobody stored anything of, ended as done: the writer gets EIO.
        chunk = await client.op(m.WriteChunk(f.inode, 0))
        with pytest.raises(FsError) as e:
            await client.op(m.WriteChunkEnd(f.inode, 0, chunk.chunk_id, len(written)))
        assert e.value.errno == errno.EIO
        assert await client.read_file("/reported/f") == written
        await f.close()
    finally:
        await client.close()
